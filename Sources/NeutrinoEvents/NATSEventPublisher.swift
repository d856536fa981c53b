import Logging
import NeutrinoCore
import NeutrinoNATS

/// The worker's task-event sink for `--task-log nats`: publishes every event to `neutrino.events.<pool>` on the
/// `NEUTRINO_EVENTS` stream, for the gateway to record.
///
/// - `record` appends to a bounded queue and returns (it never waits for NATS). A pump task publishes the queue
///   in windows with cnats's async publish, each event awaiting its PubAck. Events of one task keep their order
///   (they share one of `lanes` sequential lanes); lanes publish concurrently.
/// - Every event but `progress` carries `Nats-Msg-Id: <task_id>:<event>:<attempt>:<origin>`, so this process's
///   republish (after a timeout, a reconnect, a worker retry) inside the 2 min duplicate window stores nothing new,
///   while another process's report of the same outcome is kept (see `EventStreamLayout.messageID`).
/// - `flush` returns once every event recorded before it is acknowledged by the stream (the NATS worker acks a
///   task message only after that, for its terminal event).
/// - NATS unreachable: events stay queued and are retried with exponential backoff until it is back; nothing is
///   lost across a server restart. Past `capacity` queued events, new ones are dropped with an error log. An event
///   the server keeps refusing for another reason (e.g. larger than the server's max payload) is dropped after
///   `maxRejections` tries.
/// - The stream is created (idempotently) before the first publish and again whenever nobody answers a publish.
public final class NATSEventPublisher: TaskEventSink {
    public struct Options: Sendable {
        /// Events kept while NATS is unreachable (queued plus in flight); more are dropped with an error log.
        public var capacity = 100_000
        /// Events taken from the queue per publishing round.
        public var window = 512
        /// Concurrent publishing lanes (events of one task always share a lane, so they keep their order).
        public var lanes = 16
        /// Wait for one PubAck before the event is retried.
        public var publishTimeout: Duration = .seconds(5)
        /// Pause after a failed round, doubling up to `maxBackoff`.
        public var minBackoff: Duration = .milliseconds(100)
        public var maxBackoff: Duration = .seconds(5)
        /// Tries for an event the server refuses for a reason other than the connection, before it is dropped.
        public var maxRejections = 5
        /// How long `close` waits for the queue to be published.
        public var closeTimeout: Duration = .seconds(10)
        /// The most bytes of args + result + error one event may carry: below NATS's default `max_payload` (1 MiB),
        /// which would refuse the message. A larger result becomes a `ResultTooLarge` failure, not a lost event.
        public var maxValueBytes = 900_000

        public init() {}
    }

    private let queue: PublisherQueue
    private let logger: Logger
    private let pump: Task<Void, Never>
    private let options: Options

    /// Starts publishing at once (the pump waits for events). `jetStream` must outlive the publisher's `close()`.
    /// `origin` names this process in every event's `Nats-Msg-Id`.
    public init(jetStream: JetStream, origin: EventOrigin, logger: Logger, options: Options = Options()) {
        let queue = PublisherQueue(capacity: options.capacity)
        self.queue = queue
        self.logger = logger
        self.options = options
        let pump = PublisherPump(js: jetStream, queue: queue, origin: origin, logger: logger, options: options)
        self.pump = Task.detached { await pump.run() }
    }

    public func record(_ event: TaskEvent) {
        admit(CollectionOfOne(event))
    }

    public func record(contentsOf events: [TaskEvent]) {
        guard !events.isEmpty else { return }
        admit(events)
    }

    /// Returns once every event recorded before the call is acknowledged by the stream (or dropped, or the
    /// publisher closed). Waits as long as NATS is unreachable; see `flush(timeout:)`.
    public func flush() async {
        await queue.waitUntilSettled()
    }

