/// A task as the task log stores it: one row of `tasks`. JSON fields are kept as raw JSON text.
public struct TaskRecord: Sendable, Hashable {
    public var id: String
    public var function: String
    public var status: TaskStatus
    public var createdAt: Timestamp
    public var startedAt: Timestamp?
    public var completedAt: Timestamp?
    public var workerID: String?
    public var pool: String
    public var mode: ExecutionMode
    public var args: String?
    public var result: String?
    public var error: String?
    public var durationMs: Double?
    public var attempts: Int
    public var progress: Double?
    public var progressMessage: String?
    /// What the task printed in its last attempt (see `TaskEvent.output`).
    public var output: String?
    /// The id of the API key that submitted the task (`TaskEvent.submittedBy`); nil without keys.
    public var submittedBy: String?
    /// The trace id of the task's OpenTelemetry trace (`TaskEvent.traceID`); nil when it was not traced.
    public var traceID: String?

    public init(
        id: String, function: String, status: TaskStatus, createdAt: Timestamp, startedAt: Timestamp? = nil,
        completedAt: Timestamp? = nil, workerID: String? = nil, pool: String, mode: ExecutionMode,
        args: String? = nil, result: String? = nil, error: String? = nil, durationMs: Double? = nil,
        attempts: Int = 0, progress: Double? = nil, progressMessage: String? = nil, output: String? = nil,
        submittedBy: String? = nil, traceID: String? = nil
    ) {
        self.traceID = traceID
        self.output = output
        self.submittedBy = submittedBy
        self.id = id
        self.function = function
        self.status = status
        self.createdAt = createdAt
        self.startedAt = startedAt
        self.completedAt = completedAt
        self.workerID = workerID
        self.pool = pool
        self.mode = mode
        self.args = args
        self.result = result
        self.error = error
        self.durationMs = durationMs
        self.attempts = attempts
        self.progress = progress
        self.progressMessage = progressMessage
    }

    /// The row an event creates when the task has none yet.
    public init(creatingFrom event: TaskEvent) {
        self.init(
            id: event.taskID, function: event.function, status: event.kind.status, createdAt: event.at,
            pool: event.pool, mode: event.mode)
        apply(event, decision: .transition(event.kind.status))
    }

    /// `existing` with `event` applied under the state machine; `nil` row means the event creates it.
    public static func applying(_ event: TaskEvent, to existing: TaskRecord?) -> TaskRecord {
        guard var row = existing else { return TaskRecord(creatingFrom: event) }
        let decision = TaskStateMachine.decide(
            current: row.status, currentAttempt: row.attempts,
            event: event.kind, eventAttempt: event.attempt)
        row.apply(event, decision: decision)
        return row
    }

    private mutating func apply(_ event: TaskEvent, decision: TaskStateMachine.Decision) {
        // Whatever the decision: the earliest accept time is the creation time, and facts the row lacks are filled.
        if event.kind == .pending || event.kind == .queued, event.at < createdAt { createdAt = event.at }
        if args == nil { args = event.args }
        if submittedBy == nil { submittedBy = event.submittedBy }
        if traceID == nil { traceID = event.traceID }
        switch decision {
        case .transition(let next):
            status = next
            attempts = max(attempts, event.attempt)
            switch event.kind {
            case .running:
                startedAt = event.at
                workerID = event.workerID ?? workerID
                completedAt = nil
            case .retrying:
                error = event.error ?? error
                output = event.output ?? output
            case .completed, .failed, .cancelled, .timedOut:
                completedAt = event.at
                workerID = event.workerID ?? workerID
                result = event.result ?? result
                error = event.error ?? error
                durationMs = event.durationMs ?? durationMs
                output = event.output ?? output
                if event.kind == .completed { progress = 1 }
            case .pending, .queued, .progress:
                break
            }
        case .fillMissing:
            if event.kind == .running, startedAt == nil { startedAt = event.at }
            if workerID == nil { workerID = event.workerID }
            // The same outcome reported by a second process (the gateway copies what it delivered).
            if event.kind.status == status, status.isTerminal {
                if result == nil { result = event.result }
                if error == nil { error = event.error }
                if durationMs == nil { durationMs = event.durationMs }
                if output == nil { output = event.output }
            }
        case .updateProgress:
            progress = event.progress ?? progress
            progressMessage = event.detail ?? progressMessage
        }
    }
}
