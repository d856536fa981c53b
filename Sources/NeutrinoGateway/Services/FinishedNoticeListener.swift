import Logging
import NeutrinoCore
import NeutrinoNATS
import ServiceLifecycle

/// Hands the task ids workers announce on `neutrino.control.finished.*` (see `QueueLayout.finishedSubject`) to the
/// long-poll waiters, on the subscription's own thread, until the gateway shuts down. Subscribes again while the
/// subscription cannot be made (NATS not reached yet); cnats renews it across reconnects by itself.
struct FinishedNoticeListener: Service {
    let connection: NATSConnection
    let waiters: TaskWaiters
    let logger: Logger

    func run() async throws {
        await cancelWhenGracefulShutdown { [self] in
            while !Task.isCancelled {
                do {
                    let subscription = try await connection.subscribe(subject: QueueLayout.finishedSubjects) { [waiters] data in
                        // Anything but a task id is ignored.
                        let id = String(decoding: data, as: UTF8.self)
                        if TaskID.isValid(id) { waiters.taskFinished(id.lowercased()) }
                    }
                    try? await gracefulShutdown()  // held until the gateway shuts down
                    subscription.close()
                    return
                } catch {
                    logger.debug("cannot subscribe to finished notices yet", metadata: ["error": "\(error)"])
                }
                try? await Task.sleep(for: .seconds(1))
            }
        }
    }
}
