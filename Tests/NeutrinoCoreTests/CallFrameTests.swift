import Testing

@testable import NeutrinoCore

/// The call lane's frames (docs/architecture.md, "the call lane"): what is encoded comes back decoded, and a frame
/// whose lengths, counts or text do not hold is refused instead of read past its end.
struct CallFrameTests {
    private func content(_ frame: [UInt8]) -> [UInt8] {
        #expect(CallFrame.declaredLength(frame) == frame.count - 4)
        return Array(frame.dropFirst(4))
    }

    @Test func requestsAndAnswersRoundTrip() throws {
        let request = CallFrame.Request(
            id: 0xDEAD_BEEF, head: "échö",
            fields: [.init("X-Neutrino-Task-Id", "01a2"), .init("traceparent", "00-ab-cd-01"), .init("Empty", "")],
            body: Array(#"{"args":{"x":1}}"#.utf8))
        let decoded = try content(CallFrame.encode(request)).withUnsafeBytes { try CallFrame.decodeRequest($0) }
        #expect(decoded == request)

        let answer = CallFrame.Answer(id: 1, head: 504, fields: [.init("X-Neutrino-Status", "timed_out")], body: [])
        let back = try content(CallFrame.encode(answer)).withUnsafeBytes { try CallFrame.decodeAnswer($0) }
        #expect(back == answer)
        #expect(decoded.task == "échö" && back.status == 504)

        // A body of any bytes, and no fields at all.
        let binary = CallFrame.Request(id: 2, head: "t", fields: [], body: (0...255).map { UInt8($0) })
        #expect(try content(CallFrame.encode(binary)).withUnsafeBytes { try CallFrame.decodeRequest($0) } == binary)
    }

    @Test func fieldsPastTheLimitAreNotEncoded() throws {
        let many = (0..<100).map { CallFrame.Field("f\($0)", "v") }
        let frame = CallFrame.encode(CallFrame.Request(id: 3, head: "t", fields: many, body: []))
        let decoded = try content(frame).withUnsafeBytes { try CallFrame.decodeRequest($0) }
        #expect(decoded.fields.count == CallFrame.maxFields)
    }

    @Test(
        arguments: [
            // id only: the name's length is missing
            [0, 0, 0, 1],
            // a name 60,000 bytes long in a frame of 10
            [0, 0, 0, 1, 0xEA, 0x60, 0x65, 0x63, 0x68, 0x6F],
            // a name that is not UTF-8
            [0, 0, 0, 1, 0, 2, 0xFF, 0xFE, 0, 0],
            // a value that is not UTF-8 (a lone continuation byte after ASCII)
            [0, 0, 0, 1, 0, 1, 0x74, 0, 1, 0, 1, 0x6E, 0, 2, 0x76, 0x80],
            // an overlong encoding of '/' (0xC0 0xAF), which a check for bytes >= 0x80 alone would not catch
            [0, 0, 0, 1, 0, 2, 0xC0, 0xAF, 0, 0],
            // more fields than allowed
            [0, 0, 0, 1, 0, 1, 0x74, 0xFF, 0xFF],
            // a field whose value runs past the end
            [0, 0, 0, 1, 0, 1, 0x74, 0, 1, 0, 1, 0x6E, 0, 9, 0x76],
        ] as [[UInt8]])
    func malformedRequestsAreRefused(_ bytes: [UInt8]) {
        #expect(throws: CallFrame.DecodeError.self) { try bytes.withUnsafeBytes { try CallFrame.decodeRequest($0) } }
    }

    @Test func textIsReadAsUTF8WhetherASCIIOrNot() {
        for text in ["", "x-neutrino-status", "échö", "任务", "🙂 done", String(repeating: "a", count: 300)] {
            let bytes = Array(text.utf8)
            #expect(bytes.withUnsafeBytes { CallFrame.text($0) } == text)
        }
        for bad: [UInt8] in [[0xFF], [0x61, 0xC3], [0xED, 0xA0, 0x80], [0xC0, 0xAF]] {
            #expect(bad.withUnsafeBytes { CallFrame.text($0) } == nil)
        }
    }

    @Test func answersWithAStatusOutsideHTTPAreRefused() {
        let frame = CallFrame.encode(CallFrame.Answer(id: 1, head: 70, fields: [], body: []))
        #expect(throws: CallFrame.DecodeError.self) { try content(frame).withUnsafeBytes { try CallFrame.decodeAnswer($0) } }
    }
}
