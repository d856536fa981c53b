import Logging
import NeutrinoCore
import Testing

@testable import NeutrinoGateway

struct PoolDiscoveryTests {
    let logger = Logger(label: "test")

    func beat(_ id: String, url: String?, pool: String = "fast", mode: String = "http", stopping: Bool = false) -> WorkerHeartbeat {
        WorkerHeartbeat(
            workerID: id, pool: pool, mode: mode, concurrency: 2, busy: 0, gpu: false, version: "0.1.0",
            startedAt: .now(), host: "h", pid: 1, url: url, stopping: stopping)
    }

    func setUp(static urls: [String] = [], timeout: Duration = .seconds(60)) -> (WorkerPool, WorkerRegistry, PoolDiscovery) {
        let pool = WorkerPool(name: "fast", endpoints: urls.compactMap { WorkerPool.Endpoint(url: $0) }, logger: logger)
        let registry = WorkerRegistry(timeout: timeout, logger: logger)
        return (pool, registry, PoolDiscovery(pools: ["fast": pool], registry: registry, logger: logger))
    }

    func hear(_ discovery: PoolDiscovery, _ registry: WorkerRegistry, _ heartbeat: WorkerHeartbeat) {
        registry.apply(heartbeat)
        discovery.heard(heartbeat)
    }

    @Test func aWorkerJoinsWhenItAnnouncesItsURLAndLeavesWhenStopping() {
        let (pool, registry, discovery) = setUp()
        hear(discovery, registry, beat("a", url: nil))  // not listening yet: not ready
        #expect(pool.endpoints.isEmpty)
        hear(discovery, registry, beat("a", url: "http://127.0.0.1:9001"))
        hear(discovery, registry, beat("b", url: "http://127.0.0.1:9002/"))
        hear(discovery, registry, beat("a", url: "http://127.0.0.1:9001"))  // again: still one member
        #expect(pool.endpoints.map(\.url) == ["http://127.0.0.1:9001", "http://127.0.0.1:9002"])
        hear(discovery, registry, beat("a", url: "http://127.0.0.1:9001", stopping: true))
        #expect(pool.endpoints.map(\.url) == ["http://127.0.0.1:9002"])
        #expect(pool.order(now: .now()).map(\.endpoint.url) == ["http://127.0.0.1:9002"])
    }

    @Test func otherPoolsModesAndBadURLsAreIgnored() {
        let (pool, registry, discovery) = setUp()
        hear(discovery, registry, beat("n", url: "http://127.0.0.1:9001", mode: "nats"))
        hear(discovery, registry, beat("o", url: "http://127.0.0.1:9002", pool: "other"))
        hear(discovery, registry, beat("x", url: "ftp://127.0.0.1:9003"))
        hear(discovery, registry, beat("y", url: "http://127.0.0.1:0"))
        #expect(pool.endpoints.isEmpty)
    }

    @Test func staticMembersStayAndAreNotDoubled() {
        let (pool, registry, discovery) = setUp(static: ["http://127.0.0.1:9001"])
        hear(discovery, registry, beat("a", url: "http://127.0.0.1:9001"))
        #expect(pool.endpoints.count == 1)
        hear(discovery, registry, beat("a", url: "http://127.0.0.1:9001", stopping: true))
        #expect(pool.endpoints.map(\.url) == ["http://127.0.0.1:9001"])
        #expect(pool.hasStaticMembers)
    }

    @Test func aSilentWorkerIsRemovedByTheSweep() async throws {
        let (pool, registry, discovery) = setUp(timeout: .milliseconds(200))
        hear(discovery, registry, beat("a", url: "http://127.0.0.1:9001"))
        discovery.reconcile()
        #expect(pool.endpoints.count == 1)
        try await Task.sleep(for: .milliseconds(400))
        discovery.reconcile()
        #expect(pool.endpoints.isEmpty)
        #expect(!pool.hasStaticMembers)
    }
}

extension PoolDiscoveryTests {
    @Test func aBeatWithoutURLRemovesNothingAndANewURLReplacesTheOld() {
        let (pool, registry, discovery) = setUp()
        hear(discovery, registry, beat("a", url: "http://127.0.0.1:9001"))
        hear(discovery, registry, beat("a", url: nil))  // a late beat from before it listened
        discovery.reconcile()
        #expect(pool.endpoints.map(\.url) == ["http://127.0.0.1:9001"])
        // Restarted on another port under the same id: one member, the new URL.
        hear(discovery, registry, beat("a", url: "http://127.0.0.1:9005"))
        discovery.reconcile()
        #expect(pool.endpoints.map(\.url) == ["http://127.0.0.1:9005"])
    }
}
