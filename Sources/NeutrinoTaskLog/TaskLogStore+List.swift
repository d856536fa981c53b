import NeutrinoCore

/// The id range a time window covers. Task ids are UUIDv7: their first 48 bits are the creation time in Unix
/// milliseconds, written as the first 12 hex digits, so comparing ids as text compares creation times.
enum TaskIDTime {
    /// How far a task's `created_at` may lie from its id's time and still be found by a time window: both come
    /// from the clock of the process that accepted the task, microseconds apart; the slack covers a late
    /// `pending`/`queued` stamped by another host. Rows outside it can be missed at a window's edge.
    static let slackMs: Int64 = 1_000

    /// The text every id made at `millis` or later sorts at or above, and every earlier id below:
    /// `0190f3a2-4b1c`, the time part of a UUIDv7.
    static func prefix(millis: Int64) -> String {
        let clamped = UInt64(max(0, min(millis, 0xFFFF_FFFF_FFFF)))
        var hex = String(clamped, radix: 16)
        if hex.count < 12 { hex = String(repeating: "0", count: 12 - hex.count) + hex }
        return String(hex.prefix(8)) + "-" + String(hex.suffix(4))
    }

    /// Above every id (ids are hex digits and dashes).
    static let above = "~"
}

/// What `list` runs for one filter: a walk down the primary key, or a merge of per-group walks down `idx_tasks_group`.
struct TaskListQuery {
    /// Exclusive upper id bound: the cursor, or the end of the time window.
    var upper: String
    /// Inclusive lower id bound: the start of the time window.
    var lower: String
    var since: String?
    var until: String?
    var limit: Int
    /// `SELECT … FROM task_groups`, when the filter names a status, function, pool, mode or name substring.
    var groupsSQL: String?
    var groupBinds: [String]

    init(_ filter: TaskListFilter) {
        limit = max(1, filter.limit)
        var upper = filter.before ?? TaskIDTime.above
        var lower = ""
        if let until = filter.until {
            upper = min(upper, TaskIDTime.prefix(millis: until.millis + TaskIDTime.slackMs + 1))
            self.until = until.iso8601
        }
        if let since = filter.since {
            lower = TaskIDTime.prefix(millis: since.millis - TaskIDTime.slackMs)
            self.since = since.iso8601
        }
        self.upper = upper
        self.lower = lower

        var clauses: [String] = ["n > 0"]
        var binds: [String] = []
        func add(_ column: String, _ value: String?) {
            guard let value else { return }
            binds.append(value)
            clauses.append("\(column) = ?\(binds.count)")
        }
        add("status", filter.status?.rawValue)
        add("function_name", filter.function)
        add("pool", filter.pool)
        add("execution_mode", filter.mode?.rawValue)
        if let q = filter.nameContains {
            var escaped = ""
            for c in q {
                if c == "\\" || c == "%" || c == "_" { escaped.append("\\") }
                escaped.append(c)
            }
            binds.append("%\(escaped)%")
            clauses.append("function_name LIKE ?\(binds.count) ESCAPE '\\'")
        }
        groupBinds = binds
        groupsSQL =
            binds.isEmpty
            ? nil
            : "SELECT status, function_name, pool, execution_mode FROM task_groups WHERE " + clauses.joined(separator: " AND ")
    }

    private var windowSQL: String {
        (since == nil ? "" : " AND created_at >= ?\(Self.sinceIndex)") + (until == nil ? "" : " AND created_at <= ?\(Self.untilIndex)")
    }

    static let sinceIndex: Int32 = 7
    static let untilIndex: Int32 = 8

    /// Newest first down the primary key: ?1 upper, ?2 lower, ?6 limit, ?7/?8 the window.
    var walkSQL: String {
        "SELECT \(TaskLogStore.columns) FROM tasks WHERE id < ?1 AND id >= ?2\(windowSQL) ORDER BY id DESC LIMIT ?6"
    }

    /// One group's ids, newest first, from `idx_tasks_group` alone (with a window, each row's `created_at` is
    /// checked too): ?1–?4 the group, ?5 upper, ?6 lower, ?7/?8 the window. Stepped lazily by the merge.
    var seekSQL: String {
        "SELECT id FROM tasks INDEXED BY idx_tasks_group WHERE status = ?1 AND function_name = ?2 AND pool = ?3 "
            + "AND execution_mode = ?4 AND id < ?5 AND id >= ?6\(windowSQL) ORDER BY id DESC"
    }

