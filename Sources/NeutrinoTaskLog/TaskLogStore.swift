import NeutrinoCore
import Synchronization

/// Reads and writes rows on one connection; the writer thread and each reader own one.
struct TaskLogStore {
    let db: SQLiteConnection

    static let columns =
        "id, function_name, status, created_at, started_at, completed_at, worker_id, pool, execution_mode, args, result, error, duration_ms, attempts, progress, progress_message, output, submitted_by, trace_id"

    func record(id: String) throws -> TaskRecord? {
        try db.withStatement("SELECT \(TaskLogStore.columns) FROM tasks WHERE id = ?1") { stmt in
            stmt.bind(1, id)
            return try stmt.step() ? TaskLogStore.decode(stmt) : nil
        }
    }

    /// Only the status of task `id` (nil: no such task): what the checks before running or answering need, without
    /// decoding the rest of the row (its timestamps, arguments and result).
    func status(id: String) throws -> TaskStatus? {
        try db.withStatement("SELECT status FROM tasks WHERE id = ?1") { stmt in
            stmt.bind(1, id)
            return try stmt.step() ? stmt.string(0).flatMap(TaskStatus.init(rawValue:)) : nil
        }
    }

    /// Applies one batch in one transaction: every event through the state machine, and into `task_events`.
    func apply(_ events: [TaskEvent]) throws {
        try db.writeTransaction {
            // Several events of one batch often concern one task (running + completed): merge them in memory and
            // write each row once, remembering what it was (only the columns that changed are written).
            var rows: [String: (row: TaskRecord, original: TaskRecord?)] = [:]
            for event in events {
                if let cached = rows[event.taskID] {
                    rows[event.taskID] = (TaskRecord.applying(event, to: cached.row), cached.original)
                } else {
                    let existing = try record(id: event.taskID)
                    rows[event.taskID] = (TaskRecord.applying(event, to: existing), existing)
                }
                if event.kind != .progress { try insertEvent(event) }
            }
            for (row, original) in rows.values { try write(row, over: original) }
        }
    }

    /// An event the database refused, and whether its task could be marked `failed` in its place.
    struct RejectedEvent {
        var event: TaskEvent
        var error: SQLiteError
        var markedFailed: Bool
    }

    /// The slow path for a batch `apply` could not write because of one row (a constraint, a value too big): every
    /// event in a savepoint of its own, so the others commit. A refused event's task is marked `failed` with a
    /// `TaskLogWriteError` (a `failed` event carries the reason) unless it already has a terminal status. Errors that
    /// are not about one row (I/O, a full disk, the lock) abort the whole transaction for the caller to retry.
    func applyIsolating(_ events: [TaskEvent]) throws -> [RejectedEvent] {
        try db.writeTransaction {
            var rejected: [RejectedEvent] = []
            for event in events {
                do {
                    try db.savepoint { try applyOne(event) }
                } catch let error as SQLiteError where error.isDataError {
                    var marked = false
                    if try record(id: event.taskID)?.status.isTerminal != true {
                        let message = "the task log could not store the task's '\(event.kind.rawValue)' event: \(error.message)"
                        let marker = TaskEvent(
                            taskID: event.taskID, kind: .failed, at: event.at, function: event.function,
                            pool: event.pool, mode: event.mode, workerID: event.workerID, attempt: event.attempt,
                            error: JSONWriter.taskErrorText(type: "TaskLogWriteError", message: message),
                            detail: message)
                        do {
                            try db.savepoint { try applyOne(marker) }
                            marked = true
                        } catch let markError as SQLiteError where markError.isDataError {}
                    }
                    rejected.append(RejectedEvent(event: event, error: error, markedFailed: marked))
                }
            }
            return rejected
        }
    }

    private func applyOne(_ event: TaskEvent) throws {
        let existing = try record(id: event.taskID)
        if event.kind != .progress { try insertEvent(event) }
        try write(TaskRecord.applying(event, to: existing), over: existing)
    }

    private func insertEvent(_ e: TaskEvent) throws {
        try db.withStatement(
            "INSERT OR IGNORE INTO task_events (task_id, event, at, worker_id, attempt, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
        ) { stmt in
            stmt.bind(1, e.taskID)
            stmt.bind(2, e.kind.rawValue)
            stmt.bind(3, e.at.iso8601)
            stmt.bind(4, e.workerID)
            stmt.bind(5, e.attempt)
            stmt.bind(6, e.detail)
            try stmt.run()
        }
    }

