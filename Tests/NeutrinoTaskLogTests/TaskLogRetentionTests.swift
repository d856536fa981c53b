import Foundation
import NeutrinoCore
import Testing

@testable import NeutrinoTaskLog

/// Retention deletes old terminal tasks with their events and old idempotency keys, in small transactions, and
/// the file gives the space back.
struct TaskLogRetentionTests {
    static let day: Int64 = 86_400_000

    /// 3 kinds of task, 40 of each, every one with three events and a 6 kB argument: old and terminal, old and
    /// still queued or running, recent and terminal.
    static func populate(_ path: String, now: Int64) async throws -> (old: [String], stuck: [String], recent: [String]) {
        let writer = try TaskLogWriter(path: path)
        var rng = SplitMix(seed: 9)
        var old: [String] = [], stuck: [String] = [], recent: [String] = []
        let args = #"{"blob":""# + String(repeating: "a", count: 6_000) + #""}"#
        for i in 0..<120 {
            let kind = i % 3
            let t = kind == 2 ? now - Int64(i) * 1000 : now - 10 * day + Int64(i) * 1000
            let id = taskID(millis: t, &rng)
            let function = ["echo", "report", "train"][i % 3 == 0 ? 0 : (i / 3) % 3]
            var events = [
                TaskEvent(taskID: id, kind: .queued, at: Timestamp(millis: t), function: function, pool: "async", mode: .async, args: args),
                TaskEvent(taskID: id, kind: .running, at: Timestamp(millis: t + 1), function: function, pool: "async", mode: .async, attempt: 1),
            ]
            if kind != 1 || i % 2 == 0 {
                events.append(
                    TaskEvent(
                        taskID: id, kind: [.completed, .failed, .cancelled, .timedOut][i % 4], at: Timestamp(millis: t + 2),
                        function: function, pool: "async", mode: .async, attempt: 1, durationMs: 1))
            }
            if kind == 1 && i % 2 == 0 {
                // still running after a retry: not terminal
                events[2] = TaskEvent(
                    taskID: id, kind: .retrying, at: Timestamp(millis: t + 2), function: function, pool: "async", mode: .async, attempt: 1)
            }
            writer.record(contentsOf: events)
            switch kind {
            case 0: old.append(id)
            case 1: stuck.append(id)
            default: recent.append(id)
            }
        }
        await writer.close()
        return (old, stuck, recent)
    }

    @Test func pruningDeletesOldTerminalTasksAndGivesTheSpaceBack() async throws {
        let path = temporaryTaskLogPath()
        let now = Timestamp.now()
        let (old, stuck, recent) = try await Self.populate(path, now: now.millis)
        let db = try SQLiteConnection(path: path)
        let store = TaskLogStore(db: db)
        _ = try store.claim(key: "old", taskID: old[0], now: Timestamp(millis: now.millis - 2 * Self.day), windowMs: 120_000)
        _ = try store.claim(key: "new", taskID: recent[0], now: now, windowMs: 120_000)
        try db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        let sizeBefore = TaskLogFiles.sizes(path: path).databaseBytes

        let retention = try TaskLogRetention(
            path: path,
            configuration: .init(
                retention: .seconds(86_400), idempotencyWindow: .seconds(3600), maxBatch: 7, pause: .zero, maxVacuumPages: 16))
        let report = try await retention.prune(now: now)
        #expect(report.tasks == old.count)
        #expect(report.events == old.count * 3)
        #expect(report.idempotencyKeys == 1)
        #expect(report.pagesFreed > 0)
        #expect(report.transactions > old.count / 7)

        let remaining = Set(try allTasks(path: path).map(\.id))
        #expect(remaining == Set(stuck + recent))
        #expect(try db.integer("SELECT COUNT(*) FROM task_events WHERE task_id NOT IN (SELECT id FROM tasks)") == 0)
        #expect(try db.integer("SELECT COUNT(*) FROM idempotency_keys") == 1)
        let counts = try groupCounts(path: path)
        #expect(counts.table == counts.actual)
        #expect(try db.integer("PRAGMA freelist_count") == 0)
        try db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        #expect(TaskLogFiles.sizes(path: path).databaseBytes < sizeBefore)

        // A second pass finds nothing more to do.
        let again = try await retention.prune(now: now)
        #expect(again.tasks == 0 && again.idempotencyKeys == 0)
    }

    /// `run()` prunes at once, then waits for the next interval; cancelling it ends it.
    @Test func runPrunesUntilCancelled() async throws {
        let path = temporaryTaskLogPath()
        let (old, stuck, recent) = try await Self.populate(path, now: Timestamp.now().millis)
        let retention = try TaskLogRetention(path: path, configuration: .init(retention: .seconds(86_400), interval: .seconds(3600)))
        let task = Task { try await retention.run() }
        #expect(try eventually { try allTasks(path: path).count == stuck.count + recent.count })
        task.cancel()
        try await task.value
        #expect(!old.isEmpty)
    }
}
