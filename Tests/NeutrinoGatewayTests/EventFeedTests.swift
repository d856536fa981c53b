import Foundation
import Logging
import NeutrinoCore
import NeutrinoTaskLog
import Testing

@testable import NeutrinoGateway

/// The live feed over a real task log: events arrive in commit order, a reconnect resumes after its last id, and a
/// subscriber that reads nothing is cut off at its buffer instead of holding the feed back.
@Suite(.serialized, .timeLimit(.minutes(2)))
struct EventFeedTests {
    let logger = Logger(label: "neutrino.test.feed")

    func taskLog() throws -> (TaskLogWriter, TaskLogReader, URL) {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("neutrino-feed-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let path = dir.appendingPathComponent("tasks.db").path
        return (try TaskLogWriter(path: path), try TaskLogReader(path: path), dir)
    }

    func events(_ n: Int) -> [TaskEvent] {
        (0..<n).map { _ in TaskEvent(taskID: TaskID.make(), kind: .queued, function: "slow", pool: "async", mode: .async) }
    }

    /// Reads SSE chunks until `count` task events were seen, the stream ends, or 20 s pass.
    func collect(_ stream: EventFeed.Subscription, count: Int) async -> (ids: [Int64], ended: Bool) {
        await withTaskGroup(of: (ids: [Int64], ended: Bool)?.self) { group in
            group.addTask {
                var ids: [Int64] = []
                for await chunk in stream {
                    let text = String(decoding: chunk, as: UTF8.self)
                    if text.hasPrefix("id: "), let line = text.split(separator: "\n").first, let id = Int64(line.dropFirst(4)) { ids.append(id) }
                    if ids.count >= count { return (ids, false) }
                }
                return (ids, true)
            }
            group.addTask {
                try? await Task.sleep(for: .seconds(20))
                return nil
            }
            let first = await group.next() ?? nil
            group.cancelAll()
            return first ?? ([], false)
        }
    }

    /// Waits (bounded) until the feed's loop has read the head of the log once.
    func started(_ feed: EventFeed) async -> Bool {
        for _ in 0..<400 {
            if feed.cursor != nil { return true }
            try? await Task.sleep(for: .milliseconds(25))
        }
        return false
    }

    @Test func deliversCommittedEventsInOrderAndResumes() async throws {
        let (writer, reader, dir) = try taskLog()
        defer { try? FileManager.default.removeItem(at: dir) }
        let feed = EventFeed(reader: reader, logger: logger)
        let loop = Task { await feed.pollLoop() }
        // The feed starts at the head: events from before it started are not replayed to a fresh subscriber.
        writer.record(contentsOf: events(3))
        await writer.flush()
        #expect(await started(feed))
        while feed.cursor != 3 { try await Task.sleep(for: .milliseconds(25)) }  // bounded by the suite's time limit
        let live = try await feed.subscribe(lastEventID: nil)
        writer.record(contentsOf: events(5))
        await writer.flush()
        let first = await collect(live, count: 5)
        #expect(first.ids.count == 5)
        #expect(first.ids == first.ids.sorted())
        #expect(first.ids.first == 4)
        // A reconnect with Last-Event-ID gets what came after it.
        let resumed = try await feed.subscribe(lastEventID: 2)
        let replay = await collect(resumed, count: 6)
        #expect(replay.ids == [3, 4, 5, 6, 7, 8])
        loop.cancel()
        await loop.value
        await writer.close()
        await reader.shutdown()
    }

    @Test func aSubscriberThatDoesNotReadIsCutOff() async throws {
        let (writer, reader, dir) = try taskLog()
        defer { try? FileManager.default.removeItem(at: dir) }
        let feed = EventFeed(reader: reader, logger: logger)
        let loop = Task { await feed.pollLoop() }
        #expect(await started(feed))
        let stuck = try await feed.subscribe(lastEventID: nil)
        let reading = try await feed.subscribe(lastEventID: nil)
        #expect(feed.subscriberCount == 2)
        let total = EventFeed.bufferLimit + 500
        async let readerSaw = collect(reading, count: total)
        // In steps a reading client keeps up with (the feed polls every 100 ms); the stuck one falls behind by all.
        for _ in 0..<(total / 250) {
            writer.record(contentsOf: events(250))
            await writer.flush()
            try await Task.sleep(for: .milliseconds(150))
        }
        let saw = await readerSaw
        // The reading subscriber got everything; the stuck one was dropped after its buffer filled.
        #expect(saw.ids.count == total)
        var bounded = 0
        for await _ in stuck { bounded += 1 }
        // The opening lines, then at most a buffer's worth of events.
        #expect(bounded <= EventFeed.bufferLimit + 1)
        #expect(feed.subscriberCount <= 1)
        loop.cancel()
        await loop.value
        await writer.close()
        await reader.shutdown()
    }

    @Test func resumeDeliversAFullBacklogThenLiveEventsWithoutGapsOrDuplicates() async throws {
        let (writer, reader, dir) = try taskLog()
        defer { try? FileManager.default.removeItem(at: dir) }
        let feed = EventFeed(reader: reader, logger: logger)
        let loop = Task { await feed.pollLoop() }
        #expect(await started(feed))
        let live = try await feed.subscribe(lastEventID: nil)  // keeps the loop handing out events meanwhile
        async let liveSaw = collect(live, count: 1200)
        writer.record(contentsOf: events(EventFeed.bufferLimit))
        await writer.flush()
        // Resume from the start of the log: exactly the 1,000 missed events (the last one used to be lost to the
        // buffer slot of the opening lines), then the live ones committed while it catches up.
        let resumed = try await feed.subscribe(lastEventID: 0)
        async let resumedSaw = collect(resumed, count: 1200)
        for _ in 0..<4 {
            writer.record(contentsOf: events(50))
            await writer.flush()
        }
        let saw = await resumedSaw
        #expect(saw.ids == Array(1...1200))
        #expect(await liveSaw.ids == Array(1...1200))
        loop.cancel()
        await loop.value
        await writer.close()
        await reader.shutdown()
    }
}
