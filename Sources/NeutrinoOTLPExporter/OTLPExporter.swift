import Glibc
import Logging
import NeutrinoCore
import NeutrinoTracing
import OTel
import ServiceLifecycle
import Synchronization
import Tracing

// libNeutrinoOTLP.so: swift-otel's OTLP/HTTP span exporter, behind a small C interface that the executables load with
// dlopen only when tracing is configured (`PluginTracer` in NeutrinoTracing is the other side). swift-otel references
// the full Foundation library, whose loading (with FoundationInternationalization and ICU) cost every process about
// 8 MB of resident memory whether or not it traced (bench/README.md, twenty-third round): here it is paid only by a
// process that exports spans.
//
// The library has copies of its Swift dependencies of its own (swift-distributed-tracing included), so nothing Swift
// crosses the boundary: names, W3C `traceparent` strings, nanoseconds and a span's details as JSON. Every function is
// safe to call from any thread.

private struct Exporter: Sendable {
    let group: ServiceGroup
    let tracer: any Tracer
    let instrument: any Instrument
}

private let exporter = Mutex<Exporter?>(nil)

/// Bootstraps swift-otel from `configuration` (JSON: `{"service": NAME, "environment": {OTEL_*…}}`): traces only, over
/// OTLP/HTTP, the `OTEL_*` variables applied as the OpenTelemetry specification says. Returns 0, or 1 with a message in
/// `error` (to be released with `free`). Once per process.
@_cdecl("neutrino_otlp_start")
public func neutrinoOTLPStart(
    _ configuration: UnsafePointer<CChar>, _ log: OTLPWire.Log, _ logContext: UnsafeMutableRawPointer?,
    _ error: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>
) -> Int32 {
    func fail(_ message: String) -> Int32 {
        error.pointee = strdup(message)
        return 1
    }
    let text = String(cString: configuration)
    guard let parsed = try? JSONParser.parse(Array(text.utf8)), let service = parsed["service"]?.stringValue,
        let variables = parsed["environment"]?.objectValue
    else { return fail("the exporter's configuration is not {\"service\": …, \"environment\": {…}}") }
    var environment: [String: String] = [:]
    for (key, value) in variables { if let value = value.stringValue { environment[key] = value } }
    let logger = Logger(label: "neutrino.otlp") { _ in ForwardingLogHandler(callback: log, context: UncheckedPointer(logContext)) }
    return exporter.withLock { current -> Int32 in
        guard current == nil else { return fail("the OTLP exporter is started already") }
        var settings = OTel.Configuration.default
        settings.serviceName = service
        settings.diagnosticLogger = .custom(logger)
        // swift-otel's own lines: problems only (it would note every OTEL_* variable it read, at info).
        settings.diagnosticLogLevel = .warning
        settings.logs.enabled = false
        settings.metrics.enabled = false
        settings.traces.enabled = true
        do {
            let service = try OTel.bootstrap(configuration: settings, environment: environment)
            let group = ServiceGroup(configuration: .init(services: [service], logger: logger))
            current = Exporter(group: group, tracer: InstrumentationSystem.tracer, instrument: InstrumentationSystem.instrument)
            return 0
        } catch {
            return fail("\(error)")
        }
    }
}

/// Runs the exporter (batching and sending spans) until `neutrino_otlp_shutdown`, then calls `done(context)`.
@_cdecl("neutrino_otlp_run")
public func neutrinoOTLPRun(_ done: OTLPWire.Done, _ context: UnsafeMutableRawPointer?) {
    let box = UncheckedPointer(context)
    let callback = DoneCallback(call: done)
    guard let group = exporter.withLock({ $0?.group }) else {
        done(box.pointer)
        return
    }
    Task {
        try? await group.run()
        callback.call(box.pointer)
    }
}

/// Stops the exporter gracefully: the spans ended so far are sent, then `neutrino_otlp_run`'s `done` is called.
@_cdecl("neutrino_otlp_shutdown")
public func neutrinoOTLPShutdown() {
    guard let group = exporter.withLock({ $0?.group }) else { return }
    Task { await group.triggerGracefulShutdown() }
}

