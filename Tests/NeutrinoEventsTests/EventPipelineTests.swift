import NeutrinoCore
import NeutrinoNATS
import NeutrinoTaskLog
import Testing

@testable import NeutrinoEvents

/// Publisher → NEUTRINO_EVENTS → consumer → a real task log, against a real nats-server (one per test).
/// Serialized: each test runs its own server, and two shared cores make parallel ones only slower.
@Suite(.serialized)
struct EventPipelineTests {
    func consumerOptions(batch: Int = 500, ackWait: Duration = .seconds(30), crashAfter: Int? = nil) -> EventStreamConsumer.Options {
        var options = EventStreamConsumer.Options()
        options.batch = batch
        options.ackWait = ackWait
        options.fetchTimeout = .milliseconds(100)
        options.retryDelay = .milliseconds(100)
        options.crashAfterCommittingBatch = crashAfter
        return options
    }

    func publisherOptions() -> NATSEventPublisher.Options {
        var options = NATSEventPublisher.Options()
        options.publishTimeout = .seconds(1)
        options.minBackoff = .milliseconds(50)
        options.maxBackoff = .milliseconds(400)
        return options
    }

    @Test func everyEventArrivesOnceAsRowsAndRepublishesAreDeduplicated() async throws {
        try await withJetStream { _, _, js in
            let (writer, reader) = try freshTaskLog()
            let publisher = NATSEventPublisher(jetStream: js, origin: .worker("w1"), logger: testLogger, options: publisherOptions())
            let ids = (0..<60).map { _ in TaskID.make() }
            for id in ids { publisher.record(contentsOf: lifecycle(id)) }
            // A worker that republishes its outcome (a retry after a lost ack): same message ids.
            for id in ids.prefix(15) { publisher.record(lifecycle(id)[3]) }
            #expect(await publisher.flush(timeout: .seconds(30)))
            #expect(publisher.pending == 0)
            #expect(publisher.published == UInt64(ids.count * 4 + 15))
            #expect(publisher.duplicates == 15)
            #expect(publisher.dropped == 0)
            #expect(try await js.streamInfo(stream: EventStreamLayout.stream).messages == UInt64(ids.count * 4))

            let consumer = EventStreamConsumer(
                jetStream: js, id: "gw", sink: writer, logger: testLogger,
                options: consumerOptions())
            consumer.start()
            #expect(await eventually { consumer.eventsApplied >= UInt64(ids.count * 4) })
            #expect(await eventually { (try? await consumer.lag()) == 0 })
            await consumer.stop()
            #expect(consumer.eventsApplied == UInt64(ids.count * 4))
            #expect(consumer.batches >= 1)
            #expect(consumer.undecodable == 0)
            #expect(try await expectLifecycleRows(ids, reader: reader) == [])
            #expect(try await reader.record(id: ids[0])?.progress == 1)

            await publisher.close()
            await writer.close()
            await reader.shutdown()
        }
    }

    /// A sync call's outcome is recorded by the gateway that relayed it and, with what the task printed, by the worker
    /// that ran it. Whichever reaches the stream first, both are kept and the row holds the output (CI once lost it
    /// when the gateway's copy arrived first and the worker's was stored as its duplicate).
    @Test func theSameOutcomeFromGatewayAndWorkerIsKeptFromBoth() async throws {
        try await withJetStream { _, _, js in
            let (writer, reader) = try freshTaskLog()
            let gateway = NATSEventPublisher(jetStream: js, origin: .gateway("gw"), logger: testLogger, options: publisherOptions())
            let worker = NATSEventPublisher(jetStream: js, origin: .worker("w1"), logger: testLogger, options: publisherOptions())
            let id = TaskID.make()
            let events = lifecycle(id)
            gateway.record(contentsOf: [events[0], events[1], events[3]])
            #expect(await gateway.flush(timeout: .seconds(30)))
            var printed = events[3]
            printed.output = "line 0\nline 1\n"
            worker.record(printed)
            // The worker's own republish (a PubAck that timed out) is still a duplicate.
            worker.record(printed)
            #expect(await worker.flush(timeout: .seconds(30)))
            #expect(gateway.duplicates == 0)
            #expect(worker.duplicates == 1)
            #expect(try await js.streamInfo(stream: EventStreamLayout.stream).messages == 4)

            let consumer = EventStreamConsumer(
                jetStream: js, id: "gw", sink: writer, logger: testLogger, options: consumerOptions())
            consumer.start()
            #expect(await eventually { (try? await reader.record(id: id))?.output == "line 0\nline 1\n" })
            await consumer.stop()
            let (record, stored) = try #require(try await reader.recordWithEvents(id: id))
            #expect(record.status == .completed)
            #expect(record.result == #"{"v": [0.1,0.2]}"#)
            #expect(stored.map(\.event).sorted() == ["completed", "pending", "running"])

            await gateway.close()
            await worker.close()
            await writer.close()
            await reader.shutdown()
        }
    }

