import Foundation
import NeutrinoCore
import Testing

@testable import NeutrinoTaskLog

/// The list queries: every filter combination the API offers is answered from an index in id order (checked with
/// `EXPLAIN QUERY PLAN`), and gives the same pages as a brute-force filter over every row.
struct TaskLogQueryTests {
    static let base: Int64 = 1_780_000_000_000  // a fixed past instant; task i is created at base + i × 30 s
    static let count = 480
    static let functions: [(name: String, pool: String, mode: ExecutionMode)] = [
        ("echo", "fast", .sync), ("boom", "fast", .sync), ("report_daily", "async", .async),
        ("train_model", "gpu", .gpu), ("crunch", "async", .async), ("crunch", "other", .async),
    ]

    static func time(_ i: Int) -> Int64 { base + Int64(i) * 30_000 }

    /// 480 tasks over four hours: six (function, pool, mode) combinations (one function in two pools), every status.
    static func populate(_ path: String) async throws -> [String] {
        let writer = try TaskLogWriter(path: path)
        var ids: [String] = []
        var rng = SplitMix(seed: 7)
        for i in 0..<count {
            let t = time(i)
            let id = taskID(millis: t, &rng)
            ids.append(id)
            let f = functions[Int(rng.next() % UInt64(functions.count))]
            let first: TaskEventKind = f.mode == .sync ? .pending : .queued
            func event(_ kind: TaskEventKind, _ dt: Int64, attempt: Int = 1) -> TaskEvent {
                TaskEvent(
                    taskID: id, kind: kind, at: Timestamp(millis: t + dt), function: f.name, pool: f.pool, mode: f.mode,
                    workerID: "w", attempt: kind == first ? 0 : attempt, args: kind == first ? #"{"i":\#(i)}"# : nil,
                    durationMs: kind.status.isTerminal ? Double(i % 17) : nil)
            }
            var events = [event(first, 0)]
            let outcome = rng.next() % 10
            if outcome != 0 { events.append(event(.running, 5)) }
            switch outcome {
            case 0, 1: break  // stays queued/pending, or running
            case 2: events.append(event(.failed, 9))
            case 3: events.append(event(.cancelled, 9))
            case 4: events.append(event(.timedOut, 9))
            default: events.append(event(.completed, 9))
            }
            writer.record(contentsOf: events)
        }
        await writer.flush()
        await writer.close()
        return ids
    }

    static func matches(_ r: TaskRecord, _ f: TaskListFilter) -> Bool {
        if let s = f.status, r.status != s { return false }
        if let fn = f.function, r.function != fn { return false }
        if let p = f.pool, r.pool != p { return false }
        if let m = f.mode, r.mode != m { return false }
        if let s = f.since, r.createdAt < s { return false }
        if let u = f.until, u < r.createdAt { return false }
        if let q = f.nameContains, !r.function.lowercased().contains(q.lowercased()) { return false }
        if let b = f.before, r.id >= b { return false }
        return true
    }

    @Test func everyFilterCombinationMatchesABruteForceFilter() async throws {
        let path = temporaryTaskLogPath()
        let ids = try await Self.populate(path)
        let all = try allTasks(path: path)
        #expect(all.count == Self.count)
        let reader = try TaskLogReader(path: path)

        let statuses: [TaskStatus?] = [nil, .completed, .failed, .running, .queued, .cancelled]
        let functions: [String?] = [nil, "crunch", "echo", "missing"]
        let pools: [String?] = [nil, "async", "fast", "other"]
        let modes: [ExecutionMode?] = [nil, .async, .sync, .gpu]
        let names: [String?] = [nil, "R", "report", "%"]
        let windows: [(Timestamp?, Timestamp?)] = [
            (nil, nil),
            (Timestamp(millis: Self.time(100)), Timestamp(millis: Self.time(300))),
            (Timestamp(millis: Self.time(400) + 1), nil),
            (nil, Timestamp(millis: Self.time(50) - 1)),
        ]
        var rng = SplitMix(seed: 11)
        var checked = 0
        var nonEmpty = 0
        for status in statuses {
            for function in functions {
                for pool in pools {
                    for mode in modes {
                        // Every combination of the four equality filters; name and window drawn at random for each.
                        let (since, until) = windows[Int(rng.next() % UInt64(windows.count))]
                        let q = names[Int(rng.next() % UInt64(names.count))]
                        let before: String? = rng.next() % 3 == 0 ? ids[Int(rng.next() % UInt64(ids.count))] : nil
                        var filter = TaskListFilter(
                            status: status, function: function, pool: pool, mode: mode, since: since,
                            until: until, nameContains: q, before: before, limit: 7)
                        let expected = all.filter { Self.matches($0, filter) }.map(\.id).sorted(by: >)
                        var got: [String] = []
                        for _ in 0..<(Self.count / 7 + 2) {
                            let page = try await reader.list(filter)
                            got += page.map(\.id)
                            guard page.count == filter.limit, let last = page.last else { break }
                            filter.before = last.id
                        }
                        #expect(got == expected, "\(filter)")
                        checked += 1
                        if !expected.isEmpty { nonEmpty += 1 }
                    }
                }
            }
        }
        #expect(checked == 384)
        #expect(nonEmpty > 40)
        await reader.shutdown()
    }

