import NeutrinoCore

extension JetStream {
    /// Copies a task's message to `neutrino.dlq.<pool>.<task>` (stream NEUTRINO_DLQ) with the attempts and the error
    /// (cut to 1 KiB) as headers; `Nats-Msg-Id: dlq-<task id>` makes a repeated copy a no-op. The worker's last failed
    /// attempt and the gateway's janitor both end a task this way.
    public func copyToDeadLetter(data: [UInt8], pool: String, task: String, taskID: String, attempts: Int, error: String) async throws {
        _ = try await publish(
            subject: QueueLayout.deadLetterSubject(pool: pool, task: task), data: data, msgID: "dlq-\(taskID)",
            headers: [
                "Neutrino-Task-Id": taskID, "Neutrino-Attempts": String(attempts), "Neutrino-Error": String(error.prefix(1024)),
            ])
    }
}
