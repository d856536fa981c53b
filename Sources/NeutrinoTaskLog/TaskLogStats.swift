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
    /// `GET /pools`: running and queued counts from `task_groups` (kept exact by triggers), the oldest queued task
    /// per pool from the lowest id of each queued group, and the recent outcomes from `idx_tasks_completed` alone.
    func poolStats(since: Timestamp) throws -> [String: PoolTaskStats] {
        try db.readTransaction {
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
            var durations: [String: [Double]] = [:]
            try db.withStatement(Self.recentOutcomesSQL) { stmt in
                stmt.bind(1, since.iso8601)
                while try stmt.step() {
                    guard let pool = stmt.string(0) else { continue }
                    if stmt.string(1) == "completed" {
                        stats[pool, default: PoolTaskStats()].completed += 1
                    } else {
                        stats[pool, default: PoolTaskStats()].failed += 1
                    }
                    if let d = stmt.double(2) { durations[pool, default: []].append(d) }
                }
            }
            for (pool, values) in durations where !values.isEmpty {
                let sorted = values.sorted()
                stats[pool, default: PoolTaskStats()].p50Ms = Self.percentile(sorted, 0.50)
                stats[pool, default: PoolTaskStats()].p95Ms = Self.percentile(sorted, 0.95)
            }
            return stats
        }
    }

    static let recentOutcomesSQL = """
        SELECT pool, status, duration_ms FROM tasks INDEXED BY idx_tasks_completed
        WHERE completed_at >= ?1 AND status IN ('completed', 'failed', 'timed_out')
        """

    static let eventsAfterSQL = """
        SELECT e.id, e.task_id, e.event, e.at, e.worker_id, e.attempt, t.function_name, t.pool, t.execution_mode, t.status, t.duration_ms
        FROM task_events e LEFT JOIN tasks t ON t.id = e.task_id WHERE e.id > ?1 ORDER BY e.id LIMIT ?2
        """

    /// Nearest-rank percentile of an ascending, non-empty array.
    static func percentile(_ sorted: [Double], _ p: Double) -> Double {
        let rank = Int((p * Double(sorted.count)).rounded(.up)) - 1
        return sorted[min(sorted.count - 1, max(0, rank))]
    }

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

    /// Up to `limit` events committed after row `afterID`, oldest first.
    public func events(afterID: Int64, limit: Int = 1000) async throws -> [TaskEventFeedItem] {
        try await withStore { try $0.events(afterID: afterID, limit: limit) }
    }

    /// The row id of the newest event (0 for an empty log).
    public func lastEventID() async throws -> Int64 {
        try await withStore { try $0.lastEventID() }
    }
}
