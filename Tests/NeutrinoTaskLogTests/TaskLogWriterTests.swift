import Foundation
import NeutrinoCore
import Testing

@testable import NeutrinoTaskLog

/// The writer under trouble: a row the database refuses, a full queue, a growing WAL.
struct TaskLogWriterTests {
    static func lifecycle(_ id: String, result: String = #"{"ok":true}"#, detail: String? = nil) -> [TaskEvent] {
        [
            TaskEvent(taskID: id, kind: .queued, function: "job", pool: "async", mode: .async, args: #"{"x":1}"#),
            TaskEvent(taskID: id, kind: .running, function: "job", pool: "async", mode: .async, workerID: "w", attempt: 1, detail: detail),
            TaskEvent(
                taskID: id, kind: .completed, function: "job", pool: "async", mode: .async, workerID: "w", attempt: 1,
                result: result, durationMs: 3),
        ]
    }

    /// One event of a batch hits a constraint (a trigger standing in for any row SQLite refuses): the batch's other
    /// events commit, and that task ends `failed` with a `TaskLogWriteError` event saying why.
    @Test func aRefusedEventCostsOnlyItsTask() async throws {
        let path = temporaryTaskLogPath()
        let writer = try TaskLogWriter(path: path)
        await writer.flush()
        try SQLiteConnection(path: path).execute(
            """
            CREATE TRIGGER poison BEFORE INSERT ON task_events WHEN NEW.detail = 'poison'
            BEGIN SELECT RAISE(ABORT, 'poisoned event'); END
            """)
        let ids = (0..<20).map { _ in TaskID.make() }
        var batch: [TaskEvent] = []
        for (i, id) in ids.enumerated() { batch += Self.lifecycle(id, detail: i == 7 ? "poison" : nil) }
        writer.record(contentsOf: batch)  // one call: one batch, one transaction
        await writer.flush()

        let reader = try TaskLogReader(path: path)
        for (i, id) in ids.enumerated() {
            let (record, events) = try #require(try await reader.recordWithEvents(id: id))
            if i == 7 {
                #expect(record.status == .failed)
                #expect(record.error?.contains("TaskLogWriteError") == true)
                #expect(record.error?.contains("poisoned event") == true)
                #expect(record.args == #"{"x":1}"#, "the events before the refused one are kept")
                #expect(events.contains { $0.event == "failed" && $0.detail?.contains("'running'") == true })
            } else {
                #expect(record.status == .completed)
                #expect(events.map(\.event) == ["queued", "running", "completed"])
            }
        }
        await writer.close()
        await reader.shutdown()
    }

    /// A value over the writer's row limit (SQLite answers SQLITE_TOOBIG) fails its task instead of the batch.
    @Test func aValueTooBigFailsItsTask() async throws {
        let path = temporaryTaskLogPath()
        let writer = try TaskLogWriter(path: path, configuration: .init(maxRowBytes: 4096))
        let big = TaskID.make()
        let small = TaskID.make()
        let huge = "\"" + String(repeating: "x", count: 10_000) + "\""
        writer.record(contentsOf: Self.lifecycle(big, result: huge) + Self.lifecycle(small))
        await writer.flush()
        let reader = try TaskLogReader(path: path)
        let failed = try #require(try await reader.record(id: big))
        #expect(failed.status == .failed)
        #expect(failed.result == nil)
        #expect(failed.error?.contains("TaskLogWriteError") == true)
        #expect(try await reader.record(id: small)?.status == .completed)
        await writer.close()
        await reader.shutdown()
    }

    /// While another connection holds the write lock, the queue fills: `record` waits (briefly), then drops the
    /// events that do not end a task and keeps every outcome, past the bound. Once the lock is free all outcomes
    /// commit.
    @Test func aFullQueueDropsProgressButNeverOutcomes() async throws {
        let path = temporaryTaskLogPath()
        let writer = try TaskLogWriter(path: path, configuration: .init(maxQueuedEvents: 10, maxBlock: .milliseconds(5)))
        let blocker = try SQLiteConnection(path: path)
        try blocker.execute("BEGIN IMMEDIATE")
        // The writer takes this one and waits on the lock.
        writer.record(TaskEvent(taskID: TaskID.make(), kind: .pending, function: "f", pool: "fast", mode: .sync))
        #expect(eventually { writer.queuedEvents == 0 })
        let ids = (0..<30).map { _ in TaskID.make() }
        for id in ids { writer.record(TaskEvent(taskID: id, kind: .running, function: "f", pool: "fast", mode: .sync, attempt: 1)) }
        #expect(writer.queuedEvents == 10)
        #expect(writer.droppedEventCount == 20)
        for id in ids { writer.record(TaskEvent(taskID: id, kind: .completed, function: "f", pool: "fast", mode: .sync, attempt: 1)) }
        #expect(writer.queuedEvents == 40, "outcomes go past the bound")
        #expect(writer.droppedEventCount == 20)
        try blocker.execute("COMMIT")
        await writer.flush()
        let reader = try TaskLogReader(path: path)
        for id in ids { #expect(try await reader.record(id: id)?.status == .completed) }
        await writer.close()
        await reader.shutdown()
    }

    /// Past `checkpointPages`, the checkpoint thread copies the WAL back (the writer's own commits never do).
    @Test func theCheckpointThreadKeepsTheWALShort() async throws {
        let path = temporaryTaskLogPath()
        let writer = try TaskLogWriter(path: path, configuration: .init(checkpointPages: 8, journalSizeLimitBytes: 64 << 10))
        for round in 0..<20 {
            for _ in 0..<50 { writer.record(contentsOf: Self.lifecycle(TaskID.make(), result: "\"\(round)\"")) }
            await writer.flush()
        }
        #expect(eventually { writer.checkpointCount > 0 })
        let sizes = TaskLogFiles.sizes(path: path)
        #expect(sizes.databaseBytes > 0)
        await writer.close()
    }
}
