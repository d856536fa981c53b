import CSQLite
import Glibc
import Logging
import Metrics
import NeutrinoCore
import NeutrinoThreads

/// Takes lifecycle events off the request path: `record` appends to a queue (microseconds) and one dedicated
/// thread commits whatever has accumulated in one transaction per batch. While a batch commits, the next one
/// accumulates, so batches grow with load and the cost per event falls.
///
/// The queue is bounded (`Configuration.maxQueuedEvents`). When it is full, `record` blocks the calling thread
/// until the writer has made room, for at most `Configuration.maxBlock`; if it is still full then, events that end
/// a task (`completed`, `failed`, `cancelled`, `timed_out`) are queued anyway, past the bound, and every other event
/// is dropped, counted in `neutrino_tasklog_events_dropped_total` and logged. A task's outcome is never dropped:
/// the queue can outgrow its bound only by one outcome per task in flight.
///
/// A second thread checkpoints the WAL (PASSIVE: never waits for the writer or readers) whenever it passes
/// `Configuration.checkpointPages`, so the writer never stops for a checkpoint, and keeps the gauges
/// `neutrino_tasklog_wal_bytes`, `neutrino_tasklog_db_bytes` and `neutrino_tasklog_queued_events` current (every second).
public final class TaskLogWriter: Sendable {
    public struct Configuration: Sendable {
        /// The most events waiting for the writer thread before `record` pushes back.
        public var maxQueuedEvents: Int
        /// How long `record` blocks its caller waiting for room in a full queue before dropping non-terminal events.
        public var maxBlock: Duration
        /// WAL size, in pages (4 KiB), that makes the checkpoint thread copy the WAL into the database.
        public var checkpointPages: Int
        /// What the WAL file is truncated to once a checkpoint lets it start over (`PRAGMA journal_size_limit`).
        public var journalSizeLimitBytes: Int
        /// The largest row or value this writer stores (SQLite's `SQLITE_LIMIT_LENGTH`); nil keeps SQLite's 1 GB.
        /// An event whose row would be larger is refused and its task marked `failed` (`TaskLogWriteError`).
        public var maxRowBytes: Int?
        /// How much a batch may dirty before SQLite spills pages into the WAL mid-transaction, in KiB
        /// (`PRAGMA cache_spill`): the writer connection's page cache grows to this during a large batch.
        public var cacheKiB: Int
        /// The writer connection's page cache kept between batches, in KiB (`PRAGMA cache_size`): the hot pages
        /// (the right edges of the tables and indexes) fit many times over; what a large batch added beyond it is freed
        /// as the batch ends.
        public var retainedCacheKiB: Int
        /// The longest the writer waits, between two batches, for a checkpoint to finish when the WAL has grown past
        /// 4 × `checkpointPages` (only when saturated: batches of at least half `maxBatch`; see `Checkpointer`).
        public var maxCheckpointYield: Duration

        public init(
            maxQueuedEvents: Int = 100_000, maxBlock: Duration = .milliseconds(50), checkpointPages: Int = 4_000,
            journalSizeLimitBytes: Int = 64 << 20, maxRowBytes: Int? = nil, cacheKiB: Int = 65_536,
            retainedCacheKiB: Int = 8_192, maxCheckpointYield: Duration = .milliseconds(50)
        ) {
            self.maxQueuedEvents = maxQueuedEvents
            self.maxBlock = maxBlock
            self.checkpointPages = checkpointPages
            self.journalSizeLimitBytes = journalSizeLimitBytes
            self.maxRowBytes = maxRowBytes
            self.cacheKiB = cacheKiB
            self.retainedCacheKiB = min(retainedCacheKiB, cacheKiB)
            self.maxCheckpointYield = maxCheckpointYield
        }
    }

    private final class State: @unchecked Sendable {
        let condition = Monitor()
        var queue: [TaskEvent] = []
        var enqueued: UInt64 = 0
        var committed: UInt64 = 0
        var dropped: UInt64 = 0
        var waiters: [(target: UInt64, continuation: CheckedContinuation<Void, Never>)] = []
        var blockedProducers = 0
        var stopping = false
        var stopped = false
        var lastBatchSize = 0
        var lastDropLog: UInt64 = 0

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
            condition.broadcast()  // someone is waiting: the writer stops lingering and commits now
            condition.unlock()
        }

