import Logging
import NeutrinoCore
import ServiceLifecycle
import Synchronization

/// The elastic fast pool: sync pools learn their workers from heartbeats (`--http-pool` stays for static set-ups). A
/// worker of `--mode http` is added once its heartbeat carries its URL (it announces it after it listens, so it is
/// ready); it leaves the pool the moment its heartbeat says `stopping` (its calls in flight finish, see
/// `WorkerPool.remove`), or when it falls silent for `--heartbeat-timeout`, checked once a second.
final class PoolDiscovery: Service {
    let pools: [String: WorkerPool]
    let registry: WorkerRegistry
    let logger: Logger
    /// Discovered URL → the worker that announced it (`pool/worker id`). A worker has one URL: one that comes back
    /// on another port replaces its old one; a heartbeat without a URL (sent before it listened) removes nothing.
    private let owners = Mutex<[String: String]>([:])
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
        let key = Self.key(heartbeat)
        let metadata: Logger.Metadata = [
            "pool": "\(heartbeat.pool)", "worker_id": "\(heartbeat.workerID)", "url": "\(endpoint.url)",
        ]
        if heartbeat.stopping {
            owners.withLock { if $0[endpoint.url] == key { $0[endpoint.url] = nil } }
            if pool.remove(url: endpoint.url) { logger.info("worker left the sync pool: stopping", metadata: metadata) }
            return
        }
        let replaced = owners.withLock { o -> [String] in
            let old = o.filter { $0.value == key && $0.key != endpoint.url }.map(\.key)
            for url in old { o[url] = nil }
            if pool.discovered.contains(endpoint.url) || pool.discovered.count < Self.maxMembers { o[endpoint.url] = key }
            return old
        }
        for url in replaced where pool.remove(url: url) {
            logger.info("worker left the sync pool: it announced a new URL", metadata: metadata)
        }
        if pool.discovered.count < Self.maxMembers, pool.add(endpoint) {
            logger.info("worker joined the sync pool", metadata: metadata)
        }
    }

    /// Removes the discovered workers that are no longer alive (silent past the heartbeat timeout).
    func reconcile() {
        let alive = Set(registry.alive().values.flatMap { $0.map { Self.key($0.heartbeat) } })
        let owners = owners.withLock { $0 }
        for (name, pool) in pools {
            for url in pool.discovered where !(owners[url].map(alive.contains) ?? false) {
                guard pool.remove(url: url) else { continue }
                self.owners.withLock { if let k = $0[url], !alive.contains(k) { $0[url] = nil } }
                logger.warning("worker left the sync pool: no heartbeat", metadata: ["pool": "\(name)", "url": "\(url)"])
            }
        }
    }

    private static func key(_ heartbeat: WorkerHeartbeat) -> String { "\(heartbeat.pool)/\(heartbeat.workerID)" }

    func run() async throws {
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                self.reconcile()
                try? await Task.sleep(for: .seconds(1))
            }
        }
    }
}
