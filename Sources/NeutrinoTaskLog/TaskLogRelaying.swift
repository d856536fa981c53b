import NeutrinoCore

/// Another process's writer that commits a batch into the same task-log file on this writer's behalf
/// (`TaskLogWriter.Configuration.relay`; the implementation is `TaskLogRelayClient` in NeutrinoEvents).
public protocol TaskLogRelaying: Sendable {
    /// Hands `batch` over and waits until it is committed. False when it was not (nothing listening, the connection
    /// broke, no answer in time, the other writer closing): the writer then commits the batch itself, and an event
    /// that the other side did commit after all is applied twice, which changes nothing. Called on the writer's
    /// thread only.
    func deliver(_ batch: [TaskEvent]) -> Bool
}