    /// Inserts `row`, or updates the columns in which it differs from `original` (nothing when none does).
    /// `OR FAIL`: a statement that fires the `task_groups` triggers would otherwise keep a statement journal (a copy
    /// of every page it touches) to undo itself alone; on any failure the whole batch or savepoint is undone anyway.
    private func write(_ row: TaskRecord, over original: TaskRecord?) throws {
        guard let original else {
            return try db.withStatement(
                "INSERT OR FAIL INTO tasks (\(TaskLogStore.columns)) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)"
            ) { stmt in
                stmt.bind(1, row.id)
                for column in TaskColumn.all { column.bind(stmt, row) }
                try stmt.run()
            }
        }
        var mask = 0
        for (i, column) in TaskColumn.all.enumerated() where !column.same(original, row) { mask |= 1 << i }
        guard mask != 0 else { return }
        try db.withStatement(TaskColumn.updateSQL(mask)) { stmt in
            stmt.bind(1, row.id)
            for (i, column) in TaskColumn.all.enumerated() where mask & (1 << i) != 0 { column.bind(stmt, row) }
            try stmt.run()
        }
    }

    static func decode(_ s: Statement) -> TaskRecord? {
        guard let id = s.string(0), let function = s.string(1), let status = s.string(2).flatMap(TaskStatus.init(rawValue:)),
            let created = s.string(3).flatMap(Timestamp.init(iso8601:))
        else { return nil }
        return TaskRecord(
            id: id, function: function, status: status, createdAt: created,
            startedAt: s.string(4).flatMap(Timestamp.init(iso8601:)),
            completedAt: s.string(5).flatMap(Timestamp.init(iso8601:)),
            workerID: s.string(6), pool: s.string(7) ?? "",
            mode: s.string(8).flatMap(ExecutionMode.init(rawValue:)) ?? .sync,
            args: s.string(9), result: s.string(10), error: s.string(11), durationMs: s.double(12),
            attempts: s.int(13) ?? 0, progress: s.double(14), progressMessage: s.string(15), output: s.string(16),
            submittedBy: s.string(17), traceID: s.string(18))
    }

    /// The timeline in lifecycle order. Timestamps have millisecond resolution and events come from several
    /// processes, so within one millisecond the attempt and the lifecycle stage order them, not the insertion order.
    func events(taskID: String) throws -> [TaskEventRecord] {
        try db.withStatement(
            "SELECT event, at, worker_id, attempt, detail FROM task_events WHERE task_id = ?1 ORDER BY at, attempt, CASE event WHEN 'pending' THEN 0 WHEN 'queued' THEN 0 WHEN 'running' THEN 1 WHEN 'retrying' THEN 2 ELSE 3 END, id"
        ) { stmt in
            stmt.bind(1, taskID)
            var out: [TaskEventRecord] = []
            while try stmt.step() {
                guard let event = stmt.string(0), let at = stmt.string(1).flatMap(Timestamp.init(iso8601:)) else { continue }
                out.append(TaskEventRecord(event: event, at: at, workerID: stmt.string(2), attempt: stmt.int(3) ?? 0, detail: stmt.string(4)))
            }
            return out
        }
    }

    /// The task `key` already names if it was claimed within `windowMs`, else `taskID` (now claimed for `key`).
    func claim(key: String, taskID: String, now: Timestamp, windowMs: Int64) throws -> String {
        try db.writeTransaction {
            let existing = try db.withStatement("SELECT task_id, created_at FROM idempotency_keys WHERE key = ?1") { s in
                s.bind(1, key)
                return try s.step() ? (s.string(0), s.string(1).flatMap(Timestamp.init(iso8601:))) : (nil, nil)
            }
            if let id = existing.0, let at = existing.1, now.millis - at.millis <= windowMs { return id }
            try db.withStatement("INSERT OR REPLACE INTO idempotency_keys (key, task_id, created_at) VALUES (?1, ?2, ?3)") { s in
                s.bind(1, key)
                s.bind(2, taskID)
                s.bind(3, now.iso8601)
                try s.run()
            }
            return taskID
        }
    }

    /// Up to 64 ids by primary key. The unary `+` keeps `status` out of index selection: with a long IN list the
    /// planner would otherwise walk every terminal row of `idx_tasks_group`.
    static func terminalSQL(count: Int) -> String {
        let marks = (1...max(1, count)).map { "?\($0)" }.joined(separator: ",")
        let terminal = TaskStatus.allCases.filter(\.isTerminal).map { "'\($0.rawValue)'" }.joined(separator: ",")
        return "SELECT id FROM tasks WHERE id IN (\(marks)) AND +status IN (\(terminal))"
    }

