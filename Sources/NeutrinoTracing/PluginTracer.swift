import NeutrinoCore
import Synchronization
import Tracing

/// The tracer the executables bootstrap swift-distributed-tracing with: each span is started and ended by the
/// OTLP exporter library (`OTLPPlugin`), which samples it, stamps its ids and exports it. What a span gathers while it
/// runs (attributes, status, events, links) is kept here and handed over when it ends, in one call.
///
/// Propagation is W3C Trace Context: the context of a span holds its `traceparent` (`SpanIdentity`), which `inject`
/// writes and `extract` reads.
final class PluginTracer: Tracer {
    let plugin: OTLPPlugin

    init(plugin: OTLPPlugin) { self.plugin = plugin }

    func startSpan<Instant: TracerInstant>(
        _ operationName: String, context: @autoclosure () -> InstrumentationContext, ofKind kind: SpanKind,
        at instant: @autoclosure () -> Instant, function: String, file fileID: String, line: UInt
    ) -> PluginSpan {
        var context = context()
        let parent = context.spanIdentity?.traceParent.value
        var traceParent = [CChar](repeating: 0, count: 64)
        var recording: Int32 = 0
        let kindCode: Int32 =
            switch kind {
            case .server: 1
            case .client: 2
            case .producer: 3
            case .consumer: 4
            default: 0
            }
        let handle = operationName.withCString { name in
            if let parent {
                parent.withCString { plugin.spanStart(name, kindCode, $0, instant().nanosecondsSinceEpoch, &traceParent, &recording) }
            } else {
                plugin.spanStart(name, kindCode, nil, instant().nanosecondsSinceEpoch, &traceParent, &recording)
            }
        }
        let own = TraceParent(String(decoding: traceParent.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
        context.spanIdentity = own.map { SpanIdentity(traceParent: $0) }
        return PluginSpan(
            name: operationName, context: context, recording: recording != 0, handle: handle.map(SpanHandle.init), plugin: plugin)
    }

    func forceFlush() {}

    func extract<Carrier, Extract: Extractor>(_ carrier: Carrier, into context: inout InstrumentationContext, using extractor: Extract)
    where Extract.Carrier == Carrier {
        guard let text = extractor.extract(key: "traceparent", from: carrier), let traceParent = TraceParent(text) else { return }
        context.spanIdentity = SpanIdentity(traceParent: traceParent)
    }

    func inject<Carrier, Inject: Injector>(_ context: InstrumentationContext, into carrier: inout Carrier, using injector: Inject)
    where Inject.Carrier == Carrier {
        guard let identity = context.spanIdentity else { return }
        injector.inject(identity.traceParent.value, forKey: "traceparent", into: &carrier)
    }
}

/// A span's place in its trace: its own `traceparent` (trace id, span id, sampled flag), or a remote parent's.
struct SpanIdentity: Sendable {
    let traceParent: TraceParent
}

private enum SpanIdentityKey: InstrumentationContextKey {
    typealias Value = SpanIdentity
    static var nameOverride: String? { "neutrino-span" }
}

extension InstrumentationContext {
    var spanIdentity: SpanIdentity? {
        get { self[SpanIdentityKey.self] }
        set { self[SpanIdentityKey.self] = newValue }
    }
}

/// The exporter library's span, owned until `end` hands it back.
struct SpanHandle: @unchecked Sendable {
    // @unchecked: an opaque pointer only the exporter dereferences, ended exactly once (under PluginSpan's lock).
    let pointer: UnsafeMutableRawPointer
}

final class PluginSpan: Span {
    let context: InstrumentationContext
    let isRecording: Bool
    private let plugin: OTLPPlugin
    private let state: Mutex<State>

    private struct State: Sendable {
        var name: String
        var attributes = SpanAttributes()
        var status: SpanStatus?
        var events: [SpanEvent] = []
        var links: [(traceParent: String, attributes: SpanAttributes)] = []
        var handle: SpanHandle?
    }

    init(name: String, context: InstrumentationContext, recording: Bool, handle: SpanHandle?, plugin: OTLPPlugin) {
        self.context = context
        self.isRecording = recording
        self.plugin = plugin
        state = Mutex(State(name: name, handle: handle))
    }

    deinit {
        // A span dropped without `end` still returns its handle (ended now, so the exporter does not leak it).
        end(at: DefaultTracerClock.now)
    }

    var operationName: String {
        get { state.withLock { $0.name } }
        set { state.withLock { $0.name = newValue } }
    }

    var attributes: SpanAttributes {
        get { state.withLock { $0.attributes } }
        set { state.withLock { $0.attributes = newValue } }
    }

    func setStatus(_ status: SpanStatus) { state.withLock { $0.status = status } }

    func addEvent(_ event: SpanEvent) {
        guard isRecording else { return }
        state.withLock { $0.events.append(event) }
    }

    func recordError<Instant: TracerInstant>(_ error: any Error, attributes: SpanAttributes, at instant: @autoclosure () -> Instant) {
        guard isRecording else { return }
        // As OpenTelemetry records an exception: an event with its type and message.
        var details = attributes
        details["exception.type"] = String(reflecting: type(of: error))
        details["exception.message"] = String(describing: error)
        addEvent(SpanEvent(name: "exception", at: instant(), attributes: details))
    }

    func addLink(_ link: SpanLink) {
        guard isRecording, let parent = link.context.spanIdentity?.traceParent.value else { return }
        state.withLock { $0.links.append((parent, link.attributes)) }
    }

    func end<Instant: TracerInstant>(at instant: @autoclosure () -> Instant) {
        let ended: (handle: SpanHandle, state: State)? = state.withLock { s in
            guard let handle = s.handle else { return nil }
            s.handle = nil
            return (handle, s)
        }
        guard let ended else { return }
        let details = isRecording ? Self.details(ended.state) : "{}"
        details.withCString { plugin.spanEnd(ended.handle.pointer, $0, instant().nanosecondsSinceEpoch) }
    }

    /// The JSON `SpanDetails` (in the exporter library) reads.
    private static func details(_ s: State) -> String {
        var w = JSONWriter()
        w.beginObject()
        w.key("name")
        w.string(s.name)
        w.key("attributes")
        write(s.attributes, to: &w)
        if let status = s.status {
            w.key("status")
            w.beginArray()
            w.int(status.code == .ok ? 0 : 1)
            w.stringOrNull(status.message)
            w.endArray()
        }
        func list<Item>(_ key: String, _ items: [Item], _ fields: (Item, inout JSONWriter) -> Void) {
            w.key(key)
            w.beginArray()
            for item in items {
                w.beginArray()
                fields(item, &w)
                w.endArray()
            }
            w.endArray()
        }
        list("events", s.events) { event, w in
            w.string(event.name)
            w.string(String(event.nanosecondsSinceEpoch))
            write(event.attributes, to: &w)
        }
        list("links", s.links) { link, w in
            w.string(link.traceParent)
            write(link.attributes, to: &w)
        }
        w.endObject()
        return w.text
    }

    /// `{KEY: [TYPE, VALUE]}`: numbers as text (exact for every Int64, and for Double's infinities and NaN).
    private static func write(_ attributes: SpanAttributes, to w: inout JSONWriter) {
        func pair(_ type: String, _ value: (inout JSONWriter) -> Void) {
            w.beginArray()
            w.string(type)
            value(&w)
            w.endArray()
        }
        func strings(_ type: String, _ values: [String]) {
            pair(type) { w in
                w.beginArray()
                for value in values { w.string(value) }
                w.endArray()
            }
        }
        w.beginObject()
        attributes.forEach { key, attribute in
            switch attribute {
            case .int32(let v):
                w.key(key)
                pair("i") { $0.string(String(v)) }
            case .int64(let v):
                w.key(key)
                pair("i") { $0.string(String(v)) }
            case .double(let v):
                w.key(key)
                pair("d") { $0.string(String(v)) }
            case .bool(let v):
                w.key(key)
                pair("b") { $0.bool(v) }
            case .string(let v):
                w.key(key)
                pair("s") { $0.string(v) }
            case .stringConvertible(let v):
                w.key(key)
                pair("s") { $0.string(v.description) }
            case .int32Array(let v):
                w.key(key)
                strings("I", v.map { String($0) })
            case .int64Array(let v):
                w.key(key)
                strings("I", v.map { String($0) })
            case .doubleArray(let v):
                w.key(key)
                strings("D", v.map { String($0) })
            case .boolArray(let v):
                w.key(key)
                pair("B") { w in
                    w.beginArray()
                    for value in v { w.bool(value) }
                    w.endArray()
                }
            case .stringArray(let v):
                w.key(key)
                strings("S", v)
            case .stringConvertibleArray(let v):
                w.key(key)
                strings("S", v.map(\.description))
            default:
                break
            }
        }
        w.endObject()
    }
}
