import Foundation
import NeutrinoCore
import Testing

@testable import NeutrinoTaskLog

struct TaskLogTests {
    func events(for id: String, worker: String) -> [TaskEvent] {
        [
            TaskEvent(
                taskID: id, kind: .pending, at: Timestamp(millis: 1_000), function: "echo", pool: "fast", mode: .sync,
                attempt: 0, args: #"{"x":1}"#),
            TaskEvent(
                taskID: id, kind: .running, at: Timestamp(millis: 1_001), function: "echo", pool: "fast", mode: .sync,
                workerID: worker, attempt: 1),
            TaskEvent(
                taskID: id, kind: .completed, at: Timestamp(millis: 1_002), function: "echo", pool: "fast", mode: .sync,
                workerID: worker, attempt: 1, result: #"{"ok":true}"#, durationMs: 1),
        ]
    }

    /// Several writers on one file (each with its own connection and thread, as gateway and workers have), events
    /// of one task split between writers and delivered in every order, some twice: every task ends with one row,
    /// `completed`, and one event of each kind.
    @Test func concurrentWritersApplyEventsExactlyOnce() async throws {
        let path = temporaryTaskLogPath()
        let writers = try (0..<4).map { _ in try TaskLogWriter(path: path) }
        let ids = (0..<1000).map { _ in TaskID.make() }
        await withTaskGroup(of: Void.self) { group in
            for (w, writer) in writers.enumerated() {
                group.addTask {
                    for (i, id) in ids.enumerated() {
                        let evs = self.events(for: id, worker: "w\(i % 2)")
                        // Writer w delivers event (i + w) % 3, and writer 3 repeats the outcome.
                        if w < 3 { writer.record(evs[(i + w) % 3]) } else { writer.record(evs[2]) }
                    }
                    await writer.flush()
                }
            }
        }
        let reader = try TaskLogReader(path: path)
        var all: [TaskRecord] = []
        var before: String?
        for _ in 0..<20 {
            let page = try await reader.list(TaskListFilter(before: before, limit: 500))
            all += page
            guard page.count == 500 else { break }
            before = page.last?.id
        }
        #expect(all.count == ids.count)
        #expect(Set(all.map(\.id)) == Set(ids))
        #expect(all.allSatisfy { $0.status == .completed && $0.args == #"{"x":1}"# && $0.result == #"{"ok":true}"# && $0.attempts == 1 })
        #expect(all.map(\.id) == all.map(\.id).sorted(by: >), "newest first")
        for id in ids.prefix(50) {
            let evs = try await reader.events(taskID: id)
            #expect(evs.map(\.event) == ["pending", "running", "completed"])
        }
        for w in writers { await w.close() }
        await reader.shutdown()
    }

    @Test func terminalStatusSurvivesLateEvents() async throws {
        let path = temporaryTaskLogPath()
        let writer = try TaskLogWriter(path: path)
        let id = TaskID.make()
        let base = events(for: id, worker: "w")
        writer.record(base[2])
        await writer.flush()
        writer.record(TaskEvent(taskID: id, kind: .timedOut, function: "echo", pool: "fast", mode: .sync, attempt: 1))
        writer.record(base[1])
        writer.record(base[0])
        await writer.flush()
        let reader = try TaskLogReader(path: path)
        let record = try #require(try await reader.record(id: id))
        #expect(record.status == .completed)
        #expect(record.args == #"{"x":1}"#)
        #expect(record.createdAt == Timestamp(millis: 1_000))
        // The status alone (the checks before running a task) agrees with the row; an unknown id has none.
        #expect(try await reader.status(id: id) == .completed)
        #expect(try await reader.status(id: TaskID.make()) == nil)
        await writer.close()
        await reader.shutdown()
    }

    @Test func filtersAndPages() async throws {
        let path = temporaryTaskLogPath()
        let writer = try TaskLogWriter(path: path)
        var ids: [String] = []
        for i in 0..<7 {
            let id = TaskID.make()
            ids.append(id)
            writer.record(
                TaskEvent(
                    taskID: id, kind: i % 2 == 0 ? .completed : .failed, function: i < 4 ? "a" : "b",
                    pool: i < 2 ? "fast" : "other", mode: .sync, attempt: 1))
        }
        await writer.flush()
        let reader = try TaskLogReader(path: path)
        #expect(try await reader.list(TaskListFilter(status: .failed)).map(\.id) == [ids[5], ids[3], ids[1]])
        #expect(try await reader.list(TaskListFilter(function: "a", pool: "other")).map(\.id) == [ids[3], ids[2]])
        #expect(try await reader.list(TaskListFilter(before: ids[4], limit: 2)).map(\.id) == [ids[3], ids[2]])
        #expect(try await reader.record(id: TaskID.make()) == nil)
        await writer.close()
        await reader.shutdown()
    }

    @Test func schemaIsWalWithTheCompositeIndexes() async throws {
        let path = temporaryTaskLogPath()
        let writer = try TaskLogWriter(path: path)
        await writer.close()
        let db = try SQLiteConnection(path: path)
        let mode = try db.withStatement("PRAGMA journal_mode") { s in try s.step() ? s.string(0) : nil }
        #expect(mode == "wal")
        #expect(try db.integer("PRAGMA user_version") == 7)
        #expect(try db.integer("PRAGMA auto_vacuum") == 2, "new files are created with auto_vacuum=INCREMENTAL")
        let indexes = try db.withStatement("SELECT name FROM sqlite_master WHERE type = 'index'") { s in
            var names: [String] = []
            while try s.step() { if let n = s.string(0) { names.append(n) } }
            return names
        }
        for name in ["idx_tasks_group", "idx_tasks_completed", "idx_task_events_unique", "idx_idempotency_created"] {
            #expect(indexes.contains(name))
        }
        for name in TaskLogSchema.replacedIndexes { #expect(!indexes.contains(name)) }
    }
}

struct TaskLogStatsTests {
    @Test func poolStatsAndFeed() async throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("neutrino-stats-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("tasks.db").path
        let writer = try TaskLogWriter(path: path)
        let reader = try TaskLogReader(path: path)
        var events: [TaskEvent] = []
        for i in 0..<10 {
            let id = TaskID.make()
            events.append(TaskEvent(taskID: id, kind: .queued, function: "slow", pool: "async", mode: .async))
            if i < 6 {
                events.append(TaskEvent(taskID: id, kind: .running, function: "slow", pool: "async", mode: .async, workerID: "w", attempt: 1))
                if i < 5 {
                    events.append(
                        TaskEvent(
                            taskID: id, kind: i == 4 ? .failed : .completed, function: "slow", pool: "async", mode: .async,
                            workerID: "w", attempt: 1, durationMs: Double((i + 1) * 10)))
                }
            }
        }
        writer.record(contentsOf: events)
        await writer.flush()
        let stats = try await reader.poolStats(since: Timestamp(millis: Timestamp.now().millis - 60_000))
        let async = try #require(stats["async"])
        #expect(async.queued == 4)
        #expect(async.running == 1)
        #expect(async.completed == 4)
        #expect(async.failed == 1)
        // Histogram bins (64 per doubling): within 0.55 % of the nearest-rank value.
        #expect(abs(try #require(async.p50Ms) - 30) <= 30 * 0.0055)
        #expect(abs(try #require(async.p95Ms) - 50) <= 50 * 0.0055)
        #expect(async.oldestQueued != nil)

        let all = try await reader.events(afterID: 0)
        #expect(all.count == events.count)
        #expect(all.map(\.id) == all.map(\.id).sorted())
        #expect(all.allSatisfy { $0.function == "slow" && $0.pool == "async" })
        let last = try await reader.lastEventID()
        #expect(try await reader.events(afterID: last).isEmpty)
        #expect(try await reader.events(afterID: 0, limit: 3).count == 3)

        let named = try await reader.list(TaskListFilter(mode: .async, nameContains: "LO", limit: 100))
        #expect(named.count == 10)
        #expect(try await reader.list(TaskListFilter(nameContains: "%", limit: 100)).isEmpty)
        #expect(try await reader.list(TaskListFilter(until: Timestamp(millis: 0), limit: 100)).isEmpty)
        await writer.close()
        await reader.shutdown()
    }
}

/// The connection layer under the task log: text is bound by its UTF-8 bytes and length, and the statement cache
/// (keyed by a text's length and last bytes) never hands back another text's statement.
struct SQLiteConnectionTests {
    @Test func textIsStoredAsBound() throws {
        let db = try SQLiteConnection(path: temporaryTaskLogPath())
        try db.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")
        let values: [String?] = [
            "", "a", "échö", "任务 🙂", "fifteen bytes!!", "sixteen bytes!!!", String(repeating: "x", count: 100_000), nil,
        ]
        for (k, v) in values.enumerated() {
            try db.withStatement("INSERT INTO t (k, v) VALUES (?1, ?2)") { s in
                s.bind(1, k)
                s.bind(2, v)
                try s.run()
            }
        }
        for (k, v) in values.enumerated() {
            let back = try db.withStatement("SELECT v, typeof(v), length(CAST(v AS BLOB)) FROM t WHERE k = ?1") { s -> (String?, String?, Int?) in
                s.bind(1, k)
                return try s.step() ? (s.string(0), s.string(1), s.int(2)) : (nil, nil, nil)
            }
            #expect(back.0 == v)
            // An empty string is text, not NULL; every value is stored with its whole UTF-8 length.
            #expect(back.1 == (v == nil ? "null" : "text"))
            if let v { #expect(back.2 == v.utf8.count) }
        }
    }

    @Test func statementsWhoseTextsEndAlikeStayApart() throws {
        let db = try SQLiteConnection(path: temporaryTaskLogPath())
        // Same length, same last bytes: the cache key's hash is the same, the statements are not.
        let a = "SELECT 1 + ?1 AS value"
        let b = "SELECT 2 + ?1 AS value"
        #expect(StatementKey(a).hashValue == StatementKey(b).hashValue)
        #expect(StatementKey(a) != StatementKey(b))
        for _ in 0..<3 {
            for (sql, expected) in [(a, 11), (b, 12)] {
                let value = try db.withStatement(sql) { s -> Int? in
                    s.bind(1, 10)
                    return try s.step() ? s.int(0) : nil
                }
                #expect(value == expected)
            }
        }
    }
}
