import Foundation
import NeutrinoCore
import NeutrinoTestSupport
import Testing

@testable import NeutrinoTaskLog

struct RecentOutcomesTests {
    let now = Timestamp(millis: 1_800_000_000_000)

    func outcome(_ pool: String = "fast", failed: Bool = false, ms: Double? = 1, secondsAgo: Double = 0) -> TaskOutcome {
        TaskOutcome(pool: pool, failed: failed, durationMs: ms, at: Timestamp(millis: now.millis - Int64(secondsAgo * 1000)))
    }

    @Test func countsAndPercentilesPerPool() {
        var window = RecentOutcomes(window: .seconds(60))
        for i in 1...100 { window.add(outcome(ms: Double(i), secondsAgo: Double(i % 50)), now: now) }
        window.add(outcome(failed: true, ms: 1_000), now: now)
        window.add(outcome("gpu", ms: 0), now: now)
        var stats: [String: PoolTaskStats] = [
            "fast": {
                var s = PoolTaskStats(); s.running = 3; return s
            }()
        ]
        window.summarize(now: now, into: &stats)
        let fast = try! #require(stats["fast"])
        #expect(fast.running == 3)  // left as it was
        #expect(fast.completed == 100)
        #expect(fast.failed == 1)
        // Nearest rank over 101 durations (1…100 and 1,000): p50 is 51, p95 is 96; each within half a bin.
        #expect(abs(fast.p50Ms! - 51) <= 51 * 0.0055)
        #expect(abs(fast.p95Ms! - 96) <= 96 * 0.0055)
        let gpu = try! #require(stats["gpu"])
        #expect(gpu.completed == 1 && gpu.p50Ms == 0 && gpu.p95Ms == 0)
    }

    @Test func theWindowMovesOn() {
        var window = RecentOutcomes(window: .seconds(60))
        window.add(outcome(ms: 5, secondsAgo: 59), now: now)
        window.add(outcome(ms: 7, secondsAgo: 10), now: now)
        window.add(outcome(ms: 9, secondsAgo: 61), now: now)  // ended before the window: ignored
        var stats: [String: PoolTaskStats] = [:]
        window.summarize(now: now, into: &stats)
        #expect(stats["fast"]?.completed == 2)
        // 30 s later the first has left the window, whether or not it was expired yet.
        let later = Timestamp(millis: now.millis + 30_000)
        stats = [:]
        window.summarize(now: later, into: &stats)
        #expect(stats["fast"]?.completed == 1)
        #expect(abs((stats["fast"]?.p50Ms ?? 0) - 7) <= 7 * 0.0055)
        window.expire(now: Timestamp(millis: now.millis + 120_000))
        stats = [:]
        window.summarize(now: Timestamp(millis: now.millis + 120_000), into: &stats)
        #expect(stats.isEmpty)
    }

    @Test func anOutcomeFromAFastClockCountsAsNowAndOddDurationsStayBounded() {
        var window = RecentOutcomes(window: .seconds(60))
        window.add(outcome(ms: .infinity, secondsAgo: -3_600), now: now)
        window.add(outcome(ms: -.infinity), now: now)
        window.add(outcome(ms: .nan), now: now)
        window.add(outcome(ms: nil), now: now)
        window.add(outcome(ms: 1e300), now: now)
        var stats: [String: PoolTaskStats] = [:]
        window.summarize(now: now, into: &stats)
        #expect(stats["fast"]?.completed == 5)
        let p95 = try! #require(stats["fast"]?.p95Ms)
        #expect(p95.isFinite && p95 <= 1e9 * 1.01)
    }

    @Test func binsAreWithinHalfAPercent() {
        for value in [0.000_001, 0.013, 0.5, 1, 1.5, 2, 3.3, 10, 123.456, 9_999, 86_400_000] {
            let shown = RecentOutcomes.value(ofBin: RecentOutcomes.bin(value))
            #expect(abs(shown - value) <= value * 0.0055, "\(value) shown as \(shown)")
        }
    }
}

struct TaskLogOutcomeReadTests {
    func terminal(_ id: String, _ kind: TaskEventKind, pool: String = "fast", ms: Double = 2, attempt: Int = 1) -> TaskEvent {
        TaskEvent(taskID: id, kind: kind, function: "echo", pool: pool, mode: .sync, workerID: "w", attempt: attempt, durationMs: ms)
    }

    @Test func newOutcomesAreReadAfterTheCursorOnce() async throws {
        let path = temporaryTaskLogPath()
        defer { try? FileManager.default.removeItem(atPath: (path as NSString).deletingLastPathComponent) }
        let writer = try TaskLogWriter(path: path)
        let reader = try TaskLogReader(path: path)
        let since = Timestamp(millis: Timestamp.now().millis - 60_000)

        let first = (0..<3).map { _ in TaskID.make() }
        for id in first {
            writer.record(contentsOf: [
                TaskEvent(taskID: id, kind: .pending, function: "echo", pool: "fast", mode: .sync),
                terminal(id, .completed),
            ])
        }
        await writer.flush()
        let seed = try await reader.outcomes(since: since)
        #expect(seed.outcomes.count == 3)
        #expect(seed.cursor == (try await reader.lastEventID()))
        #expect(try await reader.outcomes(afterEventID: seed.cursor).outcomes.isEmpty)

        // A new task that failed, one in another pool, and a second outcome of an old task (the first one stays).
        let failed = TaskID.make()
        let gpu = TaskID.make()
        writer.record(contentsOf: [
            TaskEvent(taskID: failed, kind: .pending, function: "echo", pool: "fast", mode: .sync), terminal(failed, .failed),
        ])
        writer.record(contentsOf: [terminal(gpu, .timedOut, pool: "gpu", ms: 9)])
        writer.record(terminal(first[0], .timedOut))
        await writer.flush()
        let next = try await reader.outcomes(afterEventID: seed.cursor)
        #expect(!next.more)
        #expect(next.cursor == (try await reader.lastEventID()))
        #expect(Set(next.outcomes.map(\.pool)) == ["fast", "gpu"])
        #expect(next.outcomes.count == 2)
        #expect(next.outcomes.allSatisfy { $0.failed })

        // Read in pages of one event row: every outcome once, `more` until the cursor reaches the newest row.
        var cursor = seed.cursor
        var paged: [TaskOutcome] = []
        var reads = 0
        while reads < 20 {
            let page = try await reader.outcomes(afterEventID: cursor, maxEvents: 1)
            paged += page.outcomes
            cursor = page.cursor
            reads += 1
            if !page.more { break }
        }
        #expect(paged.count == 2 && cursor == next.cursor && reads > 2)

        // A cursor past the newest row (the file was replaced by an older one) comes back lower.
        let ahead = try await reader.outcomes(afterEventID: next.cursor + 1_000)
        #expect(ahead.cursor == next.cursor && ahead.outcomes.isEmpty)

        // The whole-window read gives the same counts as the incremental one.
        let stats = try await reader.poolStats(since: since)
        #expect(stats["fast"]?.completed == 3 && stats["fast"]?.failed == 1 && stats["gpu"]?.failed == 1)
        await writer.close()
        await reader.shutdown()
    }
}
