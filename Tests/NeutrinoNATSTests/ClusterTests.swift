import Foundation
import NeutrinoCore
import NeutrinoNATS
import NeutrinoTestSupport
import Testing

/// Replicated streams on a real 3-node JetStream cluster on loopback (nats-server 2.9): the replica count as
/// configuration, reconciling an existing stream, the error a single server gives, failover of publishes.
@Suite(.serialized)
struct ClusterTests {
    @Test func neutrinosStreamsAreCreatedAtR3AndTheirConsumersFollow() async throws {
        try await withJetStreamCluster { _, _, js in
            try await TaskQueueProvisioning.ensure(js, pools: ["async": 4, "gpu": 1], ackWait: .seconds(30), logger: testLogger)
            for stream in [QueueLayout.tasksStream, QueueLayout.deadLetterStream, QueueLayout.settledStream] {
                let info = try await js.streamInfo(stream: stream)
                #expect(info.replicas == 3, "\(stream)")
                #expect(info.cluster?.leader.isEmpty == false, "\(stream) has a leader")
                #expect(info.cluster?.replicas.count == 2, "\(stream): the leader and two followers")
            }
            let consumer = try await js.consumerInfo(stream: QueueLayout.tasksStream, consumer: QueueLayout.consumer(pool: "async"))
            #expect(consumer.cluster?.leader.isEmpty == false)
            #expect(consumer.cluster?.replicas.count == 2, "the pool consumer's state is kept on all three nodes")
        }
    }

    @Test func anExplicitCountReconcilesAnExistingStreamAndTheDefaultLeavesItAlone() async throws {
        try await withJetStreamCluster(replication: .init(replicas: 1, reconcile: true)) { _, _, js in
            try await TaskQueueProvisioning.ensure(js, pools: ["async": 2], ackWait: .seconds(30), logger: testLogger)
            #expect(try await js.streamInfo(stream: QueueLayout.tasksStream).replicas == 1)
            _ = try await js.publish(subject: QueueLayout.taskSubject(pool: "async", task: "t"), data: Array("{}".utf8), msgID: "kept")

            // The default for three servers (R3 for new streams) does not touch an existing stream.
            let guessed = StreamReplication.forServers(3)
            #expect(guessed == StreamReplication(replicas: 3, reconcile: false))
            try await js.ensureStream(
                name: QueueLayout.tasksStream, subjects: [QueueLayout.streamSubject(pool: "async")],
                retention: .workQueue, replication: guessed)
            #expect(try await js.streamInfo(stream: QueueLayout.tasksStream).replicas == 1)

            // --stream-replicas 3 scales it up (a stream update), keeping what it holds; the consumer follows.
            let scaled = try await js.ensureStream(
                name: QueueLayout.tasksStream, subjects: [QueueLayout.streamSubject(pool: "async")],
                retention: .workQueue, replication: .init(replicas: 3, reconcile: true))
            #expect(scaled.replicas == 3)
            #expect(scaled.messages == 1)
            // (While the consumer's new Raft group elects its leader, info requests may time out: not yet.)
            let followed = await eventually(attempts: 400) {
                let info = try? await js.consumerInfo(stream: QueueLayout.tasksStream, consumer: QueueLayout.consumer(pool: "async"))
                return info?.cluster?.replicas.count == 2
            }
            #expect(followed, "the pool consumer is replicated with its stream")
            // And back down to 1 when asked.
            let down = try await js.ensureStream(
                name: QueueLayout.tasksStream, subjects: [QueueLayout.streamSubject(pool: "async")],
                retention: .workQueue, replication: .init(replicas: 1, reconcile: true))
            #expect(down.replicas == 1)
            #expect(down.messages == 1)
        }
    }

    @Test func moreReplicasThanServersIsRefusedWithAClearError() async throws {
        try await withJetStream { _, _, js in
            let error = await #expect(throws: NATSError.self) {
                try await js.ensureStream(
                    name: "R3_ON_ONE", subjects: ["r3.one"], retention: .limits,
                    replication: .init(replicas: 3, reconcile: true))
            }
            #expect(error?.description.contains("--stream-replicas") == true, "\(String(describing: error))")
            #expect(error?.isUnavailable == false)
            // An existing R1 stream cannot be scaled up on a single server either: the update is refused, explained.
            try await js.ensureStream(name: "R1_ON_ONE", subjects: ["r1.one"], retention: .limits)
            let update = await #expect(throws: NATSError.self) {
                try await js.ensureStream(
                    name: "R1_ON_ONE", subjects: ["r1.one"], retention: .limits,
                    replication: .init(replicas: 3, reconcile: true))
            }
            #expect(update?.description.contains("from 1 to 3 replicas") == true, "\(String(describing: update))")
        }
        try await withJetStreamCluster { _, _, js in
            let error = await #expect(throws: NATSError.self) {
                try await js.ensureStream(
                    name: "R5_ON_THREE", subjects: ["r5.three"], retention: .limits,
                    replication: .init(replicas: 5, reconcile: true))
            }
            #expect(error?.description.contains("--stream-replicas") == true, "\(String(describing: error))")
        }
    }

    @Test func publishesFailOverWhenTheStreamLeaderIsKilled() async throws {
        try await withJetStreamCluster(publishTimeout: .seconds(2)) { cluster, connection, js in
            try await TaskQueueProvisioning.ensure(js, pools: ["async": 2], ackWait: .seconds(30), logger: testLogger)
            let subject = QueueLayout.taskSubject(pool: "async", task: "t")
            var acked = Set<String>()
            for i in 0..<20 {
                _ = try await js.publish(subject: subject, data: Array("{}".utf8), msgID: "before-\(i)")
                acked.insert("before-\(i)")
            }
            let leader = try #require(try await js.streamInfo(stream: QueueLayout.tasksStream).cluster?.leader)
            let victim = try #require(cluster.index(of: leader))
            cluster.kill(victim)

            // Keep publishing (retrying each id, as the gateway's caller would after a 503) until a new leader
            // takes them; every id is stored once.
            let started = ContinuousClock.now
            var longest: Duration = .zero
            for i in 0..<20 {
                let id = "after-\(i)"
                let t0 = ContinuousClock.now
                while true {
                    do {
                        _ = try await js.publish(subject: subject, data: Array("{}".utf8), msgID: id)
                        break
                    } catch let error as NATSError where error.isUnavailable {
                        #expect(ContinuousClock.now - started < .seconds(60), "no new leader after a minute: \(error)")
                        if ContinuousClock.now - started >= .seconds(60) { return }
                        try await Task.sleep(for: .milliseconds(100))
                    }
                }
                longest = max(longest, ContinuousClock.now - t0)
                acked.insert(id)
            }
            let info = try await js.streamInfo(stream: QueueLayout.tasksStream)
            #expect(info.cluster?.leader.isEmpty == false && info.cluster?.leader != leader)
            #expect(info.messages == UInt64(acked.count), "every acknowledged publish is stored, once")
            #expect(connection.isConnected)

            // The killed node comes back and catches up.
            try await cluster.restart(victim)
            let caughtUp = await eventually(attempts: 600) {
                let peers = (try? await js.streamInfo(stream: QueueLayout.tasksStream))?.cluster?.replicas ?? []
                return peers.count == 2 && peers.allSatisfy { $0.current && !$0.offline }
            }
            #expect(caughtUp, "the restarted node is a current replica again")
            print("cluster failover: longest publish stall \(longest)")
        }
    }
}
