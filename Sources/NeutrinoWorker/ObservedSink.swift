import Logging
import NeutrinoCore
import NeutrinoObservability

/// Every lifecycle event a worker records passes here first: one structured log line per event (task id, task,
/// pool, worker, attempt, duration) and the `neutrino_tasks_total` / `neutrino_task_execution_seconds` metrics; then
/// it goes on to the task log, if the worker has one.
final class ObservedSink: TaskEventSink {
    private let inner: (any TaskEventSink)?
    private let logger: Logger
    private let recycler: Recycler?

    init(_ inner: (any TaskEventSink)?, logger: Logger, recycler: Recycler? = nil) {
        self.inner = inner
        self.logger = logger
        self.recycler = recycler
    }

    func record(_ event: TaskEvent) {
        observe(event)
        inner?.record(event)
        countOutcome(event)
    }

    func record(contentsOf events: [TaskEvent]) {
        for event in events { observe(event) }
        inner?.record(contentsOf: events)
        for event in events { countOutcome(event) }
    }

    /// Logs and counts `event` without recording it: its caller records it (see `CallerRecordedCalls`).
    func observeOnly(_ event: TaskEvent) {
        observe(event)
        countOutcome(event)
    }

    /// An attempt that ran here ended (a terminal outcome or a failed attempt handed back for a retry).
    private func countOutcome(_ event: TaskEvent) {
        guard let recycler, event.workerID != nil, event.kind == .retrying || (event.kind.status.isTerminal && event.durationMs != nil) else {
            return
        }
        recycler.taskFinished()
    }

    func flush() async { await inner?.flush() }
    func close() async { await inner?.close() }

    private func observe(_ event: TaskEvent) {
        let status = event.kind.status
        if status.isTerminal {
            NeutrinoMetrics.finished(task: event.function, mode: event.mode.rawValue, pool: event.pool, status: status.rawValue)
        }
        if let ms = event.durationMs, event.kind != .progress {
            NeutrinoMetrics.recordDuration(
                NeutrinoMetrics.taskExecution, task: event.function, mode: event.mode.rawValue,
                pool: event.pool, milliseconds: ms)
        }
        // Failures are warnings. A sync call's start and success are debug lines, as an access log is off by
        // default: at thousands of calls a second they would cost more than the calls (and `neutrino up` re-prints
        // every line); a queued task's lifecycle stays at info.
        let level: Logger.Level =
            event.kind == .failed || event.kind == .timedOut
            ? .warning
            : event.kind == .progress || event.mode == .sync ? .debug : .info
        // The line costs nothing when the level filters it: its metadata is built only for a line that is written.
        guard logger.logLevel <= level else { return }
        var metadata: Logger.Metadata = [
            "task_id": "\(event.taskID)", "task": "\(event.function)", "pool": "\(event.pool)",
            "worker_id": "\(event.workerID ?? "")", "attempt": "\(event.attempt)", "event": "\(event.kind.rawValue)",
        ]
        if let ms = event.durationMs { metadata["duration_ms"] = "\(JSONWriter.format(ms))" }
        if let trace = event.traceID { metadata["trace_id"] = "\(trace)" }
        if let p = event.progress { metadata["progress"] = "\(JSONWriter.format(p))" }
        logger.log(level: level, "task \(event.kind.rawValue)", metadata: metadata)
    }
}