    @Test func aResultTooLargeForNATSBecomesAFailureNotALostEvent() async throws {
        try await withJetStream { _, _, js in
            let (writer, reader) = try freshTaskLog()
            var options = publisherOptions()
            options.maxValueBytes = 1000
            let publisher = NATSEventPublisher(jetStream: js, origin: .worker("w1"), logger: testLogger, options: options)
            let id = TaskID.make()
            var events = lifecycle(id)
            events[3].result = "\"" + String(repeating: "x", count: 5000) + "\""
            publisher.record(contentsOf: events)
            #expect(await publisher.flush(timeout: .seconds(30)))
            #expect(publisher.dropped == 0)
            let consumer = EventStreamConsumer(jetStream: js, id: "gw", sink: writer, logger: testLogger, options: consumerOptions())
            consumer.start()
            #expect(await eventually { consumer.eventsApplied >= UInt64(events.count) })
            await consumer.stop()
            let record = try #require(try await reader.record(id: id))
            #expect(record.status == .failed)
            #expect(record.error?.contains("ResultTooLarge") == true)
            await publisher.close()
            await writer.close()
            await reader.shutdown()
        }
    }

    @Test func aConsumerRestartedBetweenCommitAndAckReplaysWithoutDuplicates() async throws {
        try await withJetStream { _, _, js in
            let (writer, reader) = try freshTaskLog()
            let publisher = NATSEventPublisher(jetStream: js, origin: .worker("w1"), logger: testLogger, options: publisherOptions())
            let ids = (0..<10).map { _ in TaskID.make() }
            for id in ids { publisher.record(contentsOf: lifecycle(id)) }
            #expect(await publisher.flush(timeout: .seconds(30)))

            // The first gateway commits two batches of 5 and dies before acknowledging the second.
            let first = EventStreamConsumer(
                jetStream: js, id: "gw", sink: writer, logger: testLogger,
                options: consumerOptions(batch: 5, ackWait: .seconds(2), crashAfter: 2))
            first.start()
            #expect(await eventually { first.batches == 2 && !first.isSubscribed })
            await first.stop()
            #expect(first.eventsApplied == 10)
            #expect(
                await eventually {
                    (try? await js.consumerInfo(stream: EventStreamLayout.stream, consumer: first.durableName).numAckPending) == 5
                })

            // A new consumer object on the same durable: the 30 never delivered at once, the 5 unacknowledged after
            // AckWait. The task log already has those 5 and adds nothing.
            let second = EventStreamConsumer(
                jetStream: js, id: "gw", sink: writer, logger: testLogger,
                options: consumerOptions(ackWait: .seconds(2)))
            second.start()
            #expect(await eventually(attempts: 300) { second.eventsApplied >= 35 })
            #expect(await eventually { (try? await second.lag()) == 0 })
            await second.stop()
            #expect(second.eventsApplied == 35)
            #expect(try await expectLifecycleRows(ids, reader: reader) == [])

            await publisher.close()
            await writer.close()
            await reader.shutdown()
        }
    }

    @Test func eventsRecordedWhileTheServerIsDownArriveAfterItRestarts() async throws {
        try await withJetStream(publishTimeout: .seconds(1)) { server, connection, js in
            let (writer, reader) = try freshTaskLog()
            let publisher = NATSEventPublisher(jetStream: js, origin: .worker("w1"), logger: testLogger, options: publisherOptions())
            let before = (0..<5).map { _ in TaskID.make() }
            for id in before { publisher.record(contentsOf: lifecycle(id)) }
            #expect(await publisher.flush(timeout: .seconds(30)))

            server.stop()
            #expect(await eventually { !connection.isConnected })
            let during = (0..<5).map { _ in TaskID.make() }
            for id in during { publisher.record(contentsOf: lifecycle(id)) }
            #expect(await publisher.flush(timeout: .milliseconds(1500)) == false)
            #expect(publisher.pending == 20)

            try await server.restart()
            #expect(await connection.waitUntilConnected(timeout: .seconds(15)))
            #expect(await publisher.flush(timeout: .seconds(30)))
            #expect(publisher.pending == 0)
            #expect(publisher.dropped == 0)
            // Retried publishes (and any cnats replayed from its reconnect buffer) were deduplicated; progress events
            // carry no id, so at most those could repeat.
            let stored = try await js.streamInfo(stream: EventStreamLayout.stream).messages
            #expect(stored >= 40 && stored <= 45)

            let consumer = EventStreamConsumer(
                jetStream: js, id: "gw", sink: writer, logger: testLogger,
                options: consumerOptions())
            consumer.start()
            #expect(await eventually { consumer.eventsApplied >= stored })
            #expect(await eventually { (try? await consumer.lag()) == 0 })
            await consumer.stop()
            #expect(try await expectLifecycleRows(before + during, reader: reader) == [])

            await publisher.close()
            await writer.close()
            await reader.shutdown()
        }
    }

    @Test func undecodableMessagesAreTerminatedAndTheRestApplied() async throws {
        try await withJetStream { _, _, js in
            let (writer, reader) = try freshTaskLog()
            try await EventStreamProvisioning.ensureStream(js)
            _ = try await js.publish(subject: "neutrino.events.gpu", data: Array("not an event".utf8))
            let id = TaskID.make()
            for event in lifecycle(id) {
                _ = try await js.publish(
                    subject: EventStreamLayout.subject(pool: event.pool), data: EventCodec.encode(event),
                    msgID: EventStreamLayout.messageID(for: event, origin: .worker("w1")))
            }
            _ = try await js.publish(subject: "neutrino.events.gpu", data: Array(#"{"task_id":"x"}"#.utf8))

            let consumer = EventStreamConsumer(
                jetStream: js, id: "gw", sink: writer, logger: testLogger,
                options: consumerOptions())
            consumer.start()
            #expect(await eventually { consumer.eventsApplied >= 4 && consumer.undecodable >= 2 })
            #expect(await eventually { (try? await consumer.lag()) == 0 })
            await consumer.stop()
            #expect(consumer.eventsApplied == 4)
            #expect(consumer.undecodable == 2)
            #expect(try await expectLifecycleRows([id], reader: reader) == [])
            // Provisioning twice is idempotent.
            let info = try await EventStreamProvisioning.ensure(js, consumerID: "gw", logger: testLogger)
            #expect(info.name == "events_gw")
            #expect(info.filterSubject == "neutrino.events.>")
            let stream = try await js.streamInfo(stream: EventStreamLayout.stream)
            #expect(stream.subjects == ["neutrino.events.>"])
            #expect(stream.duplicateWindow == .seconds(120))

            await writer.close()
            await reader.shutdown()
        }
    }

    @Test func withoutAServerThePublisherKeepsABoundedQueueAndClosesInBoundedTime() async throws {
        let server = try NATSServerProcess.notStarted()
        defer { server.destroy() }
        var connectOptions = NATSConnection.Options()
        connectOptions.firstConnectionWait = .milliseconds(100)
        let connection = try await NATSConnection.connect(
            url: server.url, name: "neutrino-events-test", logger: testLogger,
            options: connectOptions)
        let js = try connection.jetStream(requestTimeout: .milliseconds(300), publishTimeout: .milliseconds(300))
        var options = publisherOptions()
        options.capacity = 10
        options.publishTimeout = .milliseconds(300)
        options.closeTimeout = .milliseconds(300)
        let publisher = NATSEventPublisher(jetStream: js, origin: .worker("w1"), logger: testLogger, options: options)
        let started = ContinuousClock.now
        for i in 0..<15 { publisher.record(lifecycle("t\(i)")[1]) }
        #expect(ContinuousClock.now - started < .milliseconds(200))
        #expect(publisher.pending == 10)
        #expect(publisher.dropped == 5)
        #expect(await publisher.flush(timeout: .milliseconds(200)) == false)
        let closing = ContinuousClock.now
        await publisher.close()
        #expect(ContinuousClock.now - closing < .seconds(5))
        publisher.record(lifecycle("late")[1])
        #expect(publisher.dropped == 6)
        await connection.close()
    }
}
