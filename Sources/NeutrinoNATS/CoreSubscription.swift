import CNats
import Glibc

/// A core NATS subscription (no JetStream): messages arrive on cnats' dispatcher thread (the subscription's own) and
/// are handed on as an `AsyncStream` of payloads, or to a handler called on that thread. Used for broadcasts such as
/// cancellations and notices, where a message nobody hears is fine.
public final class CoreSubscription: Sendable {
    /// The payloads; for a subscription made with a handler, a stream that has already ended.
    public let messages: AsyncStream<[UInt8]>
    private let handle: CoreSubscriptionHandle
    private let sinkID: UInt

    init(handle: CoreSubscriptionHandle, messages: AsyncStream<[UInt8]>, sinkID: UInt) {
        self.handle = handle
        self.messages = messages
        self.sinkID = sinkID
    }

    /// Unsubscribes and ends `messages`.
    public func close() {
        natsSubscription_Unsubscribe(handle.pointer)
        coreSinks.remove(sinkID)?.finish()
    }

    deinit { close() }
}

/// Where a subscription's messages go: `deliver` on cnats' dispatcher thread, `finish` once it is closed.
final class CoreSink: Sendable {
    let deliver: @Sendable ([UInt8]) -> Void
    let finish: @Sendable () -> Void
    init(deliver: @escaping @Sendable ([UInt8]) -> Void, finish: @escaping @Sendable () -> Void) {
        self.deliver = deliver
        self.finish = finish
    }
}

let coreSinks = CallbackTable<CoreSink>()

/// Owns a core `natsSubscription*` and keeps its connection alive.
final class CoreSubscriptionHandle: @unchecked Sendable {
    let pointer: OpaquePointer
    let connection: ConnectionHandle
    init(pointer: OpaquePointer, connection: ConnectionHandle) {
        self.pointer = pointer
        self.connection = connection
    }
    deinit { natsSubscription_Destroy(pointer) }
}

private let onCoreMessage: natsMsgHandler = { _, _, msg, closure in
    guard let msg else { return }
    defer { natsMsg_Destroy(msg) }
    guard let sink = coreSinks.get(closure: closure) else { return }
    let length = Int(natsMsg_GetDataLength(msg))
    var data = [UInt8](repeating: 0, count: length)
    if length > 0, let bytes = natsMsg_GetData(msg) {
        data.withUnsafeMutableBytes { $0.copyMemory(from: UnsafeRawBufferPointer(start: bytes, count: length)) }
    }
    sink.deliver(data)
}

extension NATSConnection {
    /// Subscribes to `subject` (core NATS). The stream buffers at most `buffer` unread messages, dropping the oldest.
    public func subscribe(subject: String, buffer: Int = 1024) async throws -> CoreSubscription {
        let (stream, continuation) = AsyncStream<[UInt8]>.makeStream(bufferingPolicy: .bufferingNewest(buffer))
        return try await subscribe(
            subject: subject, messages: stream,
            sink: CoreSink(deliver: { continuation.yield($0) }, finish: { continuation.finish() }))
    }

    /// Subscribes to `subject` (core NATS) and calls `handler` with each payload on cnats' dispatcher thread, one
    /// message at a time: no hop to Swift's cooperative pool. `handler` must return quickly (it holds up the
    /// subscription's next message); the subscription's `messages` is an empty, ended stream.
    public func subscribe(subject: String, handler: @escaping @Sendable ([UInt8]) -> Void) async throws -> CoreSubscription {
        let (stream, continuation) = AsyncStream<[UInt8]>.makeStream()
        continuation.finish()
        return try await subscribe(subject: subject, messages: stream, sink: CoreSink(deliver: handler, finish: {}))
    }

    private func subscribe(subject: String, messages stream: AsyncStream<[UInt8]>, sink: CoreSink) async throws -> CoreSubscription {
        let sinkID = coreSinks.insert(sink)
        let connection = self.handle
        do {
            let pointer = try await pool.run("natsConnection_Subscribe") { () throws -> SendablePointer in
                let op = "natsConnection_Subscribe"
                let arena = CArena()
                let cSubject = try arena.string(subject, op, what: "the subject")
                var sub: OpaquePointer?
                let s = natsConnection_Subscribe(
                    &sub, connection.pointer, cSubject, onCoreMessage,
                    CallbackTable<CoreSink>.closure(sinkID))
                guard s == NATS_OK, let sub else { throw NATSError.library(op, s, connection: connection.pointer) }
                return SendablePointer(sub)
            }
            return CoreSubscription(
                handle: CoreSubscriptionHandle(pointer: pointer.pointer, connection: connection),
                messages: stream, sinkID: sinkID)
        } catch {
            coreSinks.remove(sinkID)?.finish()
            throw error
        }
    }

    /// Publishes `data` on `subject` (core NATS) without waiting for anything: with `SendAsap` (the default) it is
    /// written to the socket at once, otherwise cnats's flusher sends it within a millisecond; while disconnected,
    /// cnats keeps it for the reconnect. For notices whose loss costs only latency. Waits for no answer (like an ack, it
    /// is a write to the socket, from any thread).
    public func publishNow(subject: String, data: [UInt8]) throws {
        let op = "natsConnection_Publish"
        if subject.utf8.contains(0) { throw NATSError.invalidArgument(op, "the subject contains a NUL byte") }
        let s = subject.withCString { cSubject in
            data.withUnsafeBytes { raw in
                natsConnection_Publish(handle.pointer, cSubject, raw.baseAddress, Int32(clamping: raw.count))
            }
        }
        guard s == NATS_OK else { throw NATSError.library(op, s, connection: handle.pointer) }
    }

    /// Publishes `data` on `subject` (core NATS, fire and forget) and flushes, so it leaves at once.
    public func publish(subject: String, data: [UInt8]) async throws {
        try await pool.run("natsConnection_Publish") { [self] in
            try publishNow(subject: subject, data: data)
            let f = natsConnection_FlushTimeout(handle.pointer, 2000)
            guard f == NATS_OK else { throw NATSError.library("natsConnection_FlushTimeout", f, connection: handle.pointer) }
        }
    }
}