    // MARK: Idempotency keys with a fingerprint and a release — MINIMAL ADDITION (branch `harden`, issue 13).
    // The gateway needs (1) the fingerprint of the request that claimed a key, to answer a reuse with other arguments
    // 422, and (2) to release its claim when the publish failed. Without a schema change the fingerprint is kept in
    // a companion row of `idempotency_keys` (`key` = "#fingerprint:" + key, `task_id` = the fingerprint; task names,
    // which prefix every gateway key, never start with '#'). On a schema with a `fingerprint` column, keep the
    // signatures and store it there.

    static func fingerprintKey(_ key: String) -> String { "#fingerprint:" + key }

    /// Claims `key` for `taskID` (with `fingerprint`) unless it names a task claimed within `windowMs`.
    func claim(key: String, taskID: String, fingerprint: String, now: Timestamp, windowMs: Int64) throws -> IdempotencyClaim {
        try db.writeTransaction {
            let existing = try db.withStatement("SELECT task_id, created_at FROM idempotency_keys WHERE key = ?1") { s in
                s.bind(1, key)
                return try s.step() ? (s.string(0), s.string(1).flatMap(Timestamp.init(iso8601:))) : (nil, nil)
            }
            if let id = existing.0, let at = existing.1, now.millis - at.millis <= windowMs {
                let stored = try db.withStatement("SELECT task_id FROM idempotency_keys WHERE key = ?1") { s in
                    s.bind(1, TaskLogStore.fingerprintKey(key))
                    return try s.step() ? s.string(0) : nil
                }
                return .existing(taskID: id, fingerprint: stored)
            }
            for (k, v) in [(key, taskID), (TaskLogStore.fingerprintKey(key), fingerprint)] {
                try db.withStatement("INSERT OR REPLACE INTO idempotency_keys (key, task_id, created_at) VALUES (?1, ?2, ?3)") { s in
                    s.bind(1, k)
                    s.bind(2, v)
                    s.bind(3, now.iso8601)
                    try s.run()
                }
            }
            return .claimed
        }
    }

    /// Frees `key` if it still names `taskID`; true if it did.
    func release(key: String, taskID: String) throws -> Bool {
        try db.writeTransaction {
            let owner = try db.withStatement("SELECT task_id FROM idempotency_keys WHERE key = ?1") { s in
                s.bind(1, key)
                return try s.step() ? s.string(0) : nil
            }
            guard owner == taskID else { return false }
            for k in [key, TaskLogStore.fingerprintKey(key)] {
                try db.withStatement("DELETE FROM idempotency_keys WHERE key = ?1") { s in
                    s.bind(1, k)
                    try s.run()
                }
            }
            return true
        }
    }

    func terminal(among ids: [String]) throws -> Set<String> {
        var out: Set<String> = []
        // Bounded IN lists: SQLite allows 32766 parameters, keep statements small and cacheable.
        for chunkStart in stride(from: 0, to: ids.count, by: 64) {
            let chunk = Array(ids[chunkStart..<min(ids.count, chunkStart + 64)])
            try db.withStatement(Self.terminalSQL(count: chunk.count)) { stmt in
                for (i, id) in chunk.enumerated() { stmt.bind(Int32(i + 1), id) }
                while try stmt.step() { if let id = stmt.string(0) { out.insert(id) } }
            }
        }
        return out
    }
}

/// The columns of `tasks` after `id`, each bound at its own position (?2 … ?19) in the INSERT and every UPDATE.
struct TaskColumn: Sendable {
    let name: String
    let position: Int32
    let same: @Sendable (TaskRecord, TaskRecord) -> Bool
    let bind: @Sendable (Statement, TaskRecord) -> Void

