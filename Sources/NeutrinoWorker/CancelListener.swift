import FoundationEssentials
import Logging
import NeutrinoCore
import NeutrinoNATS
import ServiceLifecycle

/// Hears `neutrino.control.cancel` (core NATS) and hands each valid task id to `onCancel`, until the worker shuts
/// down. Anything that is not a task id is ignored.
struct CancelListener: Service {
    let connection: NATSConnection
    let logger: Logger
    let onCancel: @Sendable (String) -> Void

    func run() async throws {
        let cancels = try await connection.subscribe(subject: QueueLayout.cancelSubject)
        await withGracefulShutdownHandler {
            for await data in cancels.messages {
                let id = String(decoding: data, as: UTF8.self).trimmingWhitespace().lowercased()
                if TaskID.isValid(id) { onCancel(id) }
            }
        } onGracefulShutdown: {
            cancels.close()
        }
        cancels.close()
    }
}
