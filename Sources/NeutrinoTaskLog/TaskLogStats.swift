import NeutrinoCore

/// What the task log says about one pool: tasks running now, the oldest still queued, and the outcomes and
/// durations of the recent window (for `GET /pools`).
public struct PoolTaskStats: Sendable, Hashable {
    public var running = 0
    public var queued = 0
    public var oldestQueued: Timestamp?
    public var completed = 0
    /// `failed` and `timed_out`.
    public var failed = 0
    public var p50Ms: Double?
    public var p95Ms: Double?

    public init() {}
}

/// One committed lifecycle event with its task's identity and current status, for the live feed (`GET /events`).
public struct TaskEventFeedItem: Sendable, Hashable {
    public var id: Int64
    public var taskID: String
    public var event: String
    public var at: String
    public var workerID: String?
    public var attempt: Int
    public var function: String?
    public var pool: String?
    public var mode: String?
    public var status: String?
    public var durationMs: Double?
}

extension TaskLogStore {
    /// Everything `GET /pools` shows of the task log, read whole: running and queued counts from `task_groups` (kept
    /// exact by triggers), the oldest queued task per pool from the lowest id of each queued group, and the outcomes
    /// since `since` from `idx_tasks_completed` alone. What the gateway's pool monitor costs at its first refresh;
    /// later ones read only the new outcomes (`outcomes(afterEventID:)` into `RecentOutcomes`). The task-log
    /// benchmark times it.
    func poolStats(since: Timestamp) throws -> [String: PoolTaskStats] {
        try db.readTransaction {
            var stats = try poolQueueStats()
            let now = Timestamp.now()
            var recent = RecentOutcomes(window: .milliseconds(max(0, now.millis - since.millis)))
            for outcome in try readOutcomes(since: since) { recent.add(outcome, now: now) }
            recent.summarize(now: now, into: &stats)
            return stats
        }
    }

    /// Per pool: running and queued counts, and the oldest queued task (the outcome fields are left empty).
    func poolQueueStats() throws -> [String: PoolTaskStats] {
        var stats: [String: PoolTaskStats] = [:]
        var queuedGroups: [TaskGroup] = []
        try db.withStatement(
            "SELECT status, function_name, pool, execution_mode, n FROM task_groups WHERE status IN ('running', 'queued') AND n > 0"
        ) { stmt in
            while try stmt.step() {
                guard let status = stmt.string(0), let function = stmt.string(1), let pool = stmt.string(2), let mode = stmt.string(3) else {
                    continue
                }
                let count = stmt.int(4) ?? 0
                if status == "running" {
                    stats[pool, default: PoolTaskStats()].running += count
                } else {
                    stats[pool, default: PoolTaskStats()].queued += count
                    queuedGroups.append(TaskGroup(status: status, function: function, pool: pool, mode: mode))
                }
            }
        }
        for group in queuedGroups {
            let oldest = try db.withStatement(
                """
                SELECT created_at FROM tasks INDEXED BY idx_tasks_group
                WHERE status = ?1 AND function_name = ?2 AND pool = ?3 AND execution_mode = ?4 ORDER BY id LIMIT 1
                """
            ) { stmt in
                stmt.bind(1, group.status)
                stmt.bind(2, group.function)
                stmt.bind(3, group.pool)
                stmt.bind(4, group.mode)
                return try stmt.step() ? stmt.string(0).flatMap(Timestamp.init(iso8601:)) : nil
            }
            if let oldest, stats[group.pool]?.oldestQueued.map({ oldest < $0 }) ?? true {
                stats[group.pool, default: PoolTaskStats()].oldestQueued = oldest
            }
        }
        return stats
    }

    /// Every task that ended (`completed`, `failed`, `timed_out`) since `since`, from `idx_tasks_completed` alone,
    /// and the newest event row id, read together: the outcomes committed after that id are the ones this read did
    /// not see.
    func outcomes(since: Timestamp) throws -> TaskOutcomes {
        try db.readTransaction {
            let cursor = try lastEventID()
            return TaskOutcomes(outcomes: try readOutcomes(since: since), cursor: cursor, more: false)
        }
    }

    private func readOutcomes(since: Timestamp) throws -> [TaskOutcome] {
        try db.withStatement(Self.recentOutcomesSQL) { stmt in
            stmt.bind(1, since.iso8601)
            return try Self.outcomeRows(stmt)
        }
    }

    /// Rows of (pool, status, duration_ms, when it ended).
    private static func outcomeRows(_ stmt: Statement) throws -> [TaskOutcome] {
        var out: [TaskOutcome] = []
        while try stmt.step() {
            guard let pool = stmt.string(0), let at = stmt.string(3).flatMap(Timestamp.init(iso8601:)) else { continue }
            out.append(TaskOutcome(pool: pool, failed: stmt.string(1) != "completed", durationMs: stmt.double(2), at: at))
        }
        return out
    }