        func requestStop() {
            condition.lock()
            stopping = true
            condition.broadcast()
            condition.unlock()
        }
    }

    private let state = State()
    private let checkpointer: Checkpointer
    private let path: String
    private let logger: Logger
    private let configuration: Configuration
    public static let maxBatch = 4096
    /// How long the writer waits for more events when the previous batch showed load.
    static let linger = Duration.milliseconds(2)

    /// Applies the process-wide SQLite settings the task log uses (docs/architecture.md, "Writes"). Opening a
    /// connection does it too; a process that runs other code first that may use SQLite on its own threads (the
    /// worker, before it imports the app) calls this before that code starts.
    public static func configureSQLite() { _ = SQLiteConnection.configured }

    /// Opens (and if needed creates or migrates) the task log at `path` and starts the writer and checkpoint threads.
    public init(path: String, logger: Logger = Logger(label: "neutrino.tasklog"), configuration: Configuration = Configuration()) throws {
        self.path = path
        self.logger = logger
        self.configuration = configuration
        let db = try SQLiteConnection(path: path)
        try TaskLogSchema.prepare(db)
        try db.execute("PRAGMA journal_size_limit=\(configuration.journalSizeLimitBytes)")
        // Every page a batch dirties stays in the cache until the commit: with SQLite's default 2 MB a batch of
        // thousands of events spilled pages into the WAL mid-transaction and wrote them again and again. The spill
        // threshold is what allows that; the cache kept between batches is smaller (a 64 MiB cache_size kept 64 MiB
        // of clean pages resident: most of a busy gateway's memory).
        try db.execute("PRAGMA cache_size=-\(configuration.retainedCacheKiB)")
        try db.execute("PRAGMA cache_spill=-\(configuration.cacheKiB)")
        try db.execute("PRAGMA temp_store=MEMORY")
        if let max = configuration.maxRowBytes { sqlite3_limit(db.handle, SQLITE_LIMIT_LENGTH, Int32(clamping: max)) }
        let checkpointDB = try SQLiteConnection(path: path)
        try checkpointDB.execute("PRAGMA journal_size_limit=\(configuration.journalSizeLimitBytes)")
        // A connection that has not read the file yet has not opened its WAL: a checkpoint on it would do nothing.
        _ = try checkpointDB.integer("SELECT COUNT(*) FROM sqlite_master")
        checkpointer = Checkpointer(path: path, threshold: configuration.checkpointPages)
        // The hook replaces SQLite's automatic checkpoint (which would run inside the writer's commit).
        sqlite3_wal_hook(
            db.handle,
            { context, _, _, pages in
                if let context { Unmanaged<Checkpointer>.fromOpaque(context).takeUnretainedValue().walGrew(pages: Int(pages)) }
                return SQLITE_OK
            }, Unmanaged.passUnretained(checkpointer).toOpaque())

        let box = UncheckedBox(db)
        let writerStarted = startThread(name: "tasklog-writer") { [state, logger, checkpointer] in
            // The checkpointer is also the WAL hook's context: it lives as long as the writer's connection.
            TaskLogWriter.run(
                store: TaskLogStore(db: box.value), state: state, checkpointer: checkpointer,
                maxCheckpointYield: configuration.maxCheckpointYield, logger: logger)
        }
        guard writerStarted == 0 else { throw TaskLogThreadError(thread: "tasklog-writer", code: writerStarted) }

        let checkpointBox = UncheckedBox(checkpointDB)
        let checkpointerStarted = startThread(name: "tasklog-ckpt") { [state, checkpointer, logger] in
            checkpointer.run(
                db: checkpointBox.value,
                queued: {
                    state.condition.lock(); defer { state.condition.unlock() }; return state.queue.count
                },
                logger: logger)
        }
        guard checkpointerStarted == 0 else {
            state.requestStop()  // nothing is queued yet: the writer thread ends at once
            throw TaskLogThreadError(thread: "tasklog-ckpt", code: checkpointerStarted)
        }
    }

    /// Queues `event` for the next batch. See the type's documentation for what happens when the queue is full.
    public func record(_ event: TaskEvent) {
        record(contentsOf: CollectionOfOne(event))
    }

    /// Queues `events` so they commit in one batch (one transaction). Returns at once unless the queue is full;
    /// then it blocks for up to `Configuration.maxBlock`, and drops the non-terminal events if there is still no room.
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
        let capacity = configuration.maxQueuedEvents
        var incoming = Array(events)
        if !s.queue.isEmpty && s.queue.count + incoming.count > capacity {
            let deadline = monotonicDeadline(after: configuration.maxBlock)
            s.blockedProducers += 1
            while !s.stopping && !s.queue.isEmpty && s.queue.count + incoming.count > capacity && s.condition.wait(untilNanos: deadline) {}
            s.blockedProducers -= 1
            if !s.queue.isEmpty && s.queue.count + incoming.count > capacity {
                let before = incoming.count
                incoming.removeAll { !$0.kind.status.isTerminal }
                let dropped = before - incoming.count
                if dropped > 0 {
                    s.dropped += UInt64(dropped)
                    droppedEvents.increment(by: dropped)
                    let now = monotonicNanos()
                    if now - s.lastDropLog > 1_000_000_000 {
                        s.lastDropLog = now
                        logger.error(
                            "task log queue full; non-terminal events dropped (outcomes are kept)",
                            metadata: ["dropped_total": "\(s.dropped)", "queued": "\(s.queue.count)"])
                    }
                }
            }
        }
        guard !incoming.isEmpty else { s.condition.unlock(); return }
        let wasEmpty = s.queue.isEmpty
        s.queue.append(contentsOf: incoming)
        s.enqueued += UInt64(incoming.count)
        // Only an empty queue can have the writer asleep; otherwise it is committing or lingering for more.
        if wasEmpty || s.queue.count >= TaskLogWriter.maxBatch / 4 { s.condition.broadcast() }
        s.condition.unlock()
    }

    /// PASSIVE checkpoints the checkpoint thread has run (for tests).
    var checkpointCount: Int { checkpointer.completedCount }

    /// Events waiting for the writer thread now.
    public var queuedEvents: Int {
        state.condition.lock()
        defer { state.condition.unlock() }
        return state.queue.count
    }

    /// Events `record` dropped because the queue stayed full (never an outcome).
    public var droppedEventCount: UInt64 {
        state.condition.lock()
        defer { state.condition.unlock() }
        return state.dropped
    }

    /// Returns once every event recorded before this call is committed (read-your-writes for the caller).
    public func flush() async {
        let s = state
        guard let target = s.unfinishedTarget() else { return }
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in s.wait(for: target, c) }
    }

    /// Commits what is queued and stops the threads. Events recorded afterwards are dropped with an error.
    public func close() async {
        await flush()
        state.requestStop()
        checkpointer.stop()
    }

    private static func run(store: TaskLogStore, state s: State, checkpointer: Checkpointer, maxCheckpointYield: Duration, logger: Logger) {
        while true {
            s.condition.lock()
            while s.queue.isEmpty && !s.stopping { s.condition.wait() }
            // Under load, linger a moment so one transaction carries many events; an idle log commits at once
            // (the first event of a quiet period does not wait), and so does a log someone is flushing.
            if !s.stopping && s.lastBatchSize > 1 {
                let deadline = monotonicDeadline(after: TaskLogWriter.linger)
                while !s.stopping && s.queue.count < maxBatch / 4 && s.waiters.isEmpty && s.blockedProducers == 0
                    && s.condition.wait(untilNanos: deadline)
                {}
            }
            if s.queue.isEmpty {
                s.stopped = true
                let waiters = s.waiters
                s.waiters.removeAll()
                s.condition.broadcast()
                s.condition.unlock()
                for w in waiters { w.continuation.resume() }
                return
            }
            let n = min(s.queue.count, maxBatch)
            s.lastBatchSize = n
            let batch = Array(s.queue.prefix(n))
            s.queue.removeFirst(n)
            if s.blockedProducers > 0 { s.condition.broadcast() }  // room for producers waiting in `record`
            s.condition.unlock()

            commit(batch, store: store, logger: logger)
            // Only a saturated writer (batches back to back) keeps the WAL from starting over; a writer with pauses
            // between batches lets the checkpoint catch up on its own and must not wait for it.
            if n >= maxBatch / 2 {
                let waited = checkpointer.yieldIfWALTooLong(limit: maxCheckpointYield)
                if waited > 0 { checkpointYields.recordNanoseconds(Int64(waited)) }
            }

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

    /// Commits a batch. A row the database refuses (a constraint, a value too big) costs only its own task, which
    /// is marked `failed`; while another process holds the write lock past the busy timeout, or the disk errs, the
    /// whole batch is retried with backoff (about 20 attempts), then given up with a critical log line.
    private static func commit(_ batch: [TaskEvent], store: TaskLogStore, logger: Logger) {
        var attempt = 0
        var isolate = false
        let started = monotonicNanos()
        while true {
            do {
                if isolate {
                    for r in try store.applyIsolating(batch) {
                        rejectedEvents.increment()
                        logger.error(
                            "task log refused an event; its task is marked failed",
                            metadata: [
                                "task_id": "\(r.event.taskID)", "event": "\(r.event.kind.rawValue)", "error": "\(r.error)",
                                "marked_failed": "\(r.markedFailed)",
                            ])
                    }
                } else {
                    try store.apply(batch)
                }
                batchSizes.record(batch.count)
                writeTimes.recordNanoseconds(Int64(monotonicNanos() - started))
                lockWaits.recordNanoseconds(Int64(store.db.lastLockWaitNanoseconds))
                return
            } catch let error as SQLiteError where error.isDataError && !isolate {
                isolate = true  // one row is at fault: write the batch event by event
            } catch {
                attempt += 1
                if attempt >= 20 {
                    lostEvents.increment(by: batch.count)
                    logger.critical("task log write failed; batch lost", metadata: ["events": "\(batch.count)", "error": "\(error)"])
                    return
                }
                logger.warning("task log write failed; retrying", metadata: ["attempt": "\(attempt)", "error": "\(error)"])
                usleep(UInt32(min(1_000_000, 10_000 << min(attempt, 6))))
            }
        }
    }
}

/// Runs PASSIVE checkpoints on a connection of its own when the writer's WAL hook reports a WAL past the
/// threshold, and samples the file sizes for the gauges once a second.
final class Checkpointer: @unchecked Sendable {
    private let condition = Monitor()
    private var requested = false
    private var running = false
    private var walPages = 0
    private var stopping = false
    /// Checkpoints that ran to completion (for tests).
    private(set) var completed = 0
    private let threshold: Int
    private let path: String

    init(path: String, threshold: Int) {
        self.path = path
        self.threshold = max(1, threshold)
    }

    /// Called by SQLite on the writer thread after every commit, with the WAL's size in pages.
    func walGrew(pages: Int) {
        guard pages >= threshold else { return }
        condition.lock()
        walPages = pages
        if !requested { requested = true; condition.broadcast() }
        condition.unlock()
    }

    /// Under sustained full load the writer commits again before a checkpoint has copied everything, and SQLite
    /// restarts the WAL only at a commit that finds it all copied: the WAL would grow for as long as the load
    /// lasts. Past 4 × the threshold, the writer (between two batches) waits for the running checkpoint, at most
    /// `limit`, so that its next commit starts the WAL over. Returns the nanoseconds waited.
    func yieldIfWALTooLong(limit: Duration) -> UInt64 {
        condition.lock()
        defer { condition.unlock() }
        guard walPages >= 4 * threshold, requested || running else { return 0 }
        let started = monotonicNanos()
        let deadline = monotonicDeadline(after: limit)
        while (requested || running) && !stopping && condition.wait(untilNanos: deadline) {}
        walPages = 0
        return monotonicNanos() - started
    }

    var completedCount: Int {
        condition.lock()
        defer { condition.unlock() }
        return completed
    }

    func stop() {
        condition.lock()
        stopping = true
        condition.broadcast()
        condition.unlock()
    }

    func run(db: SQLiteConnection, queued: () -> Int, logger: Logger) {
        while true {
            condition.lock()
            let deadline = monotonicDeadline(after: .seconds(1))
            while !requested && !stopping && condition.wait(untilNanos: deadline) {}
            let checkpoint = requested
            let stop = stopping
            requested = false
            running = checkpoint
            condition.unlock()
            if checkpoint {
                let started = monotonicNanos()
                var log: Int32 = 0
                var done: Int32 = 0
                let rc = sqlite3_wal_checkpoint_v2(db.handle, nil, SQLITE_CHECKPOINT_PASSIVE, &log, &done)
                condition.lock()
                running = false
                condition.broadcast()
                condition.unlock()
                if rc == SQLITE_OK && log >= 0 {
                    condition.lock()
                    completed += 1
                    condition.unlock()
                    checkpointTimes.recordNanoseconds(Int64(monotonicNanos() - started))
                } else if rc != SQLITE_OK && rc & 0xFF != SQLITE_BUSY && rc & 0xFF != SQLITE_LOCKED {
                    logger.warning("task log checkpoint failed", metadata: ["error": "\(db.lastError)"])
                }
            }
            let sizes = TaskLogFiles.sizes(path: path)
            walBytes.record(sizes.walBytes)
            databaseBytes.record(sizes.databaseBytes)
            queuedEventsGauge.record(queued())
            if stop { return }
        }
    }
}

/// A thread the task log needs could not be started (`pthread_create` failed: the process is out of threads or memory).
public struct TaskLogThreadError: Error, Sendable, CustomStringConvertible {
    public var thread: String
    public var code: Int32
    public var description: String { "cannot start the task log's \(thread) thread (pthread_create: \(String(cString: strerror(code))))" }
}

/// The task log's files on disk.
public enum TaskLogFiles {
    public struct Sizes: Sendable, Hashable {
        /// The database file (`PATH`).
        public var databaseBytes: Int64
        /// The write-ahead log (`PATH-wal`); 0 when absent.
        public var walBytes: Int64
    }

    public static func sizes(path: String) -> Sizes {
        func size(_ p: String) -> Int64 {
            var st = stat()
            return stat(p, &st) == 0 ? Int64(st.st_size) : 0
        }
        return Sizes(databaseBytes: size(path), walBytes: size(path + "-wal"))
    }
}

/// Batch sizes and commit latency (`neutrino_tasklog_batch_size`, `neutrino_tasklog_write_seconds`).
private let batchSizes = Recorder(label: "neutrino_tasklog_batch_size")
private let writeTimes = Metrics.Timer(label: "neutrino_tasklog_write_seconds")
/// The part of a batch's commit spent waiting for the write lock (held by another connection: retention, another process).
private let lockWaits = Metrics.Timer(label: "neutrino_tasklog_lock_wait_seconds")
private let checkpointTimes = Metrics.Timer(label: "neutrino_tasklog_checkpoint_seconds")
private let checkpointYields = Metrics.Timer(label: "neutrino_tasklog_checkpoint_yield_seconds")
private let droppedEvents = Counter(label: "neutrino_tasklog_events_dropped_total")
private let rejectedEvents = Counter(label: "neutrino_tasklog_events_rejected_total")
private let lostEvents = Counter(label: "neutrino_tasklog_events_lost_total")
private let walBytes = Gauge(label: "neutrino_tasklog_wal_bytes")
private let databaseBytes = Gauge(label: "neutrino_tasklog_db_bytes")
private let queuedEventsGauge = Gauge(label: "neutrino_tasklog_queued_events")

/// Moves a non-Sendable value to the one thread that will own it from then on.
struct UncheckedBox<T>: @unchecked Sendable {
    let value: T
    init(_ value: T) { self.value = value }
}