    static let all: [TaskColumn] = [
        TaskColumn(name: "function_name", position: 2, same: { $0.function == $1.function }, bind: { $0.bind(2, $1.function) }),
        TaskColumn(name: "status", position: 3, same: { $0.status == $1.status }, bind: { $0.bind(3, $1.status.rawValue) }),
        TaskColumn(name: "created_at", position: 4, same: { $0.createdAt == $1.createdAt }, bind: { $0.bind(4, $1.createdAt.iso8601) }),
        TaskColumn(name: "started_at", position: 5, same: { $0.startedAt == $1.startedAt }, bind: { $0.bind(5, $1.startedAt?.iso8601) }),
        TaskColumn(name: "completed_at", position: 6, same: { $0.completedAt == $1.completedAt }, bind: { $0.bind(6, $1.completedAt?.iso8601) }),
        TaskColumn(name: "worker_id", position: 7, same: { $0.workerID == $1.workerID }, bind: { $0.bind(7, $1.workerID) }),
        TaskColumn(name: "pool", position: 8, same: { $0.pool == $1.pool }, bind: { $0.bind(8, $1.pool) }),
        TaskColumn(name: "execution_mode", position: 9, same: { $0.mode == $1.mode }, bind: { $0.bind(9, $1.mode.rawValue) }),
        TaskColumn(name: "args", position: 10, same: { $0.args == $1.args }, bind: { $0.bind(10, $1.args) }),
        TaskColumn(name: "result", position: 11, same: { $0.result == $1.result }, bind: { $0.bind(11, $1.result) }),
        TaskColumn(name: "error", position: 12, same: { $0.error == $1.error }, bind: { $0.bind(12, $1.error) }),
        TaskColumn(name: "duration_ms", position: 13, same: { $0.durationMs == $1.durationMs }, bind: { $0.bind(13, $1.durationMs) }),
        TaskColumn(name: "attempts", position: 14, same: { $0.attempts == $1.attempts }, bind: { $0.bind(14, $1.attempts) }),
        TaskColumn(name: "progress", position: 15, same: { $0.progress == $1.progress }, bind: { $0.bind(15, $1.progress) }),
        TaskColumn(
            name: "progress_message", position: 16, same: { $0.progressMessage == $1.progressMessage }, bind: { $0.bind(16, $1.progressMessage) }),
        TaskColumn(name: "output", position: 17, same: { $0.output == $1.output }, bind: { $0.bind(17, $1.output) }),
        TaskColumn(
            name: "submitted_by", position: 18, same: { $0.submittedBy == $1.submittedBy }, bind: { $0.bind(18, $1.submittedBy) }),
        TaskColumn(name: "trace_id", position: 19, same: { $0.traceID == $1.traceID }, bind: { $0.bind(19, $1.traceID) }),
    ]

    /// `UPDATE OR FAIL tasks SET <the columns in mask> WHERE id = ?1`, built once per mask.
    static func updateSQL(_ mask: Int) -> String {
        if let sql = updateSQLCache.withLock({ $0[mask] }) { return sql }
        let sets = all.enumerated().filter { mask & (1 << $0.offset) != 0 }.map { "\($0.element.name) = ?\($0.element.position)" }
        let sql = "UPDATE OR FAIL tasks SET \(sets.joined(separator: ", ")) WHERE id = ?1"
        updateSQLCache.withLock { $0[mask] = sql }
        return sql
    }

    private static let updateSQLCache = Mutex<[Int: String]>([:])
}

/// What claiming an Idempotency-Key found (MINIMAL ADDITION, branch `harden`).
public enum IdempotencyClaim: Sendable, Equatable {
    /// The key was free, or its window had passed: it names the new task now.
    case claimed
    /// The key names `taskID`, claimed within the window by a request with `fingerprint` (nil: claimed without one).
    case existing(taskID: String, fingerprint: String?)
}

/// One row of `task_events`.
public struct TaskEventRecord: Sendable, Hashable {
    public var event: String
    public var at: Timestamp
    public var workerID: String?
    public var attempt: Int
    public var detail: String?
}

/// `GET /tasks` filters. Ids are time-ordered, so `before` (an id) is the page cursor.
public struct TaskListFilter: Sendable, Hashable {
    public var status: TaskStatus?
    public var function: String?
    public var pool: String?
    public var mode: ExecutionMode?
    /// `created_at` bounds, inclusive.
    public var since: Timestamp?
    public var until: Timestamp?
    /// A case-insensitive substring of the task name.
    public var nameContains: String?
    public var before: String?
    public var limit: Int

    public init(
        status: TaskStatus? = nil, function: String? = nil, pool: String? = nil, mode: ExecutionMode? = nil,
        since: Timestamp? = nil, until: Timestamp? = nil, nameContains: String? = nil, before: String? = nil,
        limit: Int = 50
    ) {
        self.status = status
        self.function = function
        self.pool = pool
        self.mode = mode
        self.since = since
        self.until = until
        self.nameContains = nameContains
        self.before = before
        self.limit = limit
    }
}
