import NeutrinoCore
import Testing

/// `traceparent` arrives from clients, the gateway and NATS messages; only well-formed W3C values are kept.
struct TraceParentTests {
    @Test func validValueIsKeptWithItsParts() throws {
        let tp = try #require(TraceParent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"))
        #expect(tp.value == "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        #expect(tp.traceID == "4bf92f3577b34da6a3ce929d0e0e4736")
        #expect(tp.spanID == "00f067aa0ba902b7")
        #expect(TraceParent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00") != nil)
    }

    @Test(arguments: [
        "",  // empty
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",  // short
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",  // version 00 with more
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  // upper case
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  // zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  // zero span id
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  // version ff
        "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",  // separators
        "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",  // not hex
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\nx: y",  // header injection
    ])
    func malformedValueIsRefused(_ text: String) {
        #expect(TraceParent(text) == nil)
    }

    /// A later version is read as version 00 when its first fields have that shape (the specification's rule).
    @Test func laterVersionIsReadAsVersion00() throws {
        let tp = try #require(TraceParent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra"))
        #expect(tp.value == "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        #expect(TraceParent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x") == nil)
    }

    @Test func traceIDShape() {
        #expect(TraceParent.isTraceID("4bf92f3577b34da6a3ce929d0e0e4736"))
        #expect(!TraceParent.isTraceID("4BF92F3577B34DA6A3CE929D0E0E4736"))
        #expect(!TraceParent.isTraceID("00000000000000000000000000000000"))
        #expect(!TraceParent.isTraceID("4bf92f3577b34da6"))
    }
}
