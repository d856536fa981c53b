import Logging
import NeutrinoCore
import ServiceLifecycle
import Synchronization
import Tracing

/// Tracing for both executables: OpenTelemetry spans through swift-distributed-tracing's API, exported by swift-otel
/// over OTLP/HTTP from a library loaded only when tracing is on (`OTLPPlugin`, `PluginTracer`). Off unless an endpoint is configured (`--otlp-endpoint`, or the standard
/// `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`); while off nothing is bootstrapped and every
/// helper here returns after one relaxed atomic load, so the request paths cost what they did without tracing.
public enum NeutrinoTracing {
    private static let enabled = Atomic<Bool>(false)
    private static let installed = Mutex<(any Tracer)?>(nil)

    /// Whether spans are recorded and exported by this process.
    @inline(__always)
    public static var isEnabled: Bool { enabled.load(ordering: .relaxed) }

    /// The span names Neutrino records (the gateway's request span is Hummingbird's, named by its route).
    public enum Name {
        /// Gateway → fast worker: the sync call (client kind).
        public static let call = "neutrino.call"
        /// Gateway → JetStream: the publish of a queued task, until its PubAck (producer kind).
        public static let enqueue = "neutrino.enqueue"
        /// From JetStream storing the message to a worker picking it up.
        public static let queueWait = "neutrino.queue.wait"
        /// A worker running the task's Python function (server kind for a sync call, consumer kind for a queued task).
        public static let execute = "neutrino.execute"
        /// Task-log events of the task, from being recorded until committed (SQLite) or acknowledged (NATS).
        public static let taskLogWrite = "neutrino.tasklog.write"
    }

    /// The OTLP base URL tracing exports to, if any: `flag` (a base URL like `OTEL_EXPORTER_OTLP_ENDPOINT`, spans go to
    /// `<flag>/v1/traces`), else the standard environment variables; nil when none is set, or when
    /// `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none` say no.
    public static func endpoint(flag: String?, environment: [String: String]) -> String? {
        if environment["OTEL_SDK_DISABLED"]?.lowercased() == "true" { return nil }
        if environment["OTEL_TRACES_EXPORTER"]?.lowercased() == "none" { return nil }
        if let flag, !flag.isEmpty { return flag }
        for key in ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"] {
            if let value = environment[key], !value.isEmpty { return value }
        }
        return nil
    }

    /// Why `url` cannot be an OTLP endpoint, or nil when it can (an http or https URL with a host).
    public static func endpointProblem(_ url: String) -> String? {
        let lower = url.lowercased()
        guard lower.hasPrefix("http://") || lower.hasPrefix("https://") else {
            return "must be an http:// or https:// URL (OTLP/HTTP, e.g. http://127.0.0.1:4318)"
        }
        let rest = lower.drop { $0 != "/" }.dropFirst(2)
        guard let first = rest.first, first != "/", first != ":" else { return "has no host" }
        return nil
    }

    /// Turns tracing on when an endpoint is configured (see `endpoint(flag:environment:)`) and returns the exporter's
    /// service, to run first in the process's service group (so it stops last and exports the spans of the shutdown);
    /// nil (tracing stays off) otherwise. The other `OTEL_*` variables apply as the OpenTelemetry specification says:
    /// `OTEL_SERVICE_NAME` (default `serviceName`), `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER[_ARG]`,
    /// `OTEL_BSP_SCHEDULE_DELAY` (how often batches are sent, default 5000 ms), `OTEL_EXPORTER_OTLP_HEADERS`, ….
    /// Only OTLP/HTTP is built in (protobuf or JSON); `grpc` is refused with a message. Call once per process.
    public static func bootstrap(
        endpoint flag: String?, serviceName: String, environment: [String: String], logger: Logger
    ) throws -> (any Service)? {
        guard let url = endpoint(flag: flag, environment: environment) else { return nil }
        if let problem = endpointProblem(url) { throw TracingError("OTLP endpoint '\(url)' \(problem)") }
        var env = environment
        if let flag, !flag.isEmpty {
            // The flag wins over the variables: it is what the command line says.
            env["OTEL_EXPORTER_OTLP_ENDPOINT"] = flag
            env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = nil
        }
        for key in ["OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"] where env[key]?.lowercased() == "grpc" {
            throw TracingError("\(key)=grpc: this build exports OTLP over HTTP only (http/protobuf or http/json)")
        }
        let tracer: PluginTracer
        do {
            let plugin = try OTLPPlugin.load(path: OTLPPlugin.path(environment: environment))
            try plugin.bootstrap(service: serviceName, environment: env, logger: logger)
            tracer = PluginTracer(plugin: plugin)
        } catch {
            throw TracingError("could not start OTLP trace export to \(url): \(error)")
        }
        InstrumentationSystem.bootstrap(tracer)
        installed.withLock { $0 = tracer }
        enabled.store(true, ordering: .releasing)
        logger.info("tracing on: spans exported over OTLP/HTTP", metadata: ["otlp_endpoint": "\(url)", "service": "\(serviceName)"])
        return OTLPExportService(plugin: tracer.plugin)
    }

    /// Starts a span under `parent` (its trace and parent span), at `start` or now; nil when tracing is off. The caller
    /// ends it.
    public static func startSpan(
        _ name: String, parent: InstrumentationContext, kind: SpanKind = .internal, at start: EpochInstant? = nil
    ) -> (any Span)? {
        guard isEnabled, let tracer = installed.withLock({ $0 }) else { return nil }
        if let start {
            return tracer.startSpan(name, context: parent, ofKind: kind, at: start)
        }
        return tracer.startSpan(name, context: parent, ofKind: kind)
    }

    /// The `traceparent` that makes a span started in another process a child of `context`'s span; nil when tracing is
    /// off or `context` has no span.
    public static func traceParent(of context: InstrumentationContext) -> TraceParent? {
        guard isEnabled else { return nil }
        var carrier: [String: String] = [:]
        InstrumentationSystem.instrument.inject(context, into: &carrier, using: DictionaryInjector())
        return carrier["traceparent"].flatMap(TraceParent.init)
    }

    /// A context whose span is the remote parent `traceParent` names (from an HTTP or NATS header), to start spans
    /// under; the top-level context when tracing is off.
    public static func context(continuing traceParent: TraceParent?) -> InstrumentationContext {
        var context = InstrumentationContext.topLevel
        guard isEnabled, let traceParent else { return context }
        InstrumentationSystem.instrument.extract(["traceparent": traceParent.value], into: &context, using: DictionaryExtractor())
        return context
    }

    /// The trace id of `context`'s span (32 hex digits), or nil.
    public static func traceID(of context: InstrumentationContext) -> String? {
        guard isEnabled else { return nil }
        return context.spanIdentity?.traceParent.traceID
    }
}

/// A point in time given as nanoseconds since the Unix epoch (a JetStream message's store time, a recorded start).
public struct EpochInstant: TracerInstant {
    public let nanosecondsSinceEpoch: UInt64
    public init(nanosecondsSinceEpoch: UInt64) { self.nanosecondsSinceEpoch = nanosecondsSinceEpoch }
    public static func < (lhs: Self, rhs: Self) -> Bool { lhs.nanosecondsSinceEpoch < rhs.nanosecondsSinceEpoch }
    /// Now, on the wall clock spans are stamped with.
    public static var now: EpochInstant { EpochInstant(nanosecondsSinceEpoch: DefaultTracerClock.now.nanosecondsSinceEpoch) }
}

/// A configuration tracing cannot start with.
public struct TracingError: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}
