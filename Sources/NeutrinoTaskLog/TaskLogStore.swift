import NeutrinoCore

/// Reads and writes rows on one connection; the writer thread and each reader own one.
struct TaskLogStore {
    let db: SQLiteConnection

    static let columns = "id, function_name, status, created_at, started_at, completed_at, worker_id, pool, execution_mode, args, result, error, duration_ms, attempts, progress, progress_message"

    func record(id: String) throws -> TaskRecord? {
        try db.withStatement("SELECT \(TaskLogStore.columns) FROM tasks WHERE id = ?1") { stmt in
            stmt.bind(1, id)
            return try stmt.step() ? TaskLogStore.decode(stmt) : nil
        }
    }

    /// Applies one batch in one transaction: every event through the state machine, and into `task_events`.
    func apply(_ events: [TaskEvent]) throws {
        try db.writeTransaction {
            // Several events of one batch often concern one task (running + completed): merge them in memory and
            // write each row once, remembering whether it existed (an UPDATE touches fewer indexes than a REPLACE).
            var rows: [String: (row: TaskRecord, existed: Bool)] = [:]
            for event in events {
                if let cached = rows[event.taskID] {
                    rows[event.taskID] = (TaskRecord.applying(event, to: cached.row), cached.existed)
                } else {
                    let existing = try record(id: event.taskID)
                    rows[event.taskID] = (TaskRecord.applying(event, to: existing), existing != nil)
                }
                if event.kind != .progress { try insertEvent(event) }
            }
            for (row, existed) in rows.values { try existed ? update(row) : insert(row) }
        }
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

    private func insert(_ r: TaskRecord) throws {
        try write(r, sql: "INSERT INTO tasks (\(TaskLogStore.columns)) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)")
    }

    private func update(_ r: TaskRecord) throws {
        try write(r, sql: """
            UPDATE tasks SET function_name = ?2, status = ?3, created_at = ?4, started_at = ?5, completed_at = ?6,
                worker_id = ?7, pool = ?8, execution_mode = ?9, args = ?10, result = ?11, error = ?12, duration_ms = ?13,
                attempts = ?14, progress = ?15, progress_message = ?16
            WHERE id = ?1
            """)
    }

    private func write(_ r: TaskRecord, sql: String) throws {
        try db.withStatement(sql) { stmt in
        stmt.bind(1, r.id)
        stmt.bind(2, r.function)
        stmt.bind(3, r.status.rawValue)
        stmt.bind(4, r.createdAt.iso8601)
        stmt.bind(5, r.startedAt?.iso8601)
        stmt.bind(6, r.completedAt?.iso8601)
        stmt.bind(7, r.workerID)
        stmt.bind(8, r.pool)
        stmt.bind(9, r.mode.rawValue)
        stmt.bind(10, r.args)
        stmt.bind(11, r.result)
        stmt.bind(12, r.error)
        stmt.bind(13, r.durationMs)
        stmt.bind(14, r.attempts)
        stmt.bind(15, r.progress)
        stmt.bind(16, r.progressMessage)
        try stmt.run()
        }
    }

    static func decode(_ s: Statement) -> TaskRecord? {
        guard let id = s.string(0), let function = s.string(1), let status = s.string(2).flatMap(TaskStatus.init(rawValue:)),
              let created = s.string(3).flatMap(Timestamp.init(iso8601:)) else { return nil }
        return TaskRecord(
            id: id, function: function, status: status, createdAt: created,
            startedAt: s.string(4).flatMap(Timestamp.init(iso8601:)),
            completedAt: s.string(5).flatMap(Timestamp.init(iso8601:)),
            workerID: s.string(6), pool: s.string(7) ?? "",
            mode: s.string(8).flatMap(ExecutionMode.init(rawValue:)) ?? .sync,
            args: s.string(9), result: s.string(10), error: s.string(11), durationMs: s.double(12),
            attempts: s.int(13) ?? 0, progress: s.double(14), progressMessage: s.string(15))
    }

    /// The timeline in lifecycle order. Timestamps have millisecond resolution and events come from several
    /// processes, so within one millisecond the attempt and the lifecycle stage order them, not the insertion order.
    func events(taskID: String) throws -> [TaskEventRecord] {
        try db.withStatement("SELECT event, at, worker_id, attempt, detail FROM task_events WHERE task_id = ?1 ORDER BY at, attempt, CASE event WHEN 'pending' THEN 0 WHEN 'queued' THEN 0 WHEN 'running' THEN 1 WHEN 'retrying' THEN 2 ELSE 3 END, id") { stmt in
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
            let marks = (1...chunk.count).map { "?\($0)" }.joined(separator: ",")
            let terminal = TaskStatus.allCases.filter(\.isTerminal).map { "'\($0.rawValue)'" }.joined(separator: ",")
            try db.withStatement("SELECT id FROM tasks WHERE id IN (\(marks)) AND status IN (\(terminal))") { stmt in
                for (i, id) in chunk.enumerated() { stmt.bind(Int32(i + 1), id) }
                while try stmt.step() { if let id = stmt.string(0) { out.insert(id) } }
            }
        }
        return out
    }

    func list(_ filter: TaskListFilter) throws -> [TaskRecord] {
        var clauses: [String] = []
        var binds: [String] = []
        if let s = filter.status { clauses.append("status = ?\(binds.count + 1)"); binds.append(s.rawValue) }
        if let f = filter.function { clauses.append("function_name = ?\(binds.count + 1)"); binds.append(f) }
        if let p = filter.pool { clauses.append("pool = ?\(binds.count + 1)"); binds.append(p) }
        if let m = filter.mode { clauses.append("execution_mode = ?\(binds.count + 1)"); binds.append(m.rawValue) }
        if let t = filter.since { clauses.append("created_at >= ?\(binds.count + 1)"); binds.append(t.iso8601) }
        if let t = filter.until { clauses.append("created_at <= ?\(binds.count + 1)"); binds.append(t.iso8601) }
        if let q = filter.nameContains {
            var escaped = ""
            for c in q {
                if c == "\\" || c == "%" || c == "_" { escaped.append("\\") }
                escaped.append(c)
            }
            clauses.append("function_name LIKE ?\(binds.count + 1) ESCAPE '\\'")
            binds.append("%\(escaped)%")
        }
        if let b = filter.before { clauses.append("id < ?\(binds.count + 1)"); binds.append(b) }
        let whereSQL = clauses.isEmpty ? "" : " WHERE " + clauses.joined(separator: " AND ")
        return try db.withStatement("SELECT \(TaskLogStore.columns) FROM tasks\(whereSQL) ORDER BY id DESC LIMIT \(max(1, filter.limit))") { stmt in
            for (i, v) in binds.enumerated() { stmt.bind(Int32(i + 1), v) }
            var out: [TaskRecord] = []
            while try stmt.step() { if let r = TaskLogStore.decode(stmt) { out.append(r) } }
            return out
        }
    }
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

    public init(status: TaskStatus? = nil, function: String? = nil, pool: String? = nil, mode: ExecutionMode? = nil,
                since: Timestamp? = nil, until: Timestamp? = nil, nameContains: String? = nil, before: String? = nil,
                limit: Int = 50) {
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
