import NeutrinoCore

/// `NEUTRINO_SETTLED` (see `QueueLayout.settledStream`): the gateway marks a task cancelled while queued, a worker
/// without a task log marks a task it finished, and such a worker reads the mark before running a delivery.
extension JetStream {
    /// Stores that `taskID` must not run (again), with its status as the body. One mark per task (`Nats-Msg-Id`).
    public func markSettled(pool: String, taskID: String, status: TaskStatus, timeout: Duration? = nil) async throws {
        _ = try await publish(
            subject: QueueLayout.settledSubject(pool: pool, taskID: taskID), data: Array(status.rawValue.utf8),
            msgID: "settled-\(taskID)", timeout: timeout)
    }

    /// The status `taskID` was marked settled with, or nil when it has no mark.
    public func settledStatus(pool: String, taskID: String) async throws -> String? {
        guard
            let mark = try await lastMessage(
                stream: QueueLayout.settledStream, subject: QueueLayout.settledSubject(pool: pool, taskID: taskID))
        else {
            return nil
        }
        return mark.data.isEmpty ? "settled" : String(decoding: mark.data, as: UTF8.self)
    }
}