    /// `flush` bounded by `timeout`: true if everything recorded before the call was acknowledged in time.
    public func flush(timeout: Duration) async -> Bool {
        await withTaskGroup(of: Bool.self) { group in
            group.addTask { [queue] in
                await queue.waitUntilSettled()
                return !Task.isCancelled
            }
            group.addTask {
                try? await Task.sleep(for: timeout)
                return false
            }
            let first = await group.next() ?? false
            group.cancelAll()
            return first
        }
    }

    /// Stops taking events, publishes what is queued (waiting at most `closeTimeout`), and stops. Events still
    /// unpublished then are lost (logged).
    public func close() async {
        guard queue.stopAccepting() else {
            await pump.value
            return
        }
        let flushed = await flush(timeout: options.closeTimeout)
        let lost = queue.stop()
        pump.cancel()
        await pump.value
        if !flushed || lost > 0 {
            logger.error(
                "event publisher closed with events not published; they are lost",
                metadata: ["events": "\(lost)"])
        }
    }

    /// Events acknowledged by the stream (duplicates included).
    public var published: UInt64 { queue.snapshot.published }
    /// Acknowledged events the stream had already stored (a republish inside the duplicate window).
    public var duplicates: UInt64 { queue.snapshot.duplicates }
    /// Events dropped: the queue was full, the publisher closed, or the server kept refusing them.
    public var dropped: UInt64 { queue.snapshot.dropped }
    /// Events queued or being published.
    public var pending: Int { queue.pending }

    private func admit<C: Collection>(_ events: C) where C.Element == TaskEvent {
        let limit = options.maxValueBytes
        let fits = events.allSatisfy { Self.valueBytes($0) <= limit }
        let (dropped, reason) = fits ? queue.append(events) : queue.append(events.map { bounded($0, limit: limit) })
        guard dropped > 0 else { return }
        let total = queue.snapshot.dropped
        // Log the first drop of a run and then every 10,000th, not once per event.
        if total <= UInt64(dropped) || total / 10_000 != (total - UInt64(dropped)) / 10_000 {
            let why = reason == .closed ? "the event publisher is closed" : "the event queue is full (NATS unreachable?)"
            logger.error(
                "task events dropped: \(why)",
                metadata: [
                    "dropped": "\(dropped)", "dropped_total": "\(total)", "capacity": "\(options.capacity)",
                    "task_id": "\(events.first?.taskID ?? "")",
                ])
        }
    }

    static func valueBytes(_ e: TaskEvent) -> Int {
        (e.args?.utf8.count ?? 0) + (e.result?.utf8.count ?? 0) + (e.error?.utf8.count ?? 0) + (e.detail?.utf8.count ?? 0)
    }

    /// An event too large for one NATS message, made to fit: a result turns the outcome into a `ResultTooLarge`
    /// failure (the task must not look completed without its result), other values are replaced by a note.
    private func bounded(_ event: TaskEvent, limit: Int) -> TaskEvent {
        guard Self.valueBytes(event) > limit else { return event }
        var e = event
        let size = Self.valueBytes(event)
        logger.error(
            "task event too large for NATS; replaced", metadata: ["task_id": "\(e.taskID)", "event": "\(e.kind.rawValue)", "bytes": "\(size)"])
        if e.result != nil {
            e.kind = .failed
            e.result = nil
            e.error = JSONWriter.taskErrorText(
                .resultTooLarge,
                message: "the result is \(size) bytes; with --task-log nats an event carries at most \(limit)")
        } else if (e.error?.utf8.count ?? 0) > limit / 2 {
            e.error = JSONWriter.taskErrorText(.errorTooLarge, message: "the error report was \(e.error?.utf8.count ?? 0) bytes")
        }
        if (e.args?.utf8.count ?? 0) > limit / 2 { e.args = #"{"_truncated":true}"# }
        if (e.detail?.utf8.count ?? 0) > 4096 { e.detail = String(e.detail?.prefix(4096) ?? "") }
        return e
    }
}
