import Logging
import NeutrinoCore
import NeutrinoNATS
import ServiceLifecycle

/// Feeds the live set of workers (`WorkerRegistry`) from `neutrino.heartbeat.>`, subscribing again whenever the
/// subscription ends (NATS was down), until the gateway shuts down.
struct HeartbeatListener: Service {
    let connection: NATSConnection
    let registry: WorkerRegistry
    /// Sync pools that learn their workers from heartbeats.
    var discovery: PoolDiscovery?
    let logger: Logger

    func run() async throws {
        await cancelWhenGracefulShutdown { [self] in
            while !Task.isCancelled {
                do {
                    let subscription = try await connection.subscribe(subject: WorkerHeartbeat.wildcardSubject)
                    await withTaskCancellationHandler {
                        for await data in subscription.messages {
                            if let heartbeat = WorkerHeartbeat(json: data) {
                                registry.apply(heartbeat)
                                discovery?.heard(heartbeat)
                            }
                        }
                    } onCancel: {
                        subscription.close()
                    }
                } catch {
                    logger.debug("cannot subscribe to heartbeats yet", metadata: ["error": "\(error)"])
                }
                try? await Task.sleep(for: .seconds(1))
            }
        }
    }
}
