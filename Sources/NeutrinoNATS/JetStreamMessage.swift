import CNats
import Glibc
import NeutrinoCore
import NeutrinoThreads

/// A message fetched from a pull consumer. Owns its `natsMsg` (destroyed exactly once, in deinit) and keeps its
/// subscription alive (cnats acks through it).
///
/// Settling: `ack`, `ackSync`, `nak`, `term` settle the message; only the first one is sent, later calls do
/// nothing. `inProgress` resets the server's AckWait timer while the task runs (call it at less than AckWait / 2);
/// after settling it does nothing. The fire-and-forget calls (`ack`, `nak`, `inProgress`, `term`) only append to
/// the connection's buffer (or write it at once with SendAsap) and may be called from any context; `ackSync` waits
/// for the server on the connection's dedicated threads. All calls are serialised per message.
public final class JetStreamMessage: @unchecked Sendable {
    private let pointer: OpaquePointer
    private let subscription: SubscriptionHandle
    private let pool: BlockingThreadPool
    private let lock = PThreadLock()
    private var settled = false

    public let subject: String
    public let data: [UInt8]
    /// How many times this message has been delivered (1 on the first delivery).
    public let numDelivered: UInt64
    public let streamSequence: UInt64
    public let consumerSequence: UInt64
    /// Messages still pending for the consumer after this one, when it was delivered.
    public let numPending: UInt64
    /// When the message was stored, in nanoseconds since the Unix epoch.
    public let timestampNanos: Int64

    init(pointer: OpaquePointer, subscription: SubscriptionHandle, pool: BlockingThreadPool) {
        self.pointer = pointer
        self.subscription = subscription
        self.pool = pool
        self.subject = swiftString(natsMsg_GetSubject(pointer))
        self.data = messageData(pointer)
        var meta: UnsafeMutablePointer<jsMsgMetaData>?
        if natsMsg_GetMetaData(&meta, pointer) == NATS_OK, let meta {
            numDelivered = meta.pointee.NumDelivered
            streamSequence = meta.pointee.Sequence.Stream
            consumerSequence = meta.pointee.Sequence.Consumer
            numPending = meta.pointee.NumPending
            timestampNanos = meta.pointee.Timestamp
            jsMsgMetaData_Destroy(meta)
        } else {
            // Not a JetStream delivery (cannot happen for fetched messages): no metadata.
            numDelivered = 0
            streamSequence = 0
            consumerSequence = 0
            numPending = 0
            timestampNanos = 0
        }
    }

    deinit { natsMsg_Destroy(pointer) }

    /// When the message was stored, in milliseconds.
    public var timestamp: Timestamp {
        let ns = timestampNanos
        return Timestamp(millis: ns >= 0 ? ns / 1_000_000 : (ns - 999_999) / 1_000_000)
    }

    /// The first value of header `key` (e.g. `Nats-Msg-Id`).
    public func header(_ key: String) -> String? {
        guard !key.utf8.contains(0) else { return nil }
        return lock.withLock {
            var value: UnsafePointer<CChar>?
            guard natsMsgHeader_Get(pointer, key, &value) == NATS_OK, let value else { return nil }
            return String(cString: value)
        }
    }

    /// Every header with all its values.
    public var headers: [String: [String]] { lock.withLock { allHeaders(pointer) } }

    /// Whether the message was settled (ack, nak, term) by this process.
    public var isSettled: Bool { lock.withLock { settled } }

    /// Acknowledges (fire and forget).
    public func ack() throws { try settle("natsMsg_Ack") { natsMsg_Ack($0, nil) } }

    /// Acknowledges and waits for the server to confirm (bounded by the JetStream request timeout). On failure
    /// the message counts as not settled, so the ack can be tried again.
    public func ackSync() async throws {
        let op = "natsMsg_AckSync"
        guard claim() else { return }
        do {
            // The closure holds this message (and so the subscription) for the call.
            try await pool.run(op) { [self] in
                var jerr = jsErrCode(0)
                let s = natsMsg_AckSync(self.pointer, nil, &jerr)
                guard s == NATS_OK else {
                    throw NATSError.library(op, s, jsErrCode: jerr, connection: subscription.jetStream.connection.pointer)
                }
            }
        } catch {
            lock.withLock { settled = false }
            throw error
        }
    }

    /// Negative acknowledgement: redeliver at once (`delay == nil`, which ignores the consumer's BackOff), or after
    /// `delay` (`NakWithDelay`, milliseconds).
    public func nak(delay: Duration? = nil) throws {
        if let delay {
            let ms = max(1, delay.natsMilliseconds)
            try settle("natsMsg_NakWithDelay") { natsMsg_NakWithDelay($0, ms, nil) }
        } else {
            try settle("natsMsg_Nak") { natsMsg_Nak($0, nil) }
        }
    }

    /// Still working on it: resets the AckWait timer on the server. Does nothing once settled.
    public func inProgress() throws {
        let op = "natsMsg_InProgress"
        try lock.withLock {
            guard !settled else { return }
            let s = natsMsg_InProgress(pointer, nil)
            guard s == NATS_OK else { throw NATSError.library(op, s, connection: subscription.jetStream.connection.pointer) }
        }
    }

    /// Terminates: never redelivered. On a WorkQueue stream the server deletes the message at once, so copy it
    /// elsewhere (the dead-letter stream) first.
    public func term() throws { try settle("natsMsg_Term") { natsMsg_Term($0, nil) } }

    /// Marks the message settled; false if it already was.
    private func claim() -> Bool {
        lock.withLock {
            if settled { return false }
            settled = true
            return true
        }
    }

    private func settle(_ op: String, _ call: (OpaquePointer) -> natsStatus) throws {
        try lock.withLock {
            guard !settled else { return }
            let s = call(pointer)
            guard s == NATS_OK else { throw NATSError.library(op, s, connection: subscription.jetStream.connection.pointer) }
            settled = true
        }
    }
}
