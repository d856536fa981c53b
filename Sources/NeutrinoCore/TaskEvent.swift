/// One lifecycle event, as a worker or the gateway records it. Every event carries enough (function, pool,
/// mode) to create the task's row, because events from different processes can commit in any order.
public struct TaskEvent: Sendable, Hashable {
    public var taskID: String
    public var kind: TaskEventKind
    public var at: Timestamp
    public var function: String
    public var pool: String
    public var mode: ExecutionMode
    public var workerID: String?
    public var attempt: Int
    /// Raw JSON texts, stored as they are.
    public var args: String?
    public var result: String?
    public var error: String?
    public var durationMs: Double?
    public var progress: Double?
    public var detail: String?
    /// What the attempt printed (stdout and stderr, the last `--task-output-bytes`), on its outcome event.
    public var output: String?
    /// The id of the API key the task was submitted with (never the key), on its `pending`/`queued` event.
    public var submittedBy: String?
    /// The OpenTelemetry trace the task belongs to (32 hex digits), when tracing is on or the caller sent a
    /// `traceparent`: on the gateway's `pending`/`queued` event and the worker's events.
    public var traceID: String?

    public init(
        taskID: String, kind: TaskEventKind, at: Timestamp = .now(), function: String, pool: String,
        mode: ExecutionMode, workerID: String? = nil, attempt: Int = 0, args: String? = nil,
        result: String? = nil, error: String? = nil, durationMs: Double? = nil,
        progress: Double? = nil, detail: String? = nil, output: String? = nil
    ) {
        self.output = output
        self.taskID = taskID
        self.kind = kind
        self.at = at
        self.function = function
        self.pool = pool
        self.mode = mode
        self.workerID = workerID
        self.attempt = attempt
        self.args = args
        self.result = result
        self.error = error
        self.durationMs = durationMs
        self.progress = progress
        self.detail = detail
    }
}