/// Starts span `name` of `kind` (0 internal, 1 server, 2 client, 3 producer, 4 consumer) under `parent` (a
/// `traceparent`, or null for a new trace) at `startNanos` (since the Unix epoch). Writes the span's own `traceparent`
/// into `traceParent` (at least 56 bytes, NUL-terminated) and whether it is recorded (sampled) into `recording`.
/// Returns the span, which `neutrino_otlp_span_end` must end; null when the exporter is not started.
@_cdecl("neutrino_otlp_span_start")
public func neutrinoOTLPSpanStart(
    _ name: UnsafePointer<CChar>, _ kind: Int32, _ parent: UnsafePointer<CChar>?, _ startNanos: UInt64,
    _ traceParent: UnsafeMutablePointer<CChar>, _ recording: UnsafeMutablePointer<Int32>
) -> UnsafeMutableRawPointer? {
    guard let current = exporter.withLock({ $0 }) else { return nil }
    var context = InstrumentationContext.topLevel
    if let parent {
        current.instrument.extract(["traceparent": String(cString: parent)], into: &context, using: DictionaryExtractor())
    }
    let span: any Span = current.tracer.startSpan(
        String(cString: name), context: context, ofKind: OTLPWire.kind(code: kind), at: EpochInstant(nanosecondsSinceEpoch: startNanos),
        function: #function, file: #fileID, line: #line)
    var carrier: [String: String] = [:]
    current.instrument.inject(span.context, into: &carrier, using: DictionaryInjector())
    let header = Array((carrier["traceparent"] ?? "").utf8.prefix(55))
    for (i, byte) in header.enumerated() { traceParent[i] = CChar(bitPattern: byte) }
    traceParent[header.count] = 0
    recording.pointee = span.isRecording ? 1 : 0
    return Unmanaged.passRetained(SpanBox(span)).toOpaque()
}

/// Ends `span` at `endNanos` with `details` (JSON, see `SpanDetails`) and releases it.
@_cdecl("neutrino_otlp_span_end")
public func neutrinoOTLPSpanEnd(_ span: UnsafeMutableRawPointer, _ details: UnsafePointer<CChar>?, _ endNanos: UInt64) {
    let span = Unmanaged<SpanBox>.fromOpaque(span).takeRetainedValue().span
    if let details, let parsed = try? JSONParser.parse(Array(String(cString: details).utf8)) {
        SpanDetails.apply(parsed, to: span)
    }
    span.end(at: EpochInstant(nanosecondsSinceEpoch: endNanos))
}

/// What a span gathered on the host's side, applied to the OTel span before it ends:
/// `{"name": S, "attributes": A, "status": [CODE, MESSAGE?], "events": [[NAME, NANOS, A]…], "links": [[TRACEPARENT, A]…]}`,
/// where `A` is a span's attributes as `OTLPWire` writes them and `CODE` its status code (`OTLPWire.code(_:)`).
enum SpanDetails {
    static func apply(_ details: JSONValue, to span: any Span) {
        if let name = details["name"]?.stringValue { span.operationName = name }
        if let attributes = details["attributes"] { span.attributes = OTLPWire.attributes(attributes) }
        if let status = details["status"]?.arrayValue, let code = status.first?.intValue {
            span.setStatus(SpanStatus(code: OTLPWire.status(code: code), message: status.dropFirst().first?.stringValue))
        }
        for event in details["events"]?.arrayValue ?? [] {
            guard let fields = event.arrayValue, fields.count == 3, let name = fields[0].stringValue,
                let at = fields[1].stringValue.flatMap({ UInt64($0) })
            else { continue }
            span.addEvent(SpanEvent(name: name, at: EpochInstant(nanosecondsSinceEpoch: at), attributes: OTLPWire.attributes(fields[2])))
        }
        for link in details["links"]?.arrayValue ?? [] {
            guard let fields = link.arrayValue, fields.count == 2, let parent = fields[0].stringValue,
                let instrument = exporter.withLock({ $0?.instrument })
            else { continue }
            var context = InstrumentationContext.topLevel
            instrument.extract(["traceparent": parent], into: &context, using: DictionaryExtractor())
            span.addLink(SpanLink(context: context, attributes: OTLPWire.attributes(fields[1])))
        }
    }
}

private final class SpanBox {
    let span: any Span
    init(_ span: any Span) { self.span = span }
}

/// The host's completion callback (a C function: it captures nothing).
private struct DoneCallback: @unchecked Sendable {
    let call: OTLPWire.Done
}

/// A pointer the host gave, passed back to it unchanged (never dereferenced here).
private struct UncheckedPointer: @unchecked Sendable {
    let pointer: UnsafeMutableRawPointer?
    init(_ pointer: UnsafeMutableRawPointer?) { self.pointer = pointer }
}

/// swift-otel's diagnostics, handed to the host's logger.
private struct ForwardingLogHandler: LogHandler {
    let callback: OTLPWire.Log
    let context: UncheckedPointer
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .trace

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        var text = "\(event.message)"
        let all = metadata.merging(event.metadata ?? [:]) { $1 }
        for (key, value) in all.sorted(by: { $0.key < $1.key }) { text += " \(key)=\(value)" }
        text.withCString { callback(OTLPWire.code(event.level), $0, context.pointer) }
    }
}
