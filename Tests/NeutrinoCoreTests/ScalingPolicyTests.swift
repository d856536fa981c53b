import Testing

@testable import NeutrinoCore

struct ScalingPolicyTests {
    @Test func backlogPerReplicaLikeKEDA() {
        let policy = ScalingPolicy(signal: .backlog, min: 1, max: 5, target: 10, downWindow: .seconds(30))
        #expect(policy.recommend(.init(pending: 0, inFlight: 0)).replicas == 1)
        #expect(policy.recommend(.init(pending: 24, inFlight: 1)).replicas == 3)
        #expect(policy.recommend(.init(pending: 9, inFlight: 2)).replicas == 2)
        #expect(policy.recommend(.init(pending: 1000, inFlight: 0)).replicas == 5)
        #expect(policy.recommend(.init(pending: 24, inFlight: 1)).reason.contains("backlog 25"))
    }

    @Test func gpuDefaultsScaleToZeroAndBack() {
        let policy = ScalingPolicy.defaults(for: .gpu)
        #expect(policy.scaleToZero)
        #expect(policy.recommend(.init()).replicas == 0)
        #expect(policy.recommend(.init(pending: 1)).replicas == 1)
    }

    @Test func utilisationForSyncPools() {
        let policy = ScalingPolicy(signal: .utilisation, min: 1, max: 10, target: 0.5, downWindow: .seconds(30))
        // 2 replicas × 2 threads, all 4 busy: 100 % against 50 % → 4 replicas.
        #expect(policy.recommend(.init(replicas: 2, busySlots: 4, totalSlots: 4)).replicas == 4)
        #expect(policy.recommend(.init(replicas: 2, busySlots: 1, totalSlots: 4)).replicas == 1)
        // No load reported: keep what runs.
        #expect(policy.recommend(.init(replicas: 3)).replicas == 3)
    }

    /// Calls waiting in the gateway for room are demand past 100 %: the pool grows by the line's length at once.
    @Test func callsWaitingForRoomCountAsDemand() {
        let policy = ScalingPolicy(signal: .utilisation, min: 1, max: 10, target: 0.5, downWindow: .seconds(30))
        // 2 replicas × 2 threads, all busy, 4 more waiting: 8 / 4 = 200 % against 50 % → 8 replicas.
        let (replicas, reason) = policy.recommend(.init(replicas: 2, busySlots: 4, totalSlots: 4, waiting: 4))
        #expect(replicas == 8)
        #expect(reason.contains("busy 4/4 threads + 4 calls waiting for room = 200 %"), "\(reason)")
        // A line far past the maximum is bounded, and a nonsense count does not overflow.
        #expect(policy.recommend(.init(replicas: 2, busySlots: 4, totalSlots: 4, waiting: 10_000)).replicas == 10)
        #expect(policy.recommend(.init(replicas: Int.max, busySlots: Int.max, totalSlots: 1, waiting: Int.max)).replicas == 10)
        #expect(policy.recommend(.init(replicas: 2, busySlots: 1, totalSlots: 4, waiting: -5)).replicas == 1)
    }

    @Test func parsesFlagText() throws {
        let p = try ScalingPolicy.parse("1:3:2:4", mode: .async)
        #expect(p.min == 1 && p.max == 3 && p.target == 2 && p.downWindow == .seconds(4))
        let q = try ScalingPolicy.parse("0:2", mode: .gpu)
        #expect(q.target == 1 && q.scaleToZero)
        for bad in ["", "3", "2:1", "-1:2", "1:2:0", "1:2:x", "1:2:3:4:5", "1:2:3:-1"] {
            #expect(throws: ScalingPolicyError.self) { try ScalingPolicy.parse(bad, mode: .async) }
        }
        #expect(throws: ScalingPolicyError.self) { try ScalingPolicy.parse("0:3", mode: .sync) }
        #expect(throws: ScalingPolicyError.self) { try ScalingPolicy.parse("1:3:1.5", mode: .sync) }
    }

    @Test func upAtOnceDownAfterTheWindow() {
        var r = ScalingRecommender(policy: ScalingPolicy(signal: .backlog, min: 1, max: 5, target: 10, downWindow: .seconds(10)))
        let t0: Int64 = 1_000_000
        #expect(r.observe(1, reason: "idle", now: Timestamp(millis: t0)) == 1)
        #expect(r.observe(4, reason: "burst", now: Timestamp(millis: t0 + 1000)) == 4)
        // Lower recommendations inside the window keep the peak.
        #expect(r.observe(1, reason: "idle", now: Timestamp(millis: t0 + 5000)) == 4)
        #expect(r.observe(2, reason: "some", now: Timestamp(millis: t0 + 11_500)) == 2)
        #expect(r.observe(1, reason: "idle", now: Timestamp(millis: t0 + 22_000)) == 1)
        #expect(r.decisions.map(\.to) == [4, 2, 1])
        #expect(r.decisions.map(\.from) == [1, 4, 2])
        #expect(r.decisions[0].reason == "burst")
    }

    @Test func keepsTheLastDecisionsOnly() {
        var r = ScalingRecommender(policy: ScalingPolicy(signal: .backlog, min: 0, max: 5, target: 1, downWindow: .zero))
        for i in 0..<100 { r.observe(i % 2, reason: "flip", now: Timestamp(millis: Int64(i) * 1000)) }
        #expect(r.decisions.count == ScalingRecommender.keptDecisions)
    }
}

struct WorkerHeartbeatTests {
    @Test func roundTrips() throws {
        let beat = WorkerHeartbeat(
            workerID: "async-1", pool: "async", mode: "nats", concurrency: 4, busy: 2, gpu: true,
            version: "0.1.0", startedAt: Timestamp(millis: 1_764_000_000_000), host: "h", pid: 42,
            url: "http://127.0.0.1:9000", stopping: false)
        #expect(WorkerHeartbeat(json: beat.json) == beat)
        var stopping = beat
        stopping.stopping = true
        stopping.url = nil
        #expect(WorkerHeartbeat(json: stopping.json) == stopping)
    }

    @Test(arguments: ["", "[]", "{}", #"{"worker_id":"a"}"#, #"{"worker_id":"","pool":"x"}"#, #"{"worker_id":"a","pool":"Bad Pool"}"#])
    func ignoresForeignMessages(_ text: String) {
        #expect(WorkerHeartbeat(json: Array(text.utf8)) == nil)
    }
}
