import Foundation
import Logging
import NeutrinoCore
import NeutrinoNATS
import NeutrinoTaskLog
import NeutrinoTestSupport
import Testing

@testable import NeutrinoGateway

/// The janitor against a real nats-server and a real SQLite task log: a message whose deliveries ran out (no worker
/// ever acknowledged it) gets a terminal row, a dead-letter copy, and leaves the work queue.
struct DeliveryJanitorTests {
    static let manifest = #"""
        {"openapi":"3.1.0","info":{"title":"demo","version":"1"},"x-neutrino-app":"demo",
         "paths":{"/api/report":{"post":{"x-neutrino-mode":"async","x-neutrino-pool":"async","x-neutrino-timeout":300000,"x-neutrino-retries":0}}}}
        """#

    @Test func exhaustedDeliveriesEndTheTaskFailedWorkerCrashed() async throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("janitor-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("tasks.db").path
        let writer = try TaskLogWriter(path: path, logger: testLogger)
        let reader = try TaskLogReader(path: path)
        let server = try await NATSServerProcess.start()
        defer { server.destroy() }
        let queue = try await GatewayQueue.connect(url: server.url, logger: testLogger)
        let manifest = try Manifest(json: Array(Self.manifest.utf8))
        // MaxDeliver 1, a short AckWait: one unacknowledged delivery exhausts the message.
        try await TaskQueueProvisioning.ensure(queue.js, pools: ["async": 1], ackWait: .milliseconds(500), logger: testLogger)
        let janitor = DeliveryJanitor(queue: queue, manifest: manifest, taskLog: writer, reader: reader, logger: testLogger)
        let advisories = try await queue.connection.subscribe(subject: DeliveryJanitor.advisorySubject)
        let handled = Task {
            for await data in advisories.messages {
                await janitor.handle(data)
                return true
            }
            return false
        }

        let taskID = TaskID.make()
        writer.record(TaskEvent(taskID: taskID, kind: .queued, function: "report", pool: "async", mode: .async, attempt: 0, args: "{}"))
        try await queue.publish(spec: try #require(manifest.tasks["report"]).spec, taskID: taskID, body: Array(#"{"args":{}}"#.utf8))
        let subscription = try await queue.js.pullSubscribe(stream: QueueLayout.tasksStream, consumer: QueueLayout.consumer(pool: "async"))
        // A worker takes it and dies (no ack, no outcome) ...
        let taken = try await subscription.fetch(batch: 1, timeout: .seconds(2))
        #expect(taken.count == 1)
        // ... and a later pull request makes JetStream announce the exhausted deliveries (the advisory is lazy).
        let ended = await eventually(attempts: 40) {
            _ = try? await subscription.fetch(batch: 1, timeout: .milliseconds(250))
            await writer.flush()
            return (try? await reader.record(id: taskID))??.status == .failed
        }
        #expect(ended)
        advisories.close()
        _ = await handled.value
        let record = try #require(try await reader.record(id: taskID))
        #expect(record.status == .failed)
        #expect(record.error?.contains("WorkerCrashed") == true)
        let dlq = try await queue.js.streamInfo(stream: QueueLayout.deadLetterStream)
        #expect(dlq.messages == 1)
        let tasks = try await queue.js.streamInfo(stream: QueueLayout.tasksStream)
        #expect(tasks.messages == 0)
        subscription.close()
        await writer.close()
        await reader.shutdown()
        await queue.close()
    }
}
