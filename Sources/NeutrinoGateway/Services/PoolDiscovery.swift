import Logging
import NeutrinoCore
import ServiceLifecycle

/// The elastic fast pool: sync pools learn their workers from heartbeats (`--http-pool` stays for static set-ups). A
/// worker of `--mode http` is added once its heartbeat carries its URL (it announces it after it listens, so it is
/// ready); it leaves the pool the moment its heartbeat says `stopping` (its calls in flight finish, see
/// `WorkerPool.remove`), or when it falls silent for `--heartbeat-timeout`, checked once a second.
final class PoolDiscovery: Service {
    let pools: [String: WorkerPool]
    let registry: WorkerRegistry
    let logger: Logger
    /// Discovered workers per pool, at most (a bound against forged heartbeats).
    static let maxMembers = 1024

    init(pools: [String: WorkerPool], registry: WorkerRegistry, logger: Logger) {
        self.pools = pools
        self.registry = registry
        self.logger = logger
    }

    /// Applies one heartbeat (called by `HeartbeatListener` right after the registry saw it).
    func heard(_ heartbeat: WorkerHeartbeat) {
        guard heartbeat.mode == "http", let pool = pools[heartbeat.pool], let url = heartbeat.url,
            let endpoint = WorkerPool.Endpoint(url: url)
        else { return }
        let metadata: Logger.Metadata = [
            "pool": "\(heartbeat.pool)", "worker_id": "\(heartbeat.workerID)", "url": "\(endpoint.url)",
        ]
        if heartbeat.stopping {
            if pool.remove(url: endpoint.url) { logger.info("worker left the sync pool: stopping", metadata: metadata) }
        } else if pool.discovered.count < Self.maxMembers, pool.add(endpoint) {
            logger.info("worker joined the sync pool", metadata: metadata)
        }
    }

    /// Removes the discovered workers that are no longer alive (silent past the heartbeat timeout).
    func reconcile() {
        let alive = registry.alive()
        for (name, pool) in pools {
            let live = Set(
                (alive[name] ?? []).compactMap { entry -> String? in
                    guard entry.heartbeat.mode == "http" else { return nil }
                    return entry.heartbeat.url.flatMap { WorkerPool.Endpoint(url: $0)?.url }
                })
            for url in pool.discovered.subtracting(live) where pool.remove(url: url) {
                logger.warning("worker left the sync pool: no heartbeat", metadata: ["pool": "\(name)", "url": "\(url)"])
            }
        }
    }

    func run() async throws {
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                self.reconcile()
                try? await Task.sleep(for: .seconds(1))
            }
        }
    }
}
