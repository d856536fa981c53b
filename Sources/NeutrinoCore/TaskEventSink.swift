/// Where a process sends task lifecycle events: the SQLite task log directly (`TaskLogWriter`), or NATS
/// (`NATSEventPublisher`, `--task-log nats`) for a gateway to record.
///
/// `record` never waits for I/O: it queues. A full queue (the SQLite writer's `maxQueuedEvents`) holds the caller
/// for at most `maxBlock` of back-pressure, then drops only events that do not end a task (counted); `flush` is the
/// durability point (a NATS worker acknowledges a task
/// message only after `flush` returns for its terminal event).
public protocol TaskEventSink: Sendable {
    func record(_ event: TaskEvent)
    func record(contentsOf events: [TaskEvent])
    /// Returns once everything recorded before the call is durable (committed / acknowledged).
    func flush() async
    func close() async
}
