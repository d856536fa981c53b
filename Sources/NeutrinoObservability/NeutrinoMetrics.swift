import Metrics

/// The metric names both executables export (`neutrino_` prefix, base units, `_total` counters), and small
/// helpers so a call site names a metric once. The list and its meaning: docs/observability-contract.md.
public enum NeutrinoMetrics {
    public static let httpRequests = "neutrino_http_requests_total"
    public static let tasksSubmitted = "neutrino_tasks_submitted_total"
    public static let tasksFinished = "neutrino_tasks_total"
    public static let taskDuration = "neutrino_task_duration_seconds"
    public static let taskExecution = "neutrino_task_execution_seconds"
    public static let workerInFlight = "neutrino_worker_tasks_in_flight"
    public static let workerSlots = "neutrino_worker_slots"
    /// Calls and ASGI requests waiting in a worker for a Python thread or a coroutine slot.
    public static let workerQueued = "neutrino_worker_tasks_queued"
    public static let queuePending = "neutrino_queue_pending"
    public static let queueInFlight = "neutrino_queue_in_flight"
    public static let queueRedelivered = "neutrino_queue_redelivered"
    public static let queueDepth = "neutrino_queue_depth"
    public static let queueOldestAge = "neutrino_queue_oldest_age_seconds"
    public static let dlqDepth = "neutrino_dlq_depth"
    public static let workersAlive = "neutrino_workers_alive"
    /// Sync calls waiting in a gateway for room in their pool (every worker busy).
    public static let poolWaitingCalls = "neutrino_pool_waiting_calls"
    /// Restarts of worker slots by their supervisor (crashes, wedged interpreters, recycling), from heartbeats.
    public static let workerRestarts = "neutrino_worker_restarts_total"
    public static let desiredReplicas = "neutrino_pool_desired_replicas"
    public static let tasklogBatchSize = "neutrino_tasklog_batch_size"
    public static let tasklogWrite = "neutrino_tasklog_write_seconds"
    public static let eventsApplied = "neutrino_events_applied_total"
    /// Requests forwarded to the mounted ASGI app, by the app's route pattern, method and status code, and their
    /// latency (head forwarded to the last byte relayed).
    public static let asgiRequests = "neutrino_asgi_requests_total"
    public static let asgiDuration = "neutrino_asgi_request_duration_seconds"

    /// Task durations from half a millisecond to ten minutes.
    static let durationBuckets: [Duration] = [
        .microseconds(500), .milliseconds(1), .milliseconds(2), .milliseconds(5), .milliseconds(10), .milliseconds(25),
        .milliseconds(50), .milliseconds(100), .milliseconds(250), .milliseconds(500), .seconds(1), .milliseconds(2500),
        .seconds(5), .seconds(10), .seconds(30), .seconds(60), .seconds(300), .seconds(600),
    ]
    static let batchSizeBuckets: [Double] = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 4096]

    /// A task's labels (and a status, or the metric's name, where one goes with them).
    struct TaskKey: Hashable, Sendable {
        var task: String
        var mode: String
        var pool: String
        var extra: String
        var labels: [(String, String)] { [("task", task), ("mode", mode), ("pool", pool)] }
    }

    private static let finishedCounters = HandleCache<TaskKey, Counter> { key in
        Counter(label: tasksFinished, dimensions: key.labels + [("status", key.extra)])
    }
    private static let submittedCounters = HandleCache<TaskKey, Counter> { key in
        Counter(label: tasksSubmitted, dimensions: key.labels)
    }
    private static let durationTimers = HandleCache<TaskKey, Metrics.Timer> { key in
        Metrics.Timer(label: key.extra, dimensions: key.labels)
    }

    /// A task reached a terminal status.
    public static func finished(task: String, mode: String, pool: String, status: String) {
        finishedCounters.handle(TaskKey(task: task, mode: mode, pool: pool, extra: status)).increment()
    }

    public static func submitted(task: String, mode: String, pool: String) {
        submittedCounters.handle(TaskKey(task: task, mode: mode, pool: pool, extra: "")).increment()
    }

    public static func recordDuration(_ name: String, task: String, mode: String, pool: String, milliseconds: Double) {
        guard milliseconds.isFinite, milliseconds >= 0 else { return }
        durationTimers.handle(TaskKey(task: task, mode: mode, pool: pool, extra: name)).recordNanoseconds(Int64(milliseconds * 1_000_000))
    }

    public static func gauge(_ name: String, _ labels: [(String, String)] = [], _ value: Double) {
        Gauge(label: name, dimensions: labels).record(value)
    }
}
