import CSQLite
import Dispatch
import Logging
import Metrics
import NeutrinoCore
import ServiceLifecycle

/// Keeps the task log to a retention period: deletes terminal tasks (and their events) created longer ago than
/// `Configuration.retention`, and idempotency keys older than `Configuration.idempotencyWindow`, then gives the
/// freed pages back to the file system (`PRAGMA incremental_vacuum`, on files created with
/// `auto_vacuum=INCREMENTAL`, which every file version 4 creates is).
///
/// It works in short write transactions (at most `maxBatch` tasks, as many as fit `maxTransaction`) with a pause
/// between them, on a dispatch queue of its own, so writers in every process wait at most one short transaction for
/// the lock. Queued and running tasks are never deleted, however old.
///
/// A `Service`: `run()` prunes once every `interval` until cancelled or a graceful shutdown.
public final class TaskLogRetention: Service, Sendable {
    public struct Configuration: Sendable {
        /// Terminal tasks created longer ago than this are deleted with their events.
        public var retention: Duration
        /// Idempotency keys claimed longer ago than this are deleted (a claim ignores them after the gateway's
        /// window anyway).
        public var idempotencyWindow: Duration
        /// Time between two passes of `run()`.
        public var interval: Duration
        /// The most tasks one transaction deletes.
        public var maxBatch: Int
        /// The batch shrinks (and grows back) so a transaction holds the write lock about this long at most.
        public var maxTransaction: Duration
        /// Pause between two transactions, in which writers have the lock to themselves.
        public var pause: Duration
        /// Pages `incremental_vacuum` frees per transaction, at most (it shrinks like the batch).
        public var maxVacuumPages: Int
        /// Whether each pass ends with `vacuum()`.
        public var vacuum: Bool

        public init(
            retention: Duration, idempotencyWindow: Duration = .seconds(3600), interval: Duration = .seconds(60),
            maxBatch: Int = 500, maxTransaction: Duration = .microseconds(500), pause: Duration = .milliseconds(5),
            maxVacuumPages: Int = 2048, vacuum: Bool = true
        ) {
            self.retention = retention
            self.idempotencyWindow = idempotencyWindow
            self.interval = interval
            self.maxBatch = max(1, maxBatch)
            self.maxTransaction = maxTransaction
            self.pause = pause
            self.maxVacuumPages = max(1, maxVacuumPages)
            self.vacuum = vacuum
        }
    }

    /// What one pass deleted.
    public struct Report: Sendable, Hashable {
        public var tasks = 0
        public var events = 0
        public var idempotencyKeys = 0
        /// Pages (of `PRAGMA page_size` bytes) handed back to the file system.
        public var pagesFreed = 0
        public var transactions = 0

        public init() {}
    }

    private let path: String
    private let configuration: Configuration
    private let logger: Logger
    private let queue = DispatchQueue(label: "neutrino.tasklog.retention")
    /// Used only on `queue`.
    private let connection: UncheckedBox<SQLiteConnection>
    /// The WAL's size after retention's last commit (set by the connection's WAL hook, on `queue`).
    private let walSize = WALSize()

    /// The WAL pages past which retention checkpoints (the writer's default threshold).
    static let checkpointPages = 4_000

    /// Opens (and if needed creates or migrates) the task log at `path`.
    public init(path: String, configuration: Configuration, logger: Logger = Logger(label: "neutrino.tasklog.retention")) throws {
        self.path = path
        self.configuration = configuration
        self.logger = logger
        let db = try SQLiteConnection(path: path)
        try TaskLogSchema.prepare(db)
        try db.execute("PRAGMA cache_size=-32768")
        try db.execute("PRAGMA temp_store=MEMORY")
        // Deleting writes a lot of WAL. Without checkpoints of its own the WAL would wait for the writers' checkpoint
        // thread, which a steady trickle of writes keeps from ever finishing a pass; so retention copies back what it
        // wrote, between batches, on its own queue (a PASSIVE checkpoint: it takes no lock writers wait for).
        sqlite3_wal_hook(
            db.handle,
            { context, _, _, pages in
                if let context { Unmanaged<WALSize>.fromOpaque(context).takeUnretainedValue().pages = Int(pages) }
                return SQLITE_OK
            }, Unmanaged.passUnretained(walSize).toOpaque())
        connection = UncheckedBox(db)
    }

    /// Prunes once every `interval` until the task is cancelled or a graceful shutdown begins.
    public func run() async throws {
        await cancelWhenGracefulShutdown { [self] in
            while !Task.isCancelled {
                do {
                    let report = try await prune()
                    if report.tasks + report.idempotencyKeys + report.pagesFreed > 0 {
                        logger.info(
                            "task log pruned",
                            metadata: [
                                "tasks": "\(report.tasks)", "events": "\(report.events)", "idempotency_keys": "\(report.idempotencyKeys)",
                                "pages_freed": "\(report.pagesFreed)", "transactions": "\(report.transactions)",
                            ])
                    }
                } catch is CancellationError {
                    return
                } catch {
                    logger.warning("task log pruning failed", metadata: ["error": "\(error)"])
                }
                do { try await Task.sleep(for: configuration.interval) } catch { return }
            }
        }
    }

