import Logging
import NeutrinoCore
import Testing

@testable import NeutrinoGateway

struct WorkerRegistryTests {
    func beat(_ id: String, pool: String = "async", busy: Int = 0, stopping: Bool = false) -> WorkerHeartbeat {
        WorkerHeartbeat(
            workerID: id, pool: pool, mode: "nats", concurrency: 2, busy: busy, gpu: false, version: "0.1.0",
            startedAt: .now(), host: "h", pid: 1, url: nil, stopping: stopping)
    }

    @Test func keepsTheLatestHeartbeatPerWorkerByPool() {
        let registry = WorkerRegistry(timeout: .seconds(60), logger: Logger(label: "test"))
        registry.apply(beat("a"))
        registry.apply(beat("a", busy: 2))
        registry.apply(beat("b"))
        registry.apply(beat("g", pool: "gpu"))
        let alive = registry.alive()
        #expect(alive["async"]?.map(\.heartbeat.workerID) == ["a", "b"])
        #expect(alive["async"]?.first?.heartbeat.busy == 2)
        #expect(alive["gpu"]?.count == 1)
    }

    @Test func aStoppingWorkerLeavesAtOnce() {
        let registry = WorkerRegistry(timeout: .seconds(60), logger: Logger(label: "test"))
        registry.apply(beat("a"))
        registry.apply(beat("a", stopping: true))
        #expect(registry.alive()["async"] == nil)
    }

    @Test func aSilentWorkerExpires() async throws {
        let registry = WorkerRegistry(timeout: .milliseconds(200), logger: Logger(label: "test"))
        registry.apply(beat("a"))
        #expect(registry.alive()["async"]?.count == 1)
        try await Task.sleep(for: .milliseconds(400))
        #expect(registry.alive()["async"] == nil)
    }
}