    func bindWindow(_ s: Statement) {
        if let since { s.bind(Self.sinceIndex, since) }
        if let until { s.bind(Self.untilIndex, until) }
    }
}

/// One (status, function, pool, mode) combination, a row of `task_groups`.
struct TaskGroup: Hashable {
    var status: String
    var function: String
    var pool: String
    var mode: String
}

extension TaskLogStore {
    /// `GET /tasks`. Every filter combination costs at most `limit` + (matching groups) index steps:
    /// - no status/function/pool/mode/`q`: the primary key from the cursor down;
    /// - otherwise the matching groups come from `task_groups` (a few dozen rows at most: statuses × the
    ///   deployed functions), each is walked down `idx_tasks_group` from the cursor, newest first, and the walks
    ///   are merged until the page is full — the rows are then read by id.
    /// A time window is an id range (ids are UUIDv7) plus a check of `created_at` on the rows in it.
    func list(_ filter: TaskListFilter) throws -> [TaskRecord] {
        let query = TaskListQuery(filter)
        guard query.upper > query.lower else { return [] }
        return try db.readTransaction {
            guard let groupsSQL = query.groupsSQL else {
                return try db.withStatement(query.walkSQL) { s in
                    s.bind(1, query.upper)
                    s.bind(2, query.lower)
                    s.bind(6, query.limit)
                    query.bindWindow(s)
                    var out: [TaskRecord] = []
                    while try s.step() { if let r = TaskLogStore.decode(s) { out.append(r) } }
                    return out
                }
            }
            let groups = try self.groups(groupsSQL, binds: query.groupBinds)
            let ids = try mergeNewest(groups, query)
            return try ids.compactMap { try record(id: $0) }
        }
    }

    func groups(_ sql: String, binds: [String]) throws -> [TaskGroup] {
        try db.withStatement(sql) { s in
            for (i, v) in binds.enumerated() { s.bind(Int32(i + 1), v) }
            var out: [TaskGroup] = []
            while try s.step() {
                guard let status = s.string(0), let function = s.string(1), let pool = s.string(2), let mode = s.string(3) else { continue }
                out.append(TaskGroup(status: status, function: function, pool: pool, mode: mode))
            }
            return out
        }
    }

    /// The `limit` newest ids across `groups`: one cursor per group, each stepped only when its head is taken.
    private func mergeNewest(_ groups: [TaskGroup], _ query: TaskListQuery) throws -> [String] {
        guard !groups.isEmpty else { return [] }
        return try db.withStatements(query.seekSQL, count: groups.count) { cursors in
            var heads: [String?] = []
            heads.reserveCapacity(groups.count)
            for (group, s) in zip(groups, cursors) {
                s.bind(1, group.status)
                s.bind(2, group.function)
                s.bind(3, group.pool)
                s.bind(4, group.mode)
                s.bind(5, query.upper)
                s.bind(6, query.lower)
                query.bindWindow(s)
                heads.append(try s.step() ? s.string(0) : nil)
            }
            var out: [String] = []
            out.reserveCapacity(query.limit)
            while out.count < query.limit {
                var best = -1
                for i in heads.indices {
                    guard let head = heads[i] else { continue }
                    if best < 0 || head > heads[best]! { best = i }
                }
                guard best >= 0, let id = heads[best] else { break }
                out.append(id)
                heads[best] = try cursors[best].step() ? cursors[best].string(0) : nil
            }
            return out
        }
    }

    /// `EXPLAIN QUERY PLAN` of every statement `list(filter)` runs, with the index each must use (for the plan tests).
    func listPlans(_ filter: TaskListFilter) throws -> [(sql: String, plan: [String], index: String)] {
        let query = TaskListQuery(filter)
        guard let groupsSQL = query.groupsSQL else {
            return [(query.walkSQL, try db.queryPlan(query.walkSQL), "sqlite_autoindex_tasks_1 (id>? AND id<?)")]
        }
        let byID = "SELECT \(TaskLogStore.columns) FROM tasks WHERE id = ?1"
        return [
            (groupsSQL, try db.queryPlan(groupsSQL), "task_groups"),
            (
                query.seekSQL, try db.queryPlan(query.seekSQL),
                "idx_tasks_group (status=? AND function_name=? AND pool=? AND execution_mode=? AND id>? AND id<?)"
            ),
            (byID, try db.queryPlan(byID), "sqlite_autoindex_tasks_1 (id=?)"),
        ]
    }
}
