import Logging
import NeutrinoCore
import NeutrinoNATS
import ServiceLifecycle

/// Creates NEUTRINO_TASKS, NEUTRINO_DLQ and one pull consumer per queued pool of the manifest, retrying every
/// 0.5 s until NATS accepts (it may come up after the gateway), then idles until the gateway shuts down.
struct QueueProvisioner: Service {
    let queue: GatewayQueue
    /// Pool → MaxDeliver of its consumer.
    let pools: [String: Int]
    let ackWait: Duration
    let logger: Logger

    init(queue: GatewayQueue, manifest: Manifest, ackWait: Duration, logger: Logger) {
        var retries: [String: [Int]] = [:]
        for task in manifest.tasks.values where task.spec.mode.isQueued { retries[task.spec.pool, default: []].append(task.spec.retries) }
        self.queue = queue
        self.pools = retries.mapValues { QueueLayout.maxDeliver(retries: $0) }
        self.ackWait = ackWait
        self.logger = logger
    }

    func run() async throws {
        guard !pools.isEmpty else { return try await gracefulShutdown() }
        await cancelWhenGracefulShutdown { [self] in
            var attempt = 0
            while !Task.isCancelled {
                do {
                    try await TaskQueueProvisioning.ensure(queue.js, pools: pools, ackWait: ackWait, logger: logger)
                    return
                } catch {
                    if attempt % 20 == 0 { logger.warning("JetStream provisioning failed; retrying", metadata: ["error": "\(error)"]) }
                    attempt += 1
                    try? await Task.sleep(for: .milliseconds(500))
                }
            }
        }
        // Provisioned (or shutting down): a service that returns early would end the whole group.
        try? await gracefulShutdown()
    }
}
