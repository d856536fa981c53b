import Logging
import Metrics
import NeutrinoCore
import NeutrinoNATS
import NeutrinoObservability
import Synchronization

/// The gateway's side of `--task-log nats`: a durable pull consumer `events_<id>` on `NEUTRINO_EVENTS` whose loop
/// fetches up to `batch` events, hands them to the task log in one `record(contentsOf:)`, waits for the commit
/// (`flush`), and only then acknowledges the batch. A gateway that stops (or dies) between commit and ack gets the
/// batch again after AckWait; the task log applies events idempotently, so a replay adds no rows.
///
/// - Fetches run on the subscription's own thread (cnats's blocking Fetch); the loop itself only awaits.
/// - Provisioning and subscribing are retried until NATS is reachable; after repeated fetch errors with the
///   connection up (the consumer was deleted, the stream recreated) the loop provisions and subscribes again.
/// - An undecodable message is logged and terminated (never redelivered).
/// - Stop the consumer before closing the sink: a closed `TaskLogWriter` drops events, which would then be acked.
public final class EventStreamConsumer: Sendable {
    public struct Options: Sendable {
        /// Events per fetch (and per commit).
        public var batch = 500
        /// How long one fetch waits for a first message: bounds how long `stop` can take.
        public var fetchTimeout: Duration = .milliseconds(250)
        /// Redelivery of a batch fetched and not acknowledged (a gateway that died mid-batch).
        public var ackWait: Duration = .seconds(30)
        public var maxAckPending = 20_000
        /// The server deletes the durable after this long without pulls (a gateway gone for good).
        public var inactiveThreshold: Duration? = .seconds(24 * 3600)
        /// Pause after a failed provisioning, subscription or fetch.
        public var retryDelay: Duration = .milliseconds(500)
        /// Tests only: after committing batch n (1-based), leave the loop without acknowledging it (a gateway killed
        /// between commit and ack).
        var crashAfterCommittingBatch: Int?

        public init() {}
    }

    private let js: JetStream
    private let sink: any TaskEventSink
    private let logger: Logger
    private let options: Options
    /// The durable consumer's name: `events_<id>`.
    public let durableName: String
    private let consumerID: String
    private let stopping = Atomic<Bool>(false)
    private let state = Mutex(LoopState())
    private let applied = Atomic<UInt64>(0)
    /// `neutrino_events_applied_total{consumer}`.
    private let appliedCounter: Counter
    private let batchCount = Atomic<UInt64>(0)
    private let terminated = Atomic<UInt64>(0)

    private struct LoopState {
        var loop: Task<Void, Never>?
        var subscription: PullSubscription?
    }

    /// `id` names this gateway's durable (`events_<id>`): gateways sharing one task log file share one id.
    public init(jetStream: JetStream, id: String, sink: any TaskEventSink, logger: Logger, options: Options = Options()) {
        self.js = jetStream
        self.sink = sink
        self.logger = logger
        self.options = options
        self.consumerID = id
        self.durableName = EventStreamLayout.consumer(id: id)
        self.appliedCounter = Counter(label: NeutrinoMetrics.eventsApplied, dimensions: [("consumer", durableName)])
    }

    /// Events handed to the sink and committed.
    public var eventsApplied: UInt64 { applied.load(ordering: .relaxed) }
    /// Batches committed.
    public var batches: UInt64 { batchCount.load(ordering: .relaxed) }
    /// Messages that were not task events (terminated).
    public var undecodable: UInt64 { terminated.load(ordering: .relaxed) }
    /// Whether the loop has a subscription right now.
    public var isSubscribed: Bool { state.withLock { $0.subscription != nil } }

    /// Starts the loop (once; later calls do nothing). It provisions the stream and the durable itself.
    public func start() {
        state.withLock { s in
            guard s.loop == nil, !stopping.load(ordering: .relaxed) else { return }
            s.loop = Task.detached { [self] in await self.run() }
        }
    }

