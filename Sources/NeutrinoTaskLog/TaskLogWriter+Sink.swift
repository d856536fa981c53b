import NeutrinoCore

/// The task log is the sink of `--task-log sqlite:PATH`, and the gateway's sink for events arriving over NATS.
/// `record(_:)`, `flush()` and `close()` are the writer's own; the array form forwards to its generic batch form.
extension TaskLogWriter: TaskEventSink {
    public func record(contentsOf events: [TaskEvent]) {
        record(contentsOf: events[...])
    }
}
