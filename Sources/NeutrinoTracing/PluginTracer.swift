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
        let kindCode = OTLPWire.code(kind)
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
        OTLPWire.write(s.attributes, to: &w)
        if let status = s.status {
            w.key("status")
            w.beginArray()
            w.int(OTLPWire.code(status.code))
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
            OTLPWire.write(event.attributes, to: &w)
        }
        list("links", s.links) { link, w in
            w.string(link.traceParent)
            OTLPWire.write(link.attributes, to: &w)
        }
        w.endObject()
        return w.text
    }
}
