import Foundation
import NeutrinoCore
import Testing

@testable import NeutrinoTaskLog

/// Files written by version 3 of the schema are migrated to the current version (4: the composite indexes, 5: the
/// `output` column) when the new code opens them.
struct TaskLogMigrationTests {
    /// The columns of version 3's `tasks` (later versions add columns).
    static let version3Columns =
        "id, function_name, status, created_at, started_at, completed_at, worker_id, pool, execution_mode, args, result, error, duration_ms, attempts, progress, progress_message"

    /// A version-3 file made with version 3's own statements, filled the way version 3's writer wrote rows.
    static func makeVersion3File(_ path: String, tasks: Int = 300, partialMigration: Bool = false) throws {
        let db = try SQLiteConnection(path: path)
        try db.execute("PRAGMA journal_mode=WAL")
        for sql in TaskLogSchema.version3 { try db.execute(sql) }
        try db.execute("PRAGMA user_version=3")
        var rng = SplitMix(seed: 5)
        let statuses = ["completed", "completed", "completed", "failed", "cancelled", "timed_out", "queued", "running", "pending"]
        let functions = [("echo", "fast", "sync"), ("report", "async", "async"), ("train", "gpu", "gpu")]
        try db.writeTransaction {
            for i in 0..<tasks {
                let t = Int64(1_780_000_000_000) + Int64(i) * 1000
                let id = taskID(millis: t, &rng)
                let status = statuses[i % statuses.count]
                let f = functions[i % functions.count]
                let terminal = ["completed", "failed", "cancelled", "timed_out"].contains(status)
                try db.withStatement(
                    "INSERT INTO tasks (\(Self.version3Columns)) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)"
                ) { s in
                    s.bind(1, id)
                    s.bind(2, f.0)
                    s.bind(3, status)
                    s.bind(4, Timestamp(millis: t).iso8601)
                    s.bind(5, status == "pending" || status == "queued" ? nil : Timestamp(millis: t + 5).iso8601)
                    s.bind(6, terminal ? Timestamp(millis: t + 9).iso8601 : nil)
                    s.bind(7, "w1")
                    s.bind(8, i == 7 ? nil : f.1)  // one row without a pool (possible in old files)
                    s.bind(9, f.2)
                    s.bind(10, #"{"i":\#(i)}"#)
                    s.bind(11, status == "completed" ? #"{"ok":true}"# : nil)
                    s.bind(12, status == "failed" ? #"{"type":"E","message":"m","traceback":null}"# : nil)
                    s.bind(13, terminal ? 4.5 : nil)
                    s.bind(14, 1)
                    s.bind(15, nil as Double?)
                    s.bind(16, nil as String?)
                    try s.run()
                }
                for (n, event) in ["pending", "running", status].enumerated() where n < 2 || terminal {
                    try db.withStatement(
                        "INSERT OR IGNORE INTO task_events (task_id, event, at, worker_id, attempt, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
                    ) { s in
                        s.bind(1, id)
                        s.bind(2, event)
                        s.bind(3, Timestamp(millis: t + Int64(n)).iso8601)
                        s.bind(4, "w1")
                        s.bind(5, n == 0 ? 0 : 1)
                        s.bind(6, nil as String?)
                        try s.run()
                    }
                }
            }
            try db.execute("INSERT INTO idempotency_keys (key, task_id, created_at) VALUES ('echo:k1', 'x', '2026-05-28T00:00:00.000Z')")
        }
        if partialMigration {
            // A migration cut short after its first index: the next open must finish it.
            try db.execute(TaskLogSchema.version4Indexes[0])
        }
    }

    static func names(_ path: String, type: String) throws -> Set<String> {
        let db = try SQLiteConnection(path: path)
        return try db.withStatement("SELECT name FROM sqlite_master WHERE type = ?1") { s in
            s.bind(1, type)
            var out: Set<String> = []
            while try s.step() { if let n = s.string(0) { out.insert(n) } }
            return out
        }
    }

    static func eventCount(_ path: String) throws -> Int64 {
        try SQLiteConnection(path: path).integer("SELECT COUNT(*) FROM task_events")
    }

    @Test(arguments: [false, true])
    func version3FileIsMigratedWithItsData(partial: Bool) async throws {
        let path = temporaryTaskLogPath()
        try Self.makeVersion3File(path, partialMigration: partial)
        let before = try allTasks(path: path)
        let eventsBefore = try Self.eventCount(path)
        #expect(try SQLiteConnection(path: path).integer("PRAGMA user_version") == 3)

        let writer = try TaskLogWriter(path: path)
        let db = try SQLiteConnection(path: path)
        #expect(try db.integer("PRAGMA user_version") == 7)
        let indexes = try Self.names(path, type: "index")
        for name in ["idx_tasks_group", "idx_tasks_completed", "idx_idempotency_created", "idx_task_events_unique"] {
            #expect(indexes.contains(name))
        }
        #expect(indexes.isDisjoint(with: TaskLogSchema.replacedIndexes))
        #expect(try Self.names(path, type: "trigger") == ["tasks_group_insert", "tasks_group_update", "tasks_group_delete"])
        #expect(try db.integer("PRAGMA auto_vacuum") == 0, "an existing file keeps its auto_vacuum mode until a VACUUM")

        // Every row and event is still there, and the group table counts them.
        let after = try allTasks(path: path)
        #expect(Set(after) == Set(before))
        #expect(try Self.eventCount(path) == eventsBefore)
        #expect(try db.integer("SELECT COUNT(*) FROM idempotency_keys") == 1)
        var counts = try groupCounts(path: path)
        #expect(counts.table == counts.actual)

        // Lists on the migrated file agree with a brute-force filter.
        let reader = try TaskLogReader(path: path)
        for filter in [
            TaskListFilter(limit: 500), TaskListFilter(status: .failed, limit: 500),
            TaskListFilter(function: "report", pool: "async", limit: 500), TaskListFilter(mode: .gpu, nameContains: "RAI", limit: 500),
            TaskListFilter(since: before[40].createdAt, until: before[90].createdAt, limit: 500),
        ] {
            let expected = before.filter { TaskLogQueryTests.matches($0, filter) }.map(\.id).sorted(by: >)
            #expect(try await reader.list(filter).map(\.id) == expected, "\(filter)")
        }

        // New writes keep the counts exact: a queued task completes, a new task arrives.
        let queued = try #require(before.first { $0.status == .queued })
        writer.record(
            TaskEvent(
                taskID: queued.id, kind: .completed, function: queued.function, pool: queued.pool, mode: queued.mode,
                workerID: "w2", attempt: 1, result: "1", durationMs: 2))
        writer.record(TaskEvent(taskID: TaskID.make(), kind: .queued, function: "report", pool: "async", mode: .async))
        await writer.flush()
        counts = try groupCounts(path: path)
        #expect(counts.table == counts.actual)
        #expect(try await reader.record(id: queued.id)?.status == .completed)
        await writer.close()
        await reader.shutdown()
    }

    /// Opening an already migrated file again changes nothing.
    @Test func reopeningAVersion4FileIsANoOp() async throws {
        let path = temporaryTaskLogPath()
        try Self.makeVersion3File(path, tasks: 20)
        for _ in 0..<3 {
            let writer = try TaskLogWriter(path: path)
            await writer.close()
        }
        let counts = try groupCounts(path: path)
        #expect(counts.table == counts.actual)
        #expect(counts.table.values.reduce(0, +) == 20)
    }
}

extension TaskLogMigrationTests {
    /// A task's printed output survives a write and a read, on a file migrated from version 3.
    @Test func outputIsStoredOnAMigratedFile() async throws {
        let path = temporaryTaskLogPath()
        try Self.makeVersion3File(path, tasks: 5)
        let writer = try TaskLogWriter(path: path)
        let reader = try TaskLogReader(path: path)
        let id = TaskID.make()
        writer.record(contentsOf: [
            TaskEvent(taskID: id, kind: .pending, function: "echo", pool: "fast", mode: .sync, args: "{}"),
            TaskEvent(
                taskID: id, kind: .completed, function: "echo", pool: "fast", mode: .sync, workerID: "w", attempt: 1,
                result: "1", durationMs: 1, output: "hello\n"),
        ])
        await writer.flush()
        #expect(try await reader.record(id: id)?.output == "hello\n")
        await writer.close()
        await reader.shutdown()
    }
}

extension TaskLogMigrationTests {
    /// A version-5 file (no `submitted_by` column) is brought to the current version with its rows, and then records the key
    /// id of a submitted task; a later event without one keeps it.
    @Test func version5FileGetsSubmittedBy() async throws {
        let path = temporaryTaskLogPath()
        let old = TaskID.make()
        do {
            let writer = try TaskLogWriter(path: path)
            writer.record(TaskEvent(taskID: old, kind: .queued, function: "report", pool: "async", mode: .async))
            await writer.flush()
            await writer.close()
            let db = try SQLiteConnection(path: path)
            try db.execute("ALTER TABLE tasks DROP COLUMN submitted_by")
            try db.execute("PRAGMA user_version=5")
        }
        let writer = try TaskLogWriter(path: path)
        let db = try SQLiteConnection(path: path)
        #expect(try db.integer("PRAGMA user_version") == 7)
        #expect(try db.integer("SELECT COUNT(*) FROM pragma_table_info('tasks') WHERE name = 'submitted_by'") == 1)
        let reader = try TaskLogReader(path: path)
        #expect(try await reader.record(id: old)?.submittedBy == nil)
        #expect(try await reader.record(id: old)?.status == .queued)
        let id = TaskID.make()
        var queued = TaskEvent(taskID: id, kind: .queued, function: "report", pool: "async", mode: .async)
        queued.submittedBy = "3f9c0e1a2b4d5e6f"
        writer.record(queued)
        writer.record(TaskEvent(taskID: id, kind: .running, function: "report", pool: "async", mode: .async, workerID: "w", attempt: 1))
        await writer.flush()
        #expect(try await reader.record(id: id)?.submittedBy == "3f9c0e1a2b4d5e6f")
        #expect(try await reader.record(id: id)?.status == .running)
        await writer.close()
        await reader.shutdown()
    }

    /// A version-6 file (no `trace_id` column) is brought to version 7 with its rows; a task's first event with a
    /// trace id sets it and a later event without one keeps it.
    @Test func version6FileGetsTraceID() async throws {
        let path = temporaryTaskLogPath()
        let old = TaskID.make()
        do {
            let writer = try TaskLogWriter(path: path)
            writer.record(TaskEvent(taskID: old, kind: .queued, function: "report", pool: "async", mode: .async))
            await writer.flush()
            await writer.close()
            let db = try SQLiteConnection(path: path)
            try db.execute("ALTER TABLE tasks DROP COLUMN trace_id")
            try db.execute("PRAGMA user_version=6")
        }
        let writer = try TaskLogWriter(path: path)
        let db = try SQLiteConnection(path: path)
        #expect(try db.integer("PRAGMA user_version") == 7)
        #expect(try db.integer("SELECT COUNT(*) FROM pragma_table_info('tasks') WHERE name = 'trace_id'") == 1)
        let reader = try TaskLogReader(path: path)
        #expect(try await reader.record(id: old)?.traceID == nil)
        #expect(try await reader.record(id: old)?.status == .queued)
        let id = TaskID.make()
        let trace = "4bf92f3577b34da6a3ce929d0e0e4736"
        var queued = TaskEvent(taskID: id, kind: .queued, function: "report", pool: "async", mode: .async)
        queued.traceID = trace
        writer.record(queued)
        writer.record(TaskEvent(taskID: id, kind: .running, function: "report", pool: "async", mode: .async, workerID: "w", attempt: 1))
        await writer.flush()
        #expect(try await reader.record(id: id)?.traceID == trace)
        #expect(try await reader.record(id: id)?.status == .running)
        // A worker's event may arrive first, with the same trace: the row keeps the first one it saw.
        let other = TaskID.make()
        var running = TaskEvent(taskID: other, kind: .running, function: "report", pool: "async", mode: .async, workerID: "w", attempt: 1)
        running.traceID = trace
        writer.record(running)
        writer.record(TaskEvent(taskID: other, kind: .queued, function: "report", pool: "async", mode: .async))
        await writer.flush()
        #expect(try await reader.record(id: other)?.traceID == trace)
        await writer.close()
        await reader.shutdown()
    }
}
