import Testing

@testable import NeutrinoCore

struct TaskStateMachineTests {
    func event(
        _ kind: TaskEventKind, attempt: Int = 1, at millis: Int64 = 1000, result: String? = nil, error: String? = nil,
        args: String? = nil, worker: String? = "w1"
    ) -> TaskEvent {
        TaskEvent(
            taskID: "t", kind: kind, at: Timestamp(millis: millis), function: "echo", pool: "fast", mode: .sync,
            workerID: worker, attempt: attempt, args: args, result: result, error: error)
    }

    @Test func terminalStatusesNeverChange() {
        for terminal in TaskStatus.allCases where terminal.isTerminal {
            for kind in TaskEventKind.allCases {
                let d = TaskStateMachine.decide(current: terminal, currentAttempt: 1, event: kind, eventAttempt: 2)
                #expect(d == .fillMissing, "\(kind) after \(terminal)")
            }
        }
    }

    @Test func normalLifecycle() {
        var row = TaskRecord.applying(event(.pending, attempt: 0, at: 1000, args: #"{"x":1}"#, worker: nil), to: nil)
        #expect(row.status == .pending)
        row = TaskRecord.applying(event(.running, at: 1005), to: row)
        #expect(row.status == .running && row.attempts == 1 && row.startedAt == Timestamp(millis: 1005))
        row = TaskRecord.applying(event(.completed, at: 1010, result: "42"), to: row)
        #expect(row.status == .completed && row.result == "42" && row.completedAt == Timestamp(millis: 1010))
        #expect(row.args == #"{"x":1}"#)
    }

    @Test func eventsInAnyOrderGiveTheSameRow() {
        let pending = event(.pending, attempt: 0, at: 1000, args: "{}", worker: nil)
        let running = event(.running, at: 1002)
        let done = event(.completed, at: 1004, result: "1")
        let orders = [[pending, running, done], [running, done, pending], [done, running, pending], [done, pending, running]]
        var rows: [TaskRecord] = []
        for order in orders {
            var row: TaskRecord?
            for e in order { row = TaskRecord.applying(e, to: row) }
            rows.append(row!)
        }
        for row in rows {
            #expect(row.status == .completed)
            #expect(row.createdAt == Timestamp(millis: 1000))
            #expect(row.result == "1")
            #expect(row.args == "{}")
            #expect(row.startedAt != nil)
        }
    }

    @Test func lateEventCannotUndoCompleted() {
        var row = TaskRecord.applying(event(.completed, result: "1"), to: nil)
        row = TaskRecord.applying(event(.failed, error: "{}"), to: row)
        row = TaskRecord.applying(event(.timedOut), to: row)
        row = TaskRecord.applying(event(.running, attempt: 5), to: row)
        #expect(row.status == .completed)
        #expect(row.error == nil)
        #expect(row.result == "1")
    }

    @Test func duplicateOutcomeFillsOnlyWhatIsMissing() {
        // The gateway's copy of the outcome lacks nothing the worker's has, and vice versa.
        var row = TaskRecord.applying(event(.completed, worker: "w1"), to: nil)
        #expect(row.result == nil)
        row = TaskRecord.applying(event(.completed, result: "7", worker: "w1"), to: row)
        #expect(row.result == "7")
    }

    @Test func retriesMoveBackToQueuedAndCountAttempts() {
        var row = TaskRecord.applying(event(.queued, attempt: 0, worker: nil), to: nil)
        row = TaskRecord.applying(event(.running, attempt: 1), to: row)
        row = TaskRecord.applying(event(.retrying, attempt: 1, error: #"{"type":"E"}"#), to: row)
        #expect(row.status == .queued)
        row = TaskRecord.applying(event(.running, attempt: 2), to: row)
        #expect(row.status == .running && row.attempts == 2)
        // A stale running of attempt 1 arriving late changes nothing.
        row = TaskRecord.applying(event(.running, attempt: 1, at: 5000), to: row)
        #expect(row.attempts == 2 && row.startedAt != Timestamp(millis: 5000))
        row = TaskRecord.applying(event(.completed, attempt: 2, result: "ok"), to: row)
        #expect(row.status == .completed && row.attempts == 2)
    }

    @Test func progressOnlyWhileRunning() {
        var row = TaskRecord.applying(event(.running), to: nil)
        var p = event(.progress)
        p.progress = 0.5
        p.detail = "half"
        row = TaskRecord.applying(p, to: row)
        #expect(row.status == .running && row.progress == 0.5 && row.progressMessage == "half")
        row = TaskRecord.applying(event(.failed), to: row)
        p.progress = 0.9
        row = TaskRecord.applying(p, to: row)
        #expect(row.status == .failed && row.progress == 0.5)
    }
}
