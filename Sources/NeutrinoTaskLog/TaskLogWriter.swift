import Foundation
import Logging
import Metrics
import NeutrinoCore

/// Takes lifecycle events off the request path: `record` appends to a queue (microseconds) and one dedicated
/// thread commits whatever has accumulated in one transaction per batch. While a batch commits, the next one
/// accumulates, so batches grow with load and the cost per event falls.
public final class TaskLogWriter: Sendable {
    private final class State: @unchecked Sendable {
        let condition = NSCondition()
        var queue: [TaskEvent] = []
        var enqueued: UInt64 = 0
        var committed: UInt64 = 0
        var waiters: [(target: UInt64, continuation: CheckedContinuation<Void, Never>)] = []
        var stopping = false
        var stopped = false
        var lastBatchSize = 0

        /// The count to wait for, or nil when everything recorded so far is committed.
        func unfinishedTarget() -> UInt64? {
            condition.lock()
            defer { condition.unlock() }
            return committed >= enqueued || stopped ? nil : enqueued
        }

        func wait(for target: UInt64, _ continuation: CheckedContinuation<Void, Never>) {
            condition.lock()
            if committed >= target || stopped {
                condition.unlock()
                continuation.resume()
                return
            }
            waiters.append((target, continuation))
            condition.signal()  // someone is waiting: the writer stops lingering and commits now
            condition.unlock()
        }

        func requestStop() {
            condition.lock()
            stopping = true
            condition.signal()
            condition.unlock()
        }
    }

    private let state = State()
    private let path: String
    private let logger: Logger
    public static let maxBatch = 4096
    /// How long the writer waits for more events when the previous batch showed load.
    static let linger: TimeInterval = 0.002

    /// Opens (and if needed creates) the task log at `path` and starts the writer thread.
    public init(path: String, logger: Logger = Logger(label: "neutrino.tasklog")) throws {
        self.path = path
        self.logger = logger
        let db = try SQLiteConnection(path: path)
        try TaskLogSchema.prepare(db)
        let box = UncheckedBox(db)
        let thread = Thread { [state, logger] in
            TaskLogWriter.run(store: TaskLogStore(db: box.value), state: state, logger: logger)
        }
        thread.name = "neutrino-tasklog-writer"
        thread.start()
    }

    /// Queues `event` for the next batch. Never blocks on the database.
    public func record(_ event: TaskEvent) {
        record(contentsOf: CollectionOfOne(event))
    }

    /// Queues `events` so they commit in one batch (one transaction).
    public func record<C: Collection>(contentsOf events: C) where C.Element == TaskEvent {
        let s = state
        s.condition.lock()
        if s.stopped {
            s.condition.unlock()
            for event in events {
                logger.error("task log closed; event dropped", metadata: ["task_id": "\(event.taskID)", "event": "\(event.kind.rawValue)"])
            }
            return
        }
        let wasEmpty = s.queue.isEmpty
        s.queue.append(contentsOf: events)
        s.enqueued += UInt64(events.count)
        // Only an empty queue can have the writer asleep; otherwise it is committing or lingering for more.
        if wasEmpty || s.queue.count >= TaskLogWriter.maxBatch / 4 { s.condition.signal() }
        s.condition.unlock()
    }

    /// Returns once every event recorded before this call is committed (read-your-writes for the caller).
    public func flush() async {
        let s = state
        guard let target = s.unfinishedTarget() else { return }
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in s.wait(for: target, c) }
    }

    /// Commits what is queued and stops the thread. Events recorded afterwards are dropped with an error.
    public func close() async {
        await flush()
        state.requestStop()
    }

    private static func run(store: TaskLogStore, state s: State, logger: Logger) {
        while true {
            s.condition.lock()
            while s.queue.isEmpty && !s.stopping { s.condition.wait() }
            // Under load, linger a moment so one transaction carries many events; an idle log commits at once
            // (the first event of a quiet period does not wait), and so does a log someone is flushing.
            if !s.stopping && s.lastBatchSize > 1 {
                let deadline = Date(timeIntervalSinceNow: TaskLogWriter.linger)
                while !s.stopping && s.queue.count < maxBatch / 4 && s.waiters.isEmpty && s.condition.wait(until: deadline) {}
            }
            if s.queue.isEmpty {
                s.stopped = true
                let waiters = s.waiters
                s.waiters.removeAll()
                s.condition.unlock()
                for w in waiters { w.continuation.resume() }
                return
            }
            let n = min(s.queue.count, maxBatch)
            s.lastBatchSize = n
            let batch = Array(s.queue.prefix(n))
            s.queue.removeFirst(n)
            s.condition.unlock()

            commit(batch, store: store, logger: logger)

            s.condition.lock()
            s.committed += UInt64(n)
            let committed = s.committed
            var ready: [CheckedContinuation<Void, Never>] = []
            s.waiters.removeAll { w in
                if w.target <= committed { ready.append(w.continuation); return true }
                return false
            }
            s.condition.unlock()
            for c in ready { c.resume() }
        }
    }

    /// Commits a batch, retrying while another process holds the write lock past the busy timeout.
    private static func commit(_ batch: [TaskEvent], store: TaskLogStore, logger: Logger) {
        var attempt = 0
        let started = DispatchTime.now().uptimeNanoseconds
        while true {
            do {
                try store.apply(batch)
                batchSizes.record(batch.count)
                writeTimes.recordNanoseconds(Int64(DispatchTime.now().uptimeNanoseconds - started))
                return
            } catch {
                attempt += 1
                if attempt >= 20 {
                    logger.critical("task log write failed; batch lost", metadata: ["events": "\(batch.count)", "error": "\(error)"])
                    return
                }
                logger.warning("task log write failed; retrying", metadata: ["attempt": "\(attempt)", "error": "\(error)"])
                usleep(UInt32(min(1_000_000, 10_000 << min(attempt, 6))))
            }
        }
    }
}

/// Batch sizes and commit latency (`neutrino_tasklog_batch_size`, `neutrino_tasklog_write_seconds`).
private let batchSizes = Recorder(label: "neutrino_tasklog_batch_size")
private let writeTimes = Metrics.Timer(label: "neutrino_tasklog_write_seconds")

/// Moves a non-Sendable value to the one thread that will own it from then on.
struct UncheckedBox<T>: @unchecked Sendable {
    let value: T
    init(_ value: T) { self.value = value }
}