    /// No filter combination reads `tasks` whole or sorts: each statement `list` runs is an index search in id
    /// order. Checked on a fresh file and again after `ANALYZE` (statistics can change the planner's choices).
    @Test func everyFilterCombinationUsesAnIndexInIDOrder() async throws {
        let path = temporaryTaskLogPath()
        _ = try await Self.populate(path)
        let db = try SQLiteConnection(path: path)
        let store = TaskLogStore(db: db)
        for analyzed in [false, true] {
            if analyzed { try db.execute("ANALYZE") }
            for mask in 0..<(1 << 7) {
                func has(_ bit: Int) -> Bool { mask & (1 << bit) != 0 }
                let filter = TaskListFilter(
                    status: has(0) ? .failed : nil, function: has(1) ? "crunch" : nil, pool: has(2) ? "async" : nil,
                    mode: has(3) ? .async : nil, since: has(4) ? Timestamp(millis: Self.time(10)) : nil,
                    until: has(4) ? Timestamp(millis: Self.time(200)) : nil, nameContains: has(5) ? "run" : nil,
                    before: has(6) ? TaskID.make() : nil, limit: 50)
                for (sql, plan, index) in try store.listPlans(filter) {
                    Self.expectIndexed(plan, sql: sql, index: index, filter: "\(filter) analyzed=\(analyzed)")
                }
            }
            // The other reads behind the API: one task, /pools, the SSE backlog, the long-poll check.
            let others: [(String, String)] = [
                ("SELECT \(TaskLogStore.columns) FROM tasks WHERE id = ?1", "sqlite_autoindex_tasks_1 (id=?)"),
                ("SELECT event, at FROM task_events WHERE task_id = ?1", "idx_task_events_unique (task_id=?)"),
                (TaskLogStore.recentOutcomesSQL, "COVERING INDEX idx_tasks_completed (completed_at>?)"),
                (TaskLogStore.eventsAfterSQL, "INTEGER PRIMARY KEY (rowid>?)"),
                (TaskLogStore.eventsAfterSQL, "sqlite_autoindex_tasks_1 (id=?)"),
                ("SELECT COALESCE(MAX(id), 0) FROM task_events", "SEARCH task_events"),
                (TaskLogStore.terminalSQL(count: 64), "sqlite_autoindex_tasks_1 (id=?)"),
                (TaskLogStore.terminalSQL(count: 3), "sqlite_autoindex_tasks_1 (id=?)"),
                (
                    "SELECT created_at FROM tasks INDEXED BY idx_tasks_group WHERE status = ?1 AND function_name = ?2 AND pool = ?3 AND execution_mode = ?4 ORDER BY id LIMIT 1",
                    "idx_tasks_group (status=? AND function_name=? AND pool=? AND execution_mode=?)"
                ),
            ]
            for (sql, index) in others {
                Self.expectIndexed(try db.queryPlan(sql), sql: sql, index: index, filter: "analyzed=\(analyzed)")
            }
        }
    }

    /// No full scan, no sort, and the named index is the one used.
    static func expectIndexed(_ plan: [String], sql: String, index: String, filter: String) {
        for line in plan {
            #expect(
                line != "SCAN tasks" && !line.hasPrefix("SCAN tasks ") && !line.hasPrefix("SCAN t ")
                    && !line.hasPrefix("SCAN e") && !line.hasPrefix("SCAN task_events"), "\(line) in \(sql) for \(filter)")
            #expect(!line.contains("TEMP B-TREE"), "\(line) in \(sql) for \(filter)")
        }
        #expect(plan.contains { $0.contains(index) }, "\(plan) should use \(index): \(sql) for \(filter)")
    }

    /// The time part of a UUIDv7 orders ids as text: ids made before an instant sort below its prefix.
    @Test func idPrefixesBoundTimes() {
        var rng = SplitMix(seed: 3)
        for millis: Int64 in [0, 1, 1_780_000_000_000, 1_780_000_000_999, 0xFFFF_FFFF_FFFF] {
            let id = taskID(millis: millis, &rng)
            #expect(id >= TaskIDTime.prefix(millis: millis))
            #expect(id < TaskIDTime.prefix(millis: millis + 1) || millis == 0xFFFF_FFFF_FFFF)
            #expect(id < TaskIDTime.above)
        }
        #expect(TaskIDTime.prefix(millis: 0x0190_f3a2_4b1c) == "0190f3a2-4b1c")
        #expect(TaskIDTime.prefix(millis: -5) == "00000000-0000")
        let now = TaskID.make()
        #expect(now >= TaskIDTime.prefix(millis: Timestamp.now().millis - 60_000))
    }

    @Test func poolStatsCountsQueuedAndRunningFromTheGroupTable() async throws {
        let path = temporaryTaskLogPath()
        _ = try await Self.populate(path)
        let all = try allTasks(path: path)
        let reader = try TaskLogReader(path: path)
        let stats = try await reader.poolStats(since: Timestamp(millis: Self.time(240)))
        for pool in Set(all.map(\.pool)) {
            let rows = all.filter { $0.pool == pool }
            #expect(stats[pool]?.running ?? 0 == rows.filter { $0.status == .running }.count)
            #expect(stats[pool]?.queued ?? 0 == rows.filter { $0.status == .queued }.count)
            let queued = rows.filter { $0.status == .queued }.map(\.createdAt)
            #expect(stats[pool]?.oldestQueued == queued.min())
            let recent = rows.filter { ($0.completedAt.map { $0 >= Timestamp(millis: Self.time(240)) } ?? false) }
            #expect(stats[pool]?.completed ?? 0 == recent.filter { $0.status == .completed }.count)
            #expect(stats[pool]?.failed ?? 0 == recent.filter { $0.status == .failed || $0.status == .timedOut }.count)
        }
        let counts = try groupCounts(path: path)
        #expect(counts.table == counts.actual)
        await reader.shutdown()
    }
}

/// A small deterministic generator (the tests' data must not change between runs).
struct SplitMix: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
