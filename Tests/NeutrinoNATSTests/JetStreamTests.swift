import Foundation
import NeutrinoNATS
import NeutrinoTestSupport
import Testing

/// Against a real nats-server (one per test, loopback, fresh store). Serialized: the redelivery tests depend on a
/// 1 s AckWait, and two cores shared by parallel servers would only make them slower.
@Suite(.serialized)
struct JetStreamTests {
    static let stream = "NEUTRINO_TASKS"
    static let durable = "pool_fast"
    static let filter = "neutrino.fast.*"

    func provision(_ js: JetStream, ackWait: Duration = .seconds(30), maxDeliver: Int = 4) async throws {
        try await js.ensureStream(
            name: Self.stream, subjects: ["neutrino.*.*"], retention: .workQueue,
            duplicateWindow: .seconds(120))
        try await js.ensureConsumer(
            stream: Self.stream, durable: Self.durable, filterSubject: Self.filter,
            ackWait: ackWait, maxDeliver: maxDeliver, maxAckPending: 100)
    }

    func publishOne(_ js: JetStream, id: String = UUID().uuidString, body: String = "{}") async throws -> PubAck {
        try await js.publish(subject: "neutrino.fast.echo", data: Array(body.utf8), msgID: id)
    }

    @Test func provisioningTwiceIsIdempotentAndAChangedMaxDeliverUpdatesTheConsumer() async throws {
        try await withJetStream { _, _, js in
            try await provision(js)
            try await provision(js)
            let info = try await js.consumerInfo(stream: Self.stream, consumer: Self.durable)
            #expect(info.maxDeliver == 4)
            #expect(info.ackWait == .seconds(30))
            #expect(info.filterSubject == Self.filter)

            try await provision(js, maxDeliver: 7)
            #expect(try await js.consumerInfo(stream: Self.stream, consumer: Self.durable).maxDeliver == 7)

            // A changed duplicate window updates the stream (10058 then UpdateStream).
            let updated = try await js.ensureStream(
                name: Self.stream, subjects: ["neutrino.*.*"], retention: .workQueue,
                duplicateWindow: .seconds(300))
            #expect(updated.duplicateWindow == .seconds(300))
            let streamInfo = try await js.streamInfo(stream: Self.stream)
            #expect(streamInfo.subjects == ["neutrino.*.*"])
            #expect(streamInfo.consumers == 1)

            // Retention can never change: the server's error code comes through.
            let error = await #expect(throws: NATSError.self) {
                try await js.ensureStream(name: Self.stream, subjects: ["neutrino.*.*"], retention: .limits)
            }
            #expect(error?.jsErrorCode == 10052)
            #expect(error?.isUnavailable == false)
        }
    }

    @Test func aRepeatedMessageIDIsADuplicateAndStoredOnce() async throws {
        try await withJetStream { _, _, js in
            try await provision(js)
            let first = try await publishOne(js, id: "task-1")
            let second = try await publishOne(js, id: "task-1")
            #expect(first.stream == Self.stream)
            #expect(!first.duplicate)
            #expect(second.duplicate)
            #expect(second.sequence == first.sequence)
            #expect(try await js.streamInfo(stream: Self.stream).messages == 1)
        }
    }

    @Test func publishFetchAckLeavesNothingPending() async throws {
        try await withJetStream { _, _, js in
            try await provision(js)
            let ack = try await js.publish(
                subject: "neutrino.fast.echo", data: Array(#"{"x":3}"#.utf8), msgID: "task-2",
                headers: ["Neutrino-Attempt": "1"])
            let sub = try await js.pullSubscribe(stream: Self.stream, consumer: Self.durable)
            let messages = try await sub.fetch(batch: 10, timeout: .seconds(5))
            try #require(messages.count == 1)
            let message = messages[0]
            #expect(message.subject == "neutrino.fast.echo")
            #expect(message.data == Array(#"{"x":3}"#.utf8))
            #expect(message.header("Nats-Msg-Id") == "task-2")
            #expect(message.header("Neutrino-Attempt") == "1")
            #expect(message.header("Missing") == nil)
            #expect(message.numDelivered == 1)
            #expect(message.streamSequence == ack.sequence)
            #expect(message.consumerSequence == 1)
            #expect(message.timestamp.millis > 1_600_000_000_000)
            try await message.ackSync()
            #expect(message.isSettled)
            try message.ack()  // already settled: nothing sent, no error
            let info = try await js.consumerInfo(stream: Self.stream, consumer: Self.durable)
            #expect(info.numPending + UInt64(info.numAckPending) == 0)
            #expect(info.backlog == 0)
            // WorkQueue: the acknowledged message is gone from the stream.
            #expect(try await eventually { try await js.streamInfo(stream: Self.stream).messages == 0 })
            sub.close()
        }
    }

    @Test func fireAndForgetAckIsApplied() async throws {
        try await withJetStream { _, _, js in
            try await provision(js)
            for _ in 0..<5 { _ = try await publishOne(js) }
            let sub = try await js.pullSubscribe(stream: Self.stream, consumer: Self.durable)
            var received = 0
            for _ in 0..<10 where received < 5 {
                let batch = try await sub.fetch(batch: 5, timeout: .seconds(2))
                for message in batch { try message.ack() }
                received += batch.count
            }
            #expect(received == 5)
            #expect(try await eventually { try await js.consumerInfo(stream: Self.stream, consumer: Self.durable).backlog == 0 })
        }
    }

    @Test func consumerInfoReflectsPendingCounts() async throws {
        try await withJetStream { _, _, js in
            try await provision(js)
            for _ in 0..<3 { _ = try await publishOne(js) }
            var info = try await js.consumerInfo(stream: Self.stream, consumer: Self.durable)
            #expect(info.numPending == 3)
            #expect(info.numAckPending == 0)
            #expect(info.backlog == 3)
            let sub = try await js.pullSubscribe(stream: Self.stream, consumer: Self.durable)
            let messages = try await sub.fetch(batch: 1, timeout: .seconds(5))
            try #require(messages.count == 1)
            info = try await js.consumerInfo(stream: Self.stream, consumer: Self.durable)
            #expect(info.numPending == 2)
            #expect(info.numAckPending == 1)
            #expect(info.backlog == 3)
            try await messages[0].ackSync()
            info = try await js.consumerInfo(stream: Self.stream, consumer: Self.durable)
            #expect(info.numPending == 2)
            #expect(info.numAckPending == 0)
            #expect(info.backlog == 2)
        }
    }

    @Test func nakWithDelayRedeliversAsTheSecondDelivery() async throws {
        try await withJetStream { _, _, js in
            try await provision(js)
            _ = try await publishOne(js, id: "task-nak")
            let sub = try await js.pullSubscribe(stream: Self.stream, consumer: Self.durable)
            let first = try await sub.fetch(batch: 1, timeout: .seconds(5))
            try #require(first.count == 1)
            #expect(first[0].numDelivered == 1)
            try first[0].nak(delay: .milliseconds(200))
            var again: [JetStreamMessage] = []
            for _ in 0..<5 where again.isEmpty { again = try await sub.fetch(batch: 1, timeout: .seconds(2)) }
            try #require(again.count == 1)
            #expect(again[0].numDelivered == 2)
            #expect(again[0].header("Nats-Msg-Id") == "task-nak")
            #expect(again[0].streamSequence == first[0].streamSequence)
            let info = try await js.consumerInfo(stream: Self.stream, consumer: Self.durable)
            #expect(info.numRedelivered == 1)
            try await again[0].ackSync()
        }
    }

    @Test func termRemovesTheMessageFromAWorkQueueStream() async throws {
        try await withJetStream { _, _, js in
            try await provision(js)
            _ = try await publishOne(js)
            #expect(try await js.streamInfo(stream: Self.stream).messages == 1)
            let sub = try await js.pullSubscribe(stream: Self.stream, consumer: Self.durable)
            let messages = try await sub.fetch(batch: 1, timeout: .seconds(5))
            try #require(messages.count == 1)
            try messages[0].term()
            try messages[0].nak()  // settled already: ignored
            #expect(try await eventually { try await js.streamInfo(stream: Self.stream).messages == 0 })
            #expect(try await sub.fetch(batch: 1, timeout: .milliseconds(300)).isEmpty)
        }
    }

    @Test func inProgressKeepsAMessageFromRedeliveryPastAckWait() async throws {
        try await withJetStream { _, _, js in
            try await provision(js, ackWait: .seconds(1))
            _ = try await publishOne(js)
            let sub = try await js.pullSubscribe(stream: Self.stream, consumer: Self.durable)
            let messages = try await sub.fetch(batch: 1, timeout: .seconds(5))
            try #require(messages.count == 1)
            // Hold it for 2.5 AckWaits, saying "in progress" every 300 ms.
            for _ in 0..<8 {
                try await Task.sleep(for: .milliseconds(300))
                try messages[0].inProgress()
            }
            #expect(try await sub.fetch(batch: 1, timeout: .milliseconds(500)).isEmpty)
            let info = try await js.consumerInfo(stream: Self.stream, consumer: Self.durable)
            #expect(info.numAckPending == 1)
            #expect(info.numRedelivered == 0)
            try await messages[0].ackSync()
        }
    }

    @Test func withoutInProgressAMessageIsRedeliveredAfterAckWait() async throws {
        try await withJetStream { _, _, js in
            try await provision(js, ackWait: .seconds(1))
            _ = try await publishOne(js)
            let sub = try await js.pullSubscribe(stream: Self.stream, consumer: Self.durable)
            let first = try await sub.fetch(batch: 1, timeout: .seconds(5))
            try #require(first.count == 1)
            var again: [JetStreamMessage] = []
            for _ in 0..<5 where again.isEmpty { again = try await sub.fetch(batch: 1, timeout: .seconds(2)) }
            try #require(again.count == 1)
            #expect(again[0].numDelivered == 2)
            try again[0].ack()
        }
    }

    @Test func fetchOnAnEmptyConsumerReturnsNothingAfterItsTimeout() async throws {
        try await withJetStream { _, _, js in
            try await provision(js)
            let sub = try await js.pullSubscribe(stream: Self.stream, consumer: Self.durable)
            let started = ContinuousClock.now
            let messages = try await sub.fetch(batch: 5, timeout: .milliseconds(300))
            #expect(messages.isEmpty)
            #expect(ContinuousClock.now - started >= .milliseconds(250))
            await #expect(throws: NATSError.self) { try await sub.fetch(batch: 0, timeout: .seconds(1)) }
        }
    }

    @Test func concurrentFetchesOnOneSubscriptionAreServedOneAfterTheOther() async throws {
        try await withJetStream { _, _, js in
            try await provision(js)
            _ = try await publishOne(js)
            let sub = try await js.pullSubscribe(stream: Self.stream, consumer: Self.durable)
            async let a = sub.fetch(batch: 1, timeout: .milliseconds(700))
            async let b = sub.fetch(batch: 1, timeout: .milliseconds(700))
            async let c = sub.fetch(batch: 1, timeout: .milliseconds(700))
            let all = try await a + b + c
            #expect(all.count == 1)
            for message in all { try message.ack() }
        }
    }

    @Test func messagesOutliveTheirSubscription() async throws {
        try await withJetStream { _, _, js in
            try await provision(js)
            _ = try await publishOne(js)
            var sub: PullSubscription? = try await js.pullSubscribe(stream: Self.stream, consumer: Self.durable)
            let messages = try await sub?.fetch(batch: 1, timeout: .seconds(5)) ?? []
            try #require(messages.count == 1)
            sub?.close()
            sub = nil
            // The natsSubscription is still alive (the message retains it): acking is safe and works.
            try await messages[0].ackSync()
            // Closing did not delete the durable.
            let info = try await js.consumerInfo(stream: Self.stream, consumer: Self.durable)
            #expect(info.backlog == 0)
            let closed = try await js.pullSubscribe(stream: Self.stream, consumer: Self.durable)
            closed.close()
            let error = await #expect(throws: NATSError.self) { try await closed.fetch(batch: 1, timeout: .seconds(1)) }
            #expect(error?.origin == .closed)
        }
    }

    @Test func closingASubscriptionEndsAFetchInProgress() async throws {
        try await withJetStream { _, _, js in
            try await provision(js)
            let sub = try await js.pullSubscribe(stream: Self.stream, consumer: Self.durable)
            let fetch = Task { try await sub.fetch(batch: 1, timeout: .seconds(20)) }
            try await Task.sleep(for: .milliseconds(300))
            let started = ContinuousClock.now
            sub.close()
            let result = await fetch.result
            #expect(ContinuousClock.now - started < .seconds(15))
            if case .success(let messages) = result { #expect(messages.isEmpty) }
        }
    }

    @Test func getAndDeleteAMessageBySequence() async throws {
        try await withJetStream { _, _, js in
            try await js.ensureStream(name: "NEUTRINO_DLQ", subjects: ["neutrino.dlq.>"], retention: .limits)
            let ack = try await js.publish(
                subject: "neutrino.dlq.fast.echo", data: [1, 2, 3], msgID: "task-dlq",
                headers: ["Neutrino-Error": "boom"])
            let stored = try await js.getMessage(stream: "NEUTRINO_DLQ", sequence: ack.sequence)
            #expect(stored.subject == "neutrino.dlq.fast.echo")
            #expect(stored.data == [1, 2, 3])
            #expect(stored.sequence == ack.sequence)
            #expect(stored.header("Neutrino-Error") == "boom")
            #expect(stored.header("Nats-Msg-Id") == "task-dlq")
            try await js.deleteMessage(stream: "NEUTRINO_DLQ", sequence: ack.sequence)
            let error = await #expect(throws: NATSError.self) {
                try await js.getMessage(stream: "NEUTRINO_DLQ", sequence: ack.sequence)
            }
            #expect(error?.isNotFound == true)
            #expect(try await js.streamInfo(stream: "NEUTRINO_DLQ").messages == 0)
        }
    }

    @Test func missingStreamsAndConsumersAreNotFound() async throws {
        try await withJetStream { _, _, js in
            let stream = await #expect(throws: NATSError.self) { try await js.streamInfo(stream: "NOPE") }
            #expect(stream?.isNotFound == true)
            #expect(stream?.jsErrorCode == 10059)
            try await provision(js)
            let consumer = await #expect(throws: NATSError.self) { try await js.consumerInfo(stream: Self.stream, consumer: "nope") }
            #expect(consumer?.isNotFound == true)
            #expect(consumer?.jsErrorCode == 10014)
            #expect(consumer?.isUnavailable == false)
            // No stream listens on this subject: nobody answers the publish.
            let orphan = await #expect(throws: NATSError.self) {
                try await js.publish(subject: "nobody.listens", data: [1], timeout: .seconds(2))
            }
            #expect(orphan?.isNoResponders == true || orphan?.isTimeout == true)
            let nul = await #expect(throws: NATSError.self) { try await js.streamInfo(stream: "A\u{0}B") }
            #expect(nul?.origin == .invalidArgument)
        }
    }

    @Test func aStoppedServerFailsPublishesAsConnectionProblemsAndARestartHealsTheSameConnection() async throws {
        try await withJetStream(publishTimeout: .seconds(1), requestTimeout: .seconds(1)) { server, connection, js in
            try await provision(js)
            _ = try await publishOne(js, id: "before")
            #expect(connection.isConnected)
            let sub = try await js.pullSubscribe(stream: Self.stream, consumer: Self.durable)

            server.stop()
            #expect(await eventually { !connection.isConnected })
            let started = ContinuousClock.now
            let error = await #expect(throws: NATSError.self) { try await publishOne(js, id: "during") }
            #expect(ContinuousClock.now - started < .seconds(10))
            #expect(error?.isConnectionProblem == true)
            #expect(error?.isUnavailable == true)
            let infoError = await #expect(throws: NATSError.self) { try await js.streamInfo(stream: Self.stream) }
            #expect(infoError?.isUnavailable == true)

            try await server.restart()
            #expect(await connection.waitUntilConnected(timeout: .seconds(15)))
            var ack: PubAck?
            for _ in 0..<20 where ack == nil { ack = try? await publishOne(js, id: "after") }
            #expect(ack?.duplicate == false)
            // The store survived the restart; "during" may have been stored from cnats's reconnect buffer.
            let messages = try await js.streamInfo(stream: Self.stream).messages
            #expect(messages == 2 || messages == 3)
            // The subscription made before the outage fetches again, without resubscribing.
            var fetched: [JetStreamMessage] = []
            for _ in 0..<10 where fetched.count < Int(messages) {
                fetched += try await sub.fetch(batch: 10, timeout: .seconds(1))
            }
            #expect(fetched.count == Int(messages))
            for message in fetched { try await message.ackSync() }
        }
    }

    @Test func closingTheConnectionFailsAPublishWaitingForItsAck() async throws {
        try await withJetStream(publishTimeout: .seconds(30)) { server, connection, js in
            try await provision(js)
            server.stop()
            #expect(await eventually { !connection.isConnected })
            let publish = Task { try await publishOne(js, id: "stuck") }
            try await Task.sleep(for: .milliseconds(300))
            let started = ContinuousClock.now
            await connection.close()
            let result = await publish.result
            #expect(ContinuousClock.now - started < .seconds(10))
            guard case .failure(let error) = result else { Issue.record("the publish succeeded"); return }
            #expect((error as? NATSError)?.isConnectionProblem == true)
            #expect(!connection.isConnected)
            #expect(connection.isClosed)
            await #expect(throws: NATSError.self) { try await js.streamInfo(stream: Self.stream) }
        }
    }

    @Test func connectingWhileTheServerIsDownRetriesInTheBackground() async throws {
        let server = try NATSServerProcess.notStarted()
        defer { server.destroy() }
        var options = NATSConnection.Options()
        options.firstConnectionWait = .milliseconds(300)
        let connection = try await NATSConnection.connect(
            url: server.url, name: "neutrino-test", logger: testLogger,
            options: options)
        #expect(!connection.isConnected)
        let js = try connection.jetStream(requestTimeout: .seconds(1), publishTimeout: .seconds(1))
        let error = await #expect(throws: NATSError.self) { try await js.streamInfo(stream: Self.stream) }
        #expect(error?.isConnectionProblem == true)
        try await server.restart()
        #expect(await connection.waitUntilConnected(timeout: .seconds(15)))
        try await provision(js)
        #expect(try await publishOne(js).sequence == 1)
        await connection.close()
        #expect(connection.isClosed)
        let closed = await #expect(throws: NATSError.self) { try await publishOne(js) }
        #expect(closed?.isConnectionProblem == true)
    }

    @Test func aMalformedURLIsRefused() async throws {
        await #expect(throws: NATSError.self) {
            _ = try await NATSConnection.connect(url: "nats://127.0.0.1:notaport", name: "bad", logger: testLogger)
        }
    }
}