    /// One pass: what is past retention now, then the freed pages. Stops between transactions when cancelled.
    public func prune(now: Timestamp = .now()) async throws -> Report {
        var report = Report()
        let cutoff = now.millis - configuration.retention.wholeMilliseconds
        let cutoffID = TaskIDTime.prefix(millis: cutoff)
        let cutoffTime = Timestamp(millis: cutoff).iso8601
        let terminal = TaskStatus.allCases.filter(\.isTerminal).map { "'\($0.rawValue)'" }.joined(separator: ",")
        let groups = try await onConnection { db in
            try TaskLogStore(db: db).groups(
                "SELECT status, function_name, pool, execution_mode FROM task_groups WHERE status IN (\(terminal)) AND n > 0", binds: [])
        }
        var batch = min(16, configuration.maxBatch)  // small first: the pages of a pass's first batch are cold
        for group in groups {
            var after = ""
            while true {
                try Task.checkCancellation()
                let (from, limit) = (after, batch)
                let step = try await onConnection { db in
                    try Self.deleteBatch(db, group: group, after: from, below: cutoffID, createdBefore: cutoffTime, limit: limit)
                }
                if step.wrote {
                    report.tasks += step.tasks
                    report.events += step.events
                    report.transactions += 1
                    prunedTasks.increment(by: step.tasks)
                    pruneTimes.recordNanoseconds(Int64(step.nanoseconds))
                    batch = adapt(batch, done: step.tasks, nanoseconds: step.nanoseconds, ceiling: configuration.maxBatch)
                }
                try await checkpointIfNeeded()
                guard let last = step.last else { break }
                after = last
                try await Task.sleep(for: configuration.pause)
            }
        }
        let keysBefore = Timestamp(millis: now.millis - configuration.idempotencyWindow.wholeMilliseconds).iso8601
        var keys = min(16, configuration.maxBatch)
        while true {
            try Task.checkCancellation()
            let limit = keys
            let (deleted, nanoseconds) = try await onConnection { db in
                try db.writeTransaction { () -> (Int, UInt64) in
                    let started = DispatchTime.now().uptimeNanoseconds
                    try db.withStatement(
                        "DELETE FROM idempotency_keys WHERE rowid IN (SELECT rowid FROM idempotency_keys WHERE created_at < ?1 LIMIT ?2)"
                    ) { s in
                        s.bind(1, keysBefore)
                        s.bind(2, limit)
                        try s.run()
                    }
                    return (db.changes, DispatchTime.now().uptimeNanoseconds - started)
                }
            }
            report.idempotencyKeys += deleted
            report.transactions += 1
            try await checkpointIfNeeded()
            if deleted < limit { break }
            keys = adapt(keys, done: deleted, nanoseconds: nanoseconds, ceiling: configuration.maxBatch)
            try await Task.sleep(for: configuration.pause)
        }
        if configuration.vacuum {
            let (pages, transactions) = try await incrementalVacuum()
            report.pagesFreed = pages
            report.transactions += transactions
        }
        return report
    }

    /// Hands the database's free pages back to the file system, in short transactions with pauses like pruning's,
    /// and returns how many pages it freed. Only files created with `auto_vacuum=INCREMENTAL` (every file schema
    /// version 4 created) can; on others it returns 0 and the free pages are reused by later writes instead.
    public func vacuum() async throws -> Int {
        try await incrementalVacuum().pages
    }

    private func incrementalVacuum() async throws -> (pages: Int, transactions: Int) {
        var transactions = 0
        guard try await onConnection({ try $0.integer("PRAGMA auto_vacuum") }) == 2 else { return (0, 0) }
        var pages = min(16, configuration.maxVacuumPages)
        var freed = 0
        while true {
            try Task.checkCancellation()
            let n = pages
            let step = try await onConnection { db -> (Int, UInt64) in
                let before = try db.integer("PRAGMA freelist_count")
                guard before > 0 else { return (0, 0) }
                let nanoseconds = try db.writeTransaction { () -> UInt64 in
                    let started = DispatchTime.now().uptimeNanoseconds
                    try db.execute("PRAGMA incremental_vacuum(\(n))")
                    return DispatchTime.now().uptimeNanoseconds - started
                }
                let after = try db.integer("PRAGMA freelist_count")
                return (Int(max(0, before - after)), nanoseconds)
            }
            guard step.0 > 0 else {
                try await checkpointIfNeeded(force: true)  // the truncation reaches the file at a checkpoint
                return (freed, transactions)
            }
            try await checkpointIfNeeded()
            freed += step.0
            transactions += 1
            pages = adapt(pages, done: step.0, nanoseconds: step.1, ceiling: configuration.maxVacuumPages)
            try await Task.sleep(for: configuration.pause)
        }
    }

