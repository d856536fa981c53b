import CNats
import Glibc

/// A core NATS subscription (no JetStream): messages arrive on cnats' dispatcher thread and are handed on as an
/// `AsyncStream` of payloads. Used for broadcasts such as cancellations, where a message nobody hears is fine.
public final class CoreSubscription: Sendable {
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
        coreSinks.remove(sinkID)?.continuation.finish()
    }

    deinit { close() }
}

final class CoreSink: Sendable {
    let continuation: AsyncStream<[UInt8]>.Continuation
    init(_ continuation: AsyncStream<[UInt8]>.Continuation) { self.continuation = continuation }
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
    sink.continuation.yield(data)
}

extension NATSConnection {
    /// Subscribes to `subject` (core NATS). The stream buffers at most `buffer` unread messages, dropping the oldest.
    public func subscribe(subject: String, buffer: Int = 1024) async throws -> CoreSubscription {
        let (stream, continuation) = AsyncStream<[UInt8]>.makeStream(bufferingPolicy: .bufferingNewest(buffer))
        let sinkID = coreSinks.insert(CoreSink(continuation))
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
            coreSinks.remove(sinkID)
            continuation.finish()
            throw error
        }
    }

    /// Publishes `data` on `subject` (core NATS, fire and forget) and flushes, so it leaves at once.
    public func publish(subject: String, data: [UInt8]) async throws {
        let connection = self.handle
        try await pool.run("natsConnection_Publish") {
            let op = "natsConnection_Publish"
            let arena = CArena()
            let cSubject = try arena.string(subject, op, what: "the subject")
            let s = data.withUnsafeBytes { raw in
                natsConnection_Publish(connection.pointer, cSubject, raw.baseAddress, Int32(clamping: raw.count))
            }
            guard s == NATS_OK else { throw NATSError.library(op, s, connection: connection.pointer) }
            let f = natsConnection_FlushTimeout(connection.pointer, 2000)
            guard f == NATS_OK else { throw NATSError.library("natsConnection_FlushTimeout", f, connection: connection.pointer) }
        }
    }
}