    /// Ends the loop: a fetch in progress returns at once, a batch being committed is committed (and acknowledged)
    /// first. Returns when the loop has ended.
    public func stop() async {
        stopping.store(true, ordering: .relaxed)
        let (loop, subscription) = state.withLock { s in (s.loop, s.subscription) }
        subscription?.close()
        await loop?.value
    }

    /// Events in the stream this consumer has not acknowledged yet (not delivered, or delivered and uncommitted).
    public func lag() async throws -> UInt64 {
        try await js.consumerInfo(stream: EventStreamLayout.stream, consumer: durableName).backlog
    }

    private func run() async {
        var subscription: PullSubscription?
        var failures = 0
        defer {
            subscription?.close()
            state.withLock { $0.subscription = nil }
        }
        while !stopping.load(ordering: .relaxed) {
            guard let sub = subscription else {
                do {
                    try await EventStreamProvisioning.ensure(
                        js, consumerID: consumerID, ackWait: options.ackWait,
                        maxAckPending: options.maxAckPending,
                        inactiveThreshold: options.inactiveThreshold, logger: logger)
                    let sub = try await js.pullSubscribe(stream: EventStreamLayout.stream, consumer: durableName)
                    state.withLock { $0.subscription = sub }
                    // `stop` may have run between the check above and publishing the subscription.
                    if stopping.load(ordering: .relaxed) { sub.close() }
                    subscription = sub
                    failures = 0
                } catch {
                    if failures % 20 == 0 {
                        logger.warning("cannot subscribe to the events stream yet; retrying", metadata: ["error": "\(error)"])
                    }
                    failures += 1
                    try? await Task.sleep(for: options.retryDelay)
                }
                continue
            }
            let messages: [JetStreamMessage]
            do {
                messages = try await sub.fetch(batch: options.batch, timeout: options.fetchTimeout)
            } catch {
                if stopping.load(ordering: .relaxed) { break }
                failures += 1
                if failures == 1 || failures % 20 == 0 {
                    logger.warning("fetching task events failed; retrying", metadata: ["error": "\(error)", "failures": "\(failures)"])
                }
                if failures >= 3 && js.connection.isConnected {
                    // Connected, yet fetches fail: the durable or the stream is gone. Provision and subscribe again.
                    sub.close()
                    state.withLock { $0.subscription = nil }
                    subscription = nil
                }
                try? await Task.sleep(for: options.retryDelay)
                continue
            }
            failures = 0
            guard !messages.isEmpty else { continue }
            if !(await apply(messages)) { break }
        }
    }

    /// Decodes, commits, acknowledges one batch. False when the loop must end (the test crash).
    private func apply(_ messages: [JetStreamMessage]) async -> Bool {
        var events: [TaskEvent] = []
        var decoded: [JetStreamMessage] = []
        events.reserveCapacity(messages.count)
        decoded.reserveCapacity(messages.count)
        for message in messages {
            do {
                events.append(try EventCodec.decode(message.data))
                decoded.append(message)
            } catch {
                logger.error(
                    "undecodable task event terminated",
                    metadata: [
                        "subject": "\(message.subject)", "stream_seq": "\(message.streamSequence)", "error": "\(error)",
                    ])
                try? message.term()
                terminated.add(1, ordering: .relaxed)
            }
        }
        if !events.isEmpty {
            sink.record(contentsOf: events)
            await sink.flush()
        }
        let batch = batchCount.add(1, ordering: .relaxed).newValue
        applied.add(UInt64(events.count), ordering: .relaxed)
        appliedCounter.increment(by: Int64(events.count))
        if let crash = options.crashAfterCommittingBatch, Int(batch) >= crash { return false }
        var ackFailure: (any Error)?
        for message in decoded {
            do { try message.ack() } catch { ackFailure = ackFailure ?? error }
        }
        if let ackFailure {
            // The server redelivers after AckWait; the task log ignores what it already has.
            logger.warning(
                "acknowledging task events failed; they will be redelivered",
                metadata: ["error": "\(ackFailure)", "events": "\(decoded.count)"])
        }
        return true
    }
}
