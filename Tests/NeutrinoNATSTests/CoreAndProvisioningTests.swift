import Foundation
import Logging
import NeutrinoCore
import NeutrinoNATS
import NeutrinoTestSupport
import Testing

/// Core NATS publish/subscribe (cancellation broadcasts) and the task-queue provisioning, against a real server.
@Suite(.serialized)
struct CoreAndProvisioningTests {
    @Test func aCorePublishReachesEverySubscriber() async throws {
        try await withJetStream { _, connection, _ in
            let first = try await connection.subscribe(subject: QueueLayout.cancelSubject)
            let second = try await connection.subscribe(subject: QueueLayout.cancelSubject)
            try await connection.publish(subject: QueueLayout.cancelSubject, data: Array("task-1".utf8))
            for subscription in [first, second] {
                var iterator = subscription.messages.makeAsyncIterator()
                #expect(await iterator.next() == Array("task-1".utf8))
            }
            first.close()
            second.close()
            var ended = first.messages.makeAsyncIterator()
            #expect(await ended.next() == nil)
        }
    }

    @Test func provisioningTasksStreamDeadLettersAndConsumersIsIdempotent() async throws {
        try await withJetStream { _, _, js in
            try await TaskQueueProvisioning.ensure(js, pools: ["fast": 1], ackWait: .seconds(30), logger: testLogger)
            try await TaskQueueProvisioning.ensure(js, pools: ["fast": 1, "gpu": 4], ackWait: .seconds(30), logger: testLogger)
            try await TaskQueueProvisioning.ensure(js, pools: ["fast": 1], ackWait: .seconds(30), logger: testLogger)
            let tasks = try await js.streamInfo(stream: QueueLayout.tasksStream)
            #expect(Set(tasks.subjects) == [QueueLayout.streamSubject(pool: "fast"), QueueLayout.streamSubject(pool: "gpu")])
            let gpu = try await js.consumerInfo(stream: QueueLayout.tasksStream, consumer: QueueLayout.consumer(pool: "gpu"))
            #expect(gpu.filterSubject == QueueLayout.filterSubject(pool: "gpu"))
            #expect(try await js.streamInfo(stream: QueueLayout.deadLetterStream).subjects == [QueueLayout.deadLetterSubjects])

            // A task published for one pool reaches that pool's consumer only.
            _ = try await js.publish(
                subject: QueueLayout.taskSubject(pool: "gpu", task: "render"), data: Array("{}".utf8),
                msgID: "task-gpu")
            #expect(try await js.consumerInfo(stream: QueueLayout.tasksStream, consumer: QueueLayout.consumer(pool: "fast")).backlog == 0)
            #expect(try await js.consumerInfo(stream: QueueLayout.tasksStream, consumer: QueueLayout.consumer(pool: "gpu")).backlog == 1)
        }
    }
}
