import Foundation
import Logging
import NeutrinoCore
import NeutrinoNATS
import NeutrinoTestSupport
import Synchronization
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

    @Test func aHandlerSubscriptionHearsEachNoticeOnItsOwnThreadUntilClosed() async throws {
        try await withJetStream { _, connection, _ in
            let heard = Mutex<[String]>([])
            let subscription = try await connection.subscribe(subject: QueueLayout.finishedSubjects) { data in
                heard.withLock { $0.append(String(decoding: data, as: UTF8.self)) }
            }
            var none = subscription.messages.makeAsyncIterator()
            #expect(await none.next() == nil)  // a handler's stream is empty
            try connection.publishNow(subject: QueueLayout.finishedSubject(pool: "async"), data: Array("task-1".utf8))
            try connection.publishNow(subject: QueueLayout.finishedSubject(pool: "gpu"), data: Array("task-2".utf8))
            try connection.publishNow(subject: "neutrino.control.cancel", data: Array("not-a-notice".utf8))
            for _ in 0..<500 where heard.withLock({ $0.count }) < 2 { try await Task.sleep(for: .milliseconds(10)) }
            #expect(heard.withLock { $0 } == ["task-1", "task-2"])
            subscription.close()
            // A round trip (publish + flush) after the close: nothing more reaches the closed subscription's handler.
            try await connection.publish(subject: QueueLayout.finishedSubject(pool: "async"), data: Array("task-3".utf8))
            try await Task.sleep(for: .milliseconds(50))
            #expect(heard.withLock { $0 } == ["task-1", "task-2"])
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