    /// The outcomes committed after event row `afterID`, looking at no more than `maxEvents` event rows (of every
    /// kind): a task counts once, by the event that gave it its status. Event row ids grow with each commit (one
    /// writer at a time holds the file's write lock), so nothing committed later can fall behind the cursor. A
    /// cursor past the newest row (the file was replaced) comes back as the newest row's id, lower than `afterID`.
    func outcomes(afterEventID afterID: Int64, maxEvents: Int) throws -> TaskOutcomes {
        try db.readTransaction {
            let newest = try lastEventID()
            // Fewer events than the cursor: the log was replaced (a cursor past the newest row says so).
            guard newest >= afterID else { return TaskOutcomes(outcomes: [], cursor: newest, more: false) }
            let upTo = min(newest, afterID.addingReportingOverflow(Int64(max(1, maxEvents))).partialValue)
            var out: [TaskOutcome] = []
            if upTo > afterID {
                out = try db.withStatement(Self.outcomesAfterSQL) { stmt in
                    stmt.bind(1, Int(afterID))
                    stmt.bind(2, Int(upTo))
                    return try Self.outcomeRows(stmt)
                }
            }
            return TaskOutcomes(outcomes: out, cursor: max(afterID, upTo), more: upTo < newest)
        }
    }

    static let recentOutcomesSQL = """
        SELECT pool, status, duration_ms, completed_at FROM tasks INDEXED BY idx_tasks_completed
        WHERE completed_at >= ?1 AND status IN ('completed', 'failed', 'timed_out')
        """

    /// The event rows in (?1, ?2] by their row id (`NOT INDEXED`: the range on the integer primary key, never the
    /// unique index), each terminal one joined to its task, counted only when it is the event that set the task's
    /// status (a task with two outcomes recorded, as when a gateway gave up on a call its worker then finished,
    /// keeps the first).
    static let outcomesAfterSQL = """
        SELECT t.pool, t.status, t.duration_ms, e.at FROM task_events e NOT INDEXED JOIN tasks t ON t.id = e.task_id
        WHERE e.id > ?1 AND e.id <= ?2 AND e.event IN ('completed', 'failed', 'timed_out') AND t.status = e.event
        """

    static let eventsAfterSQL = """
        SELECT e.id, e.task_id, e.event, e.at, e.worker_id, e.attempt, t.function_name, t.pool, t.execution_mode, t.status, t.duration_ms
        FROM task_events e LEFT JOIN tasks t ON t.id = e.task_id WHERE e.id > ?1 ORDER BY e.id LIMIT ?2
        """

    func events(afterID: Int64, limit: Int) throws -> [TaskEventFeedItem] {
        try db.withStatement(Self.eventsAfterSQL) { stmt in
            stmt.bind(1, Int(afterID))
            stmt.bind(2, limit)
            var out: [TaskEventFeedItem] = []
            while try stmt.step() {
                guard let id = stmt.int(0), let task = stmt.string(1), let event = stmt.string(2), let at = stmt.string(3) else { continue }
                out.append(
                    TaskEventFeedItem(
                        id: Int64(id), taskID: task, event: event, at: at, workerID: stmt.string(4),
                        attempt: stmt.int(5) ?? 0, function: stmt.string(6), pool: stmt.string(7),
                        mode: stmt.string(8), status: stmt.string(9), durationMs: stmt.double(10)))
            }
            return out
        }
    }

    func lastEventID() throws -> Int64 {
        try db.withStatement("SELECT COALESCE(MAX(id), 0) FROM task_events") { try $0.step() ? Int64($0.int(0) ?? 0) : 0 }
    }
}

extension TaskLogReader {
    /// Per pool: running and queued counts, the oldest queued task, and outcomes and durations since `since`.
    public func poolStats(since: Timestamp) async throws -> [String: PoolTaskStats] {
        try await withStore { try $0.poolStats(since: since) }
    }

    /// Running and queued counts and the oldest queued task, per pool.
    public func poolQueueStats() async throws -> [String: PoolTaskStats] {
        try await withStore { try $0.poolQueueStats() }
    }

    /// Every outcome since `since`, and the event row id to read new ones after.
    public func outcomes(since: Timestamp) async throws -> TaskOutcomes {
        try await withStore { try $0.outcomes(since: since) }
    }

    /// The outcomes committed after event row `afterID`, looking at up to `maxEvents` event rows.
    public func outcomes(afterEventID afterID: Int64, maxEvents: Int = 50_000) async throws -> TaskOutcomes {
        try await withStore { try $0.outcomes(afterEventID: afterID, maxEvents: maxEvents) }
    }

    /// Up to `limit` events committed after row `afterID`, oldest first.
    public func events(afterID: Int64, limit: Int = 1000) async throws -> [TaskEventFeedItem] {
        try await withStore { try $0.events(afterID: afterID, limit: limit) }
    }

    /// The row id of the newest event (0 for an empty log).
    public func lastEventID() async throws -> Int64 {
        try await withStore { try $0.lastEventID() }
    }
}
