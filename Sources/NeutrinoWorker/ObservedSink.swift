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
        var metadata: Logger.Metadata = [
            "task_id": "\(event.taskID)", "task": "\(event.function)", "pool": "\(event.pool)",
            "worker_id": "\(event.workerID ?? "")", "attempt": "\(event.attempt)", "event": "\(event.kind.rawValue)",
        ]
        if let ms = event.durationMs { metadata["duration_ms"] = "\(JSONWriter.format(ms))" }
        if let p = event.progress { metadata["progress"] = "\(JSONWriter.format(p))" }
        let status = event.kind.status
        if status.isTerminal {
            NeutrinoMetrics.finished(task: event.function, mode: event.mode.rawValue, pool: event.pool, status: status.rawValue)
        }
        if let ms = event.durationMs, event.kind != .progress {
            NeutrinoMetrics.recordDuration(
                NeutrinoMetrics.taskExecution, task: event.function, mode: event.mode.rawValue,
                pool: event.pool, milliseconds: ms)
        }
        let level: Logger.Level = event.kind == .progress ? .debug : event.kind == .failed || event.kind == .timedOut ? .warning : .info
        logger.log(level: level, "task \(event.kind.rawValue)", metadata: metadata)
    }
}