    /// The next batch size: what fits `maxTransaction` at the cost per item the last transaction showed, at most twice
    /// the last size. A transaction that did nothing (the end of a group) says nothing about the cost.
    private func adapt(_ n: Int, done: Int, nanoseconds: UInt64, ceiling: Int) -> Int {
        guard done > 0 else { return n }
        let budget =
            Double(configuration.maxTransaction.components.seconds) * 1e9
            + Double(configuration.maxTransaction.components.attoseconds) / 1e9
        let perItem = max(1, Double(nanoseconds) / Double(done))
        let fits = Int(budget / perItem)
        return max(1, min(ceiling, min(2 * n, fits)))
    }

    struct BatchResult: Sendable {
        var tasks = 0
        var events = 0
        /// Whether a write transaction ran (there was something to delete).
        var wrote = false
        /// The last id looked at, or nil when the group has nothing more below the cutoff.
        var last: String?
        var nanoseconds: UInt64 = 0
    }

    /// One batch: the oldest `limit` tasks of one terminal group above `after` and below `below`, those created
    /// before `createdBefore` deleted with their events. What is old is cold: the batch is chosen and its pages read
    /// (from disk if need be) in a read transaction first, so the write transaction that follows — two statements
    /// for the whole batch — holds the lock only for the deletes. Terminal tasks never change, so the choice stays
    /// right; `created_at` is checked again by the delete.
    static func deleteBatch(
        _ db: SQLiteConnection, group: TaskGroup, after: String, below: String, createdBefore: String,
        limit: Int
    ) throws -> BatchResult {
        var result = BatchResult()
        var seen = 0
        var doomed: [String] = []
        try db.readTransaction {
            try db.withStatement(
                """
                SELECT id, created_at FROM tasks INDEXED BY idx_tasks_group WHERE status = ?1 AND function_name = ?2
                AND pool = ?3 AND execution_mode = ?4 AND id > ?5 AND id < ?6 ORDER BY id LIMIT ?7
                """
            ) { s in
                s.bind(1, group.status)
                s.bind(2, group.function)
                s.bind(3, group.pool)
                s.bind(4, group.mode)
                s.bind(5, after)
                s.bind(6, below)
                s.bind(7, limit)
                while try s.step() {
                    guard let id = s.string(0) else { continue }
                    seen += 1
                    result.last = id
                    if let created = s.string(1), created < createdBefore { doomed.append(id) }
                }
            }
        }
        if seen < limit { result.last = nil }
        guard !doomed.isEmpty else { return result }
        var list = JSONWriter(capacity: doomed.count * 40)
        list.beginArray()
        for id in doomed { list.string(id) }
        list.endArray()
        let ids = list.text
        try db.readTransaction {
            // Touch what the deletes will: the events' index entries and rows, the tasks' key entries and rows.
            for sql in [
                "SELECT COUNT(*), MAX(at) FROM task_events WHERE task_id IN (SELECT value FROM json_each(?1))",
                "SELECT COUNT(*), MAX(completed_at) FROM tasks WHERE id IN (SELECT value FROM json_each(?1))",
            ] {
                try db.withStatement(sql) { s in
                    s.bind(1, ids)
                    try s.run()
                }
            }
        }
        try db.writeTransaction {
            let started = DispatchTime.now().uptimeNanoseconds
            try db.withStatement("DELETE FROM task_events WHERE task_id IN (SELECT value FROM json_each(?1))") { s in
                s.bind(1, ids)
                try s.run()
            }
            result.events = db.changes
            try db.withStatement("DELETE FROM tasks WHERE id IN (SELECT value FROM json_each(?1)) AND created_at < ?2") { s in
                s.bind(1, ids)
                s.bind(2, createdBefore)
                try s.run()
            }
            result.tasks = db.changes
            result.wrote = true
            result.nanoseconds = DispatchTime.now().uptimeNanoseconds - started
        }
        return result
    }

    /// A PASSIVE checkpoint on retention's connection once its commits have grown the WAL past `checkpointPages`.
    private func checkpointIfNeeded(force: Bool = false) async throws {
        let walSize = self.walSize
        try await onConnection { db in
            guard force || walSize.pages >= Self.checkpointPages else { return }
            walSize.pages = 0
            sqlite3_wal_checkpoint_v2(db.handle, nil, SQLITE_CHECKPOINT_PASSIVE, nil, nil)
        }
    }

    /// Runs `body` on the retention's own thread with its connection.
    private func onConnection<T: Sendable>(_ body: @escaping @Sendable (SQLiteConnection) throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            queue.async { [connection] in
                continuation.resume(with: Result { try body(connection.value) })
            }
        }
    }
}

/// Written by the WAL hook and read between batches, both on retention's queue.
private final class WALSize: @unchecked Sendable {
    var pages = 0
}

private let prunedTasks = Counter(label: "neutrino_tasklog_pruned_tasks_total")
private let pruneTimes = Metrics.Timer(label: "neutrino_tasklog_prune_transaction_seconds")
