import Logging
import NeutrinoCore
import Testing
import Tracing

@testable import NeutrinoTracing

/// Tracing's configuration and its "off" behaviour. (Turned on, it is tested end to end against a real OTLP/HTTP
/// receiver: tests/e2e/test_tracing.py. This process never bootstraps it: the instrumentation system is global.)
struct NeutrinoTracingTests {
    @Test func endpointComesFromTheFlagThenTheStandardVariables() {
        let env = [
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://traces:4318/v1/traces",
        ]
        #expect(NeutrinoTracing.endpoint(flag: "http://flag:4318", environment: env) == "http://flag:4318")
        #expect(NeutrinoTracing.endpoint(flag: nil, environment: env) == "http://traces:4318/v1/traces")
        #expect(
            NeutrinoTracing.endpoint(flag: nil, environment: ["OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"])
                == "http://collector:4318")
        #expect(NeutrinoTracing.endpoint(flag: nil, environment: [:]) == nil)
        #expect(NeutrinoTracing.endpoint(flag: "", environment: ["OTEL_EXPORTER_OTLP_ENDPOINT": ""]) == nil)
    }

    @Test func standardVariablesCanSayNo() {
        for off in [["OTEL_SDK_DISABLED": "true"], ["OTEL_TRACES_EXPORTER": "none"]] {
            #expect(NeutrinoTracing.endpoint(flag: "http://flag:4318", environment: off) == nil)
        }
    }

    @Test func endpointMustBeAnHTTPURLWithAHost() {
        #expect(NeutrinoTracing.endpointProblem("http://127.0.0.1:4318") == nil)
        #expect(NeutrinoTracing.endpointProblem("https://otel.example.com") == nil)
        #expect(NeutrinoTracing.endpointProblem("127.0.0.1:4318") != nil)
        #expect(NeutrinoTracing.endpointProblem("grpc://127.0.0.1:4317") != nil)
        #expect(NeutrinoTracing.endpointProblem("http://") != nil)
        #expect(NeutrinoTracing.endpointProblem("http://:4318") != nil)
    }

    @Test func grpcIsRefusedWithAReason() {
        #expect(throws: TracingError.self) {
            _ = try NeutrinoTracing.bootstrap(
                endpoint: "http://127.0.0.1:4318", serviceName: "test",
                environment: ["OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"], logger: .init(label: "test"))
        }
        #expect(!NeutrinoTracing.isEnabled)
    }

    /// Not configured: nothing is bootstrapped and every helper answers nil at once.
    @Test func offMeansNothingIsRecorded() throws {
        #expect(try NeutrinoTracing.bootstrap(endpoint: nil, serviceName: "test", environment: [:], logger: .init(label: "test")) == nil)
        #expect(!NeutrinoTracing.isEnabled)
        #expect(NeutrinoTracing.startSpan("x", parent: .topLevel) == nil)
        let incoming = TraceParent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        #expect(
            NeutrinoTracing.startTaskSpan("x", continuing: incoming, kind: .server, taskID: "t", task: "f", pool: "p") == nil)
        #expect(TaskTrace.start("x", continuing: incoming, kind: .consumer, taskID: "t", task: "f", pool: "p") == nil)
        #expect(TaskTrace.current() == nil)
        #expect(NeutrinoTracing.traceParent(of: .topLevel) == nil)
        #expect(NeutrinoTracing.traceID(of: .topLevel) == nil)
    }

    /// swift-otel is in libNeutrinoOTLP.so: found beside the executable unless NEUTRINO_OTLP_LIBRARY says where, and a
    /// missing or foreign library is refused with a message that names it.
    @Test func theExporterLibraryIsFoundBesideTheExecutableOrWhereTheVariableSays() throws {
        #expect(OTLPPlugin.path(environment: ["NEUTRINO_OTLP_LIBRARY": "/opt/x/lib.so"]) == "/opt/x/lib.so")
        let beside = OTLPPlugin.path(environment: [:])
        #expect(beside.hasSuffix("/libNeutrinoOTLP.so") && beside.hasPrefix("/"))
        do {
            _ = try OTLPPlugin.load(path: "/nonexistent/libNeutrinoOTLP.so")
            Issue.record("a missing library loaded")
        } catch let error as TracingError {
            #expect(error.description.contains("libNeutrinoOTLP.so"))
        }
        do {
            _ = try OTLPPlugin.load(path: "libc.so.6")  // a library, but not the exporter
            Issue.record("a foreign library loaded")
        } catch let error as TracingError {
            #expect(error.description.contains("neutrino_otlp_start"))
        }
    }

    /// A span's `traceparent` is what `inject` writes and `extract` reads; a malformed one is ignored.
    @Test func theTracersContextCarriesTheTraceparent() {
        var context = InstrumentationContext.topLevel
        let header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        // No exporter behind it: inject and extract never reach the library.
        let tracer = PluginTracer(
            plugin: OTLPPlugin(
                start: { _, _, _, _ in 1 }, run: { _, _ in }, shutdown: {}, spanStart: { _, _, _, _, _, _ in nil },
                spanEnd: { _, _, _ in }))
        tracer.extract(["traceparent": header], into: &context, using: DictionaryExtractor())
        #expect(context.spanIdentity?.traceParent.value == header)
        var carrier: [String: String] = [:]
        tracer.inject(context, into: &carrier, using: DictionaryInjector())
        #expect(carrier == ["traceparent": header])
        var other = InstrumentationContext.topLevel
        tracer.extract(["traceparent": "00-zz-00f067aa0ba902b7-01"], into: &other, using: DictionaryExtractor())
        #expect(other.spanIdentity == nil)
    }

    /// What the executables write for the exporter library is what it reads back: every attribute type, exact numbers,
    /// and each span kind's code.
    @Test func spanAttributesAndKindsRoundTripTheWire() throws {
        var attributes = SpanAttributes()
        attributes["i"] = Int64.max
        attributes["d"] = Double.infinity
        attributes["b"] = true
        attributes["s"] = "naïve \"quoted\""
        attributes["I"] = SpanAttribute.int64Array([1, -2])
        attributes["D"] = SpanAttribute.doubleArray([0.5])
        attributes["B"] = SpanAttribute.boolArray([false, true])
        attributes["S"] = SpanAttribute.stringArray(["a", "b"])
        var w = JSONWriter()
        OTLPWire.write(attributes, to: &w)
        let back = OTLPWire.attributes(try JSONParser.parse(w.bytes))
        #expect(back == attributes)
        for kind in [SpanKind.internal, .server, .client, .producer, .consumer] {
            #expect(OTLPWire.kind(code: OTLPWire.code(kind)) == kind)
        }
        #expect(OTLPWire.kind(code: 99) == .internal)
        for level in Logger.Level.allCases { #expect(OTLPWire.level(code: OTLPWire.code(level)) == level) }
        #expect(OTLPWire.level(code: -1) == .info)
        for status in [SpanStatus.Code.ok, .error] { #expect(OTLPWire.status(code: OTLPWire.code(status)) == status) }
    }

    @Test func epochInstantOrdersByNanoseconds() {
        let a = EpochInstant(nanosecondsSinceEpoch: 1_000)
        let b = EpochInstant(nanosecondsSinceEpoch: 2_000)
        #expect(a < b)
        #expect(EpochInstant.now.nanosecondsSinceEpoch > 1_700_000_000_000_000_000)
    }
}
