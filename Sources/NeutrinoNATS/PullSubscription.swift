import CNats
import Glibc

/// A pull subscription (`js_PullSubscribe`) bound to an existing durable consumer.
///
/// Fetches run on this subscription's own dedicated thread, one at a time (cnats refuses concurrent fetches on one
/// subscription): concurrent `fetch` calls are served one after the other, never in parallel. Fetched messages keep
/// the underlying `natsSubscription` alive until the last of them is released, so acknowledging after `close()` or
/// after the subscription object is gone is safe.
public final class PullSubscription: Sendable {
    let handle: SubscriptionHandle
    public let jetStream: JetStream
    public let stream: String
    public let consumer: String
    /// The fetch thread.
    private let fetcher: BlockingThreadPool
    private let closed = ClosedFlag()

    init(handle: SubscriptionHandle, jetStream: JetStream, stream: String, consumer: String) throws {
        self.handle = handle
        self.jetStream = jetStream
        self.stream = stream
        self.consumer = consumer
        self.fetcher = try BlockingThreadPool(name: "nats-fetch", threads: 1)
    }

    deinit { fetcher.shutdown() }

    /// Up to `batch` messages, returned as soon as at least one is there (a partial batch early), or `[]` when
    /// none arrived within `timeout`. Throws on anything but a timeout (the connection closed, the consumer
    /// deleted). While the connection is down a fetch usually just times out (`[]`); check
    /// `connection.isConnected` and back off on errors.
    public func fetch(batch: Int, timeout: Duration) async throws -> [JetStreamMessage] {
        let op = "natsSubscription_Fetch"
        guard batch >= 1 else { throw NATSError.invalidArgument(op, "batch must be at least 1") }
        guard !closed.isSet else { throw NATSError.closed(op, "the subscription is closed") }
        let handle = self.handle
        let pool = jetStream.connection.pool
        let timeoutMs = max(1, timeout.natsMilliseconds)
        let batch = Int32(clamping: batch)
        let closed = self.closed
        return try await fetcher.run(op) {
            if closed.isSet { throw NATSError.closed(op, "the subscription is closed") }
            var list = natsMsgList()
            var jerr = jsErrCode(0)
            let s = natsSubscription_Fetch(&list, handle.pointer, batch, timeoutMs, &jerr)
            var messages: [JetStreamMessage] = []
            if let msgs = list.Msgs {
                messages.reserveCapacity(Int(list.Count))
                for i in 0..<Int(list.Count) {
                    guard let msg = msgs[i] else { continue }
                    // Take the message out of the list so natsMsgList_Destroy leaves it alone.
                    msgs[i] = nil
                    messages.append(JetStreamMessage(pointer: msg, subscription: handle, pool: pool))
                }
                natsMsgList_Destroy(&list)
            }
            if !messages.isEmpty || s == NATS_OK || s == NATS_TIMEOUT { return messages }
            throw NATSError.library(op, s, jsErrCode: jerr, connection: handle.jetStream.connection.pointer)
        }
    }

    /// Stops the subscription: a fetch in progress returns, later fetches throw. The durable consumer stays (it was
    /// not created by this subscription). Messages already fetched can still be acknowledged.
    public func close() {
        guard closed.set() else { return }
        // Wakes a Fetch blocked in another thread; the natsSubscription itself is freed when the last message goes.
        natsSubscription_Unsubscribe(handle.pointer)
        fetcher.shutdown()
    }
}
