import Foundation
import NeutrinoCore
import NeutrinoTaskLog
import NeutrinoTestSupport
import Testing

@testable import NeutrinoGateway

/// Long-poll waiters over a real task log: a worker's finished notice resumes the waiters of its task, and only
/// those; a waiter nobody notifies ends at its deadline.
@Suite(.serialized, .timeLimit(.minutes(2)))
struct TaskWaitersTests {
    @Test func aFinishedNoticeResumesItsTasksWaitersAndNoOthers() async throws {
        let path = temporaryTaskLogPath()
        defer { try? FileManager.default.removeItem(at: URL(fileURLWithPath: path).deletingLastPathComponent()) }
        let writer = try TaskLogWriter(path: path)
        let reader = try TaskLogReader(path: path, threads: 1)
        let waiters = TaskWaiters(reader: reader)
        let (finished, other) = (TaskID.make(), TaskID.make())
        let clock = ContinuousClock()
        let started = clock.now
        // Nothing is ever committed for either task: only the notice (or the deadline) can end these waits.
        async let first = waiters.waitForTerminal(id: finished, timeout: .seconds(60))
        async let second = waiters.waitForTerminal(id: finished, timeout: .seconds(60))
        async let unrelated = waiters.waitForTerminal(id: other, timeout: .seconds(2))
        for _ in 0..<500 where waiters.waitingCount < 3 { try await Task.sleep(for: .milliseconds(10)) }
        #expect(waiters.waitingCount == 3)
        waiters.taskFinished(TaskID.make())  // nobody waits for it
        waiters.taskFinished(finished)
        #expect(await first == .done)
        #expect(await second == .done)
        #expect(clock.now - started < .seconds(30), "the notice did not end the 60 s waits")
        #expect(await unrelated == .done)
        #expect(clock.now - started >= .milliseconds(1_900), "another task's notice ended this wait")
        #expect(waiters.waitingCount == 0)
        await writer.close()
        await reader.shutdown()
    }
}
