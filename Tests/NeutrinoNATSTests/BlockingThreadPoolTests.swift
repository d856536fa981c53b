import Foundation
import NeutrinoTestSupport
import Synchronization
import Testing

@testable import NeutrinoNATS

struct BlockingThreadPoolTests {
    final class Counter: Sendable {
        private struct Counts { var value = 0, peak = 0, active = 0 }
        private let counts = Mutex(Counts())
        func enter() {
            counts.withLock {
                $0.active += 1; $0.peak = max($0.peak, $0.active); $0.value += 1
            }
        }
        func leave() { counts.withLock { $0.active -= 1 } }
        var total: Int { counts.withLock { $0.value } }
        var maxConcurrent: Int { counts.withLock { $0.peak } }
    }

    @Test func runsJobsOnItsThreadsAndStopsCleanly() async throws {
        let pool = try BlockingThreadPool(name: "test-pool", threads: 3)
        let counter = Counter()
        let results = try await withThrowingTaskGroup(of: Int.self) { group in
            for i in 0..<60 {
                group.addTask {
                    try await pool.run("job") {
                        counter.enter()
                        defer { counter.leave() }
                        usleep(2_000)
                        return i * 2
                    }
                }
            }
            return try await group.reduce(into: [Int]()) { $0.append($1) }
        }
        #expect(results.sorted() == (0..<60).map { $0 * 2 })
        #expect(counter.total == 60)
        #expect(counter.maxConcurrent <= 3)

        let thrown = await #expect(throws: NATSError.self) {
            try await pool.run("failing") { () throws -> Int in throw NATSError.invalidArgument("failing", "on purpose") }
        }
        #expect(thrown?.origin == .invalidArgument)

        pool.shutdown()
        let refused = await #expect(throws: NATSError.self) { try await pool.run("late") { 1 } }
        #expect(refused?.origin == .closed)
        #expect(await eventually { pool.liveThreads == 0 })
    }

    @Test func durationsConvertToTheUnitsCnatsExpects() {
        #expect(Duration.milliseconds(250).natsMilliseconds == 250)
        #expect(Duration.microseconds(1).natsMilliseconds == 1)  // rounded up: 0 would mean "default" to cnats
        #expect(Duration.zero.natsMilliseconds == 0)
        #expect(Duration.seconds(2).natsNanoseconds == 2_000_000_000)
        #expect(Duration.seconds(-1).natsNanoseconds == 0)
        #expect(Duration.seconds(Int64.max).natsMilliseconds == Int64.max)
    }
}
