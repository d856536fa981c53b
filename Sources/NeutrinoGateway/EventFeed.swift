import Logging
import NeutrinoCore
import NeutrinoTaskLog
import Synchronization

/// The live feed behind `GET /events`: one loop reads the events committed to the task log since the last read
/// (every 100 ms, only while someone listens) and hands each live subscriber the Server-Sent Events text.
///
/// A subscriber that resumes (`Last-Event-ID`) first catches up from the table, page by page at the pace its client
/// reads (nothing is buffered for it meanwhile), and joins the live fan-out only once it has everything the loop has
/// handed out; so it receives the missed events in order, then the live ones, ids strictly increasing, with no gap
/// and no duplicate. Further behind than `backlogLimit`, it is told so (`event: gap`) and resumes `backlogLimit`
/// events before the head. Every live subscriber has a bounded buffer; one that falls behind by `bufferLimit` events
/// is cut off (its browser reconnects with `Last-Event-ID` and catches up), so a slow or stuck client never holds the
/// gateway or the other subscribers back. At most `maxSubscribers` streams are open at once.
final class EventFeed: Sendable {
    typealias Chunk = [UInt8]

    private struct Subscriber {
        let continuation: AsyncStream<Chunk>.Continuation
        /// The last event id this subscriber was given.
        var deliveredThrough: Int64
    }

    private struct State {
        var subscribers: [Int: Subscriber] = [:]
        var nextKey = 0
        /// The last event id the loop handed out (its read position in `task_events`).
        var lastID: Int64?
        /// Open streams: live subscribers and the ones still catching up.
        var open = 0
    }

    enum SubscribeError: Error, Sendable {
        /// `maxSubscribers` streams are open.
        case full(limit: Int)
        /// The task log cannot be read.
        case unavailable(String)
    }

    private let reader: TaskLogReader
    private let logger: Logger
    private let state = Mutex(State())
    let maxSubscribers: Int
    let backlogLimit: Int
    static let bufferLimit = 1000
    static let pageSize = 500
    static let pollInterval = Duration.milliseconds(100)
    static let keepAliveInterval = Duration.seconds(15)
    static let opening = Array("retry: 2000\n: connected\n\n".utf8)

    init(reader: TaskLogReader, logger: Logger, maxSubscribers: Int = 256, backlogLimit: Int = 1000) {
        self.reader = reader
        self.logger = logger
        self.maxSubscribers = max(1, maxSubscribers)
        self.backlogLimit = max(1, backlogLimit)
    }

    /// Live subscribers (not counting the ones still catching up).
    var subscriberCount: Int { state.withLock { $0.subscribers.count } }
    /// Open streams, live or catching up.
    var openCount: Int { state.withLock { $0.open } }
    /// The last event id handed out (nil until the loop, or a subscriber, has read the head once).
    var cursor: Int64? { state.withLock { $0.lastID } }

    /// A stream of SSE text for one client. With `lastEventID` (a reconnect), the events after it come first.
    func subscribe(lastEventID: Int64?) async throws(SubscribeError) -> Subscription {
        let admitted = state.withLock { s -> Bool in
            guard s.open < maxSubscribers else { return false }
            s.open += 1
            return true
        }
        guard admitted else { throw .full(limit: maxSubscribers) }
        let slot = Slot(feed: self)
        var head: Int64
        if let cursor {
            head = cursor
        } else {
            do { head = try await reader.lastEventID() } catch { throw .unavailable("\(error)") }
            head = state.withLock { s in
                if s.lastID == nil { s.lastID = head }
                return s.lastID ?? head
            }
        }
        guard let lastEventID, lastEventID >= 0 else {
            // Live from now on: registered at once, so what is committed before the client's first read is kept.
            return Subscription(feed: self, slot: slot, after: head, catchUpTo: head, notice: nil, live: goLive(after: head))
        }
        // How far behind: measured against the table itself (the loop's position may trail it by a poll).
        if let newest = try? await reader.lastEventID() { head = max(head, newest) }
        if lastEventID > head || head - lastEventID > Int64(backlogLimit) {
            let resume = lastEventID > head ? head : head - Int64(backlogLimit)
            let notice = Array("event: gap\ndata: {\"last_event_id\":\(lastEventID),\"resumes_after\":\(resume)}\n\n".utf8)
            return Subscription(feed: self, slot: slot, after: resume, catchUpTo: head, notice: notice, live: nil)
        }
        return Subscription(feed: self, slot: slot, after: lastEventID, catchUpTo: head, notice: nil, live: nil)
    }

    /// Joins the live fan-out if the subscriber has every event the loop handed out (its `after` is at or past the
    /// loop's position); nil if it must read more from the table first. Decided under the same lock as the loop's
    /// position moves, so nothing falls between the catch-up and the live events.
    fileprivate func goLive(after: Int64) -> AsyncStream<Chunk>? {
        state.withLock { s -> AsyncStream<Chunk>? in
            guard let cursor = s.lastID, after >= cursor else { return nil }
            let (stream, continuation) = AsyncStream<Chunk>.makeStream(bufferingPolicy: .bufferingOldest(Self.bufferLimit))
            s.nextKey += 1
            let key = s.nextKey
            s.subscribers[key] = Subscriber(continuation: continuation, deliveredThrough: after)
            continuation.onTermination = { [weak self] _ in
                _ = self?.state.withLock { $0.subscribers.removeValue(forKey: key) }
            }
            return stream
        }
    }

    fileprivate func page(after: Int64) async throws -> [TaskEventFeedItem] {
        try await reader.events(afterID: after, limit: Self.pageSize)
    }

    fileprivate func release() {
        state.withLock { $0.open = max(0, $0.open - 1) }
    }

    /// Gives back a subscriber's place when its stream is gone (the client left, or the stream ended).
    final class Slot: Sendable {
        let feed: EventFeed
        init(feed: EventFeed) { self.feed = feed }
        deinit { feed.release() }
    }

    /// One client's events: the opening lines, a `gap` notice if it was too far behind, the missed events read
    /// from the table at the pace the client takes them, then the live ones.
    struct Subscription: AsyncSequence, Sendable {
        typealias Element = Chunk
        let feed: EventFeed
        let slot: Slot
        let after: Int64
        /// The table's newest event when the client came: read from the table before joining the live fan-out, so
        /// the live buffer never starts with a backlog (the loop may not have handed those events out yet).
        let catchUpTo: Int64
        let notice: Chunk?
        /// Already registered for the live events (a subscriber that did not resume).
        let live: AsyncStream<Chunk>?

        func makeAsyncIterator() -> Iterator {
            var iterator = Iterator(
                feed: feed, slot: slot, after: after, catchUpTo: catchUpTo,
                pending: [EventFeed.opening] + (notice.map { [$0] } ?? []))
            iterator.live = live?.makeAsyncIterator()
            return iterator
        }

        struct Iterator: AsyncIteratorProtocol {
            typealias Failure = Never
            let feed: EventFeed
            let slot: Slot
            var after: Int64
            let catchUpTo: Int64
            var pending: [Chunk]
            var pendingIndex = 0
            var caughtUp = 0
            var live: AsyncStream<Chunk>.Iterator?
            var done = false

            init(feed: EventFeed, slot: Slot, after: Int64, catchUpTo: Int64, pending: [Chunk]) {
                self.feed = feed
                self.slot = slot
                self.after = after
                self.catchUpTo = catchUpTo
                self.pending = pending
            }

            mutating func next() async -> Chunk? {
                while true {
                    if pendingIndex < pending.count {
                        defer { pendingIndex += 1 }
                        return pending[pendingIndex]
                    }
                    if done || Task.isCancelled { return nil }
                    if live != nil { return await live?.next() }
                    if after >= catchUpTo, let stream = feed.goLive(after: after) {
                        live = stream.makeAsyncIterator()
                        continue
                    }
                    // A client that cannot catch up while events keep coming is ended; it reconnects from its last id.
                    guard caughtUp <= feed.backlogLimit + EventFeed.bufferLimit else {
                        feed.logger.notice("ending a live-feed client that cannot catch up", metadata: ["after": "\(after)"])
                        return nil
                    }
                    let items: [TaskEventFeedItem]
                    do { items = try await feed.page(after: after) } catch {
                        feed.logger.warning("event feed read failed", metadata: ["error": "\(error)"])
                        return nil
                    }
                    guard let last = items.last else {
                        // The table holds nothing past `after` though the loop (or the head seen on arrival) is further
                        // on (those ids were removed): join the live fan-out from here.
                        let from = Swift.max(after, catchUpTo)
                        after = feed.state.withLock { s -> Int64 in
                            if let c = s.lastID, c > from { return c }
                            if s.lastID == nil { s.lastID = from }
                            return from
                        }
                        continue
                    }
                    pending = items.map(EventFeed.encode)
                    pendingIndex = 0
                    caughtUp += items.count
                    after = last.id
                }
            }
        }
    }

    /// Polls the task log and fans out until cancelled.
    func pollLoop() async {
        var lastKeepAlive = ContinuousClock.now
        while !Task.isCancelled {
            try? await Task.sleep(for: Self.pollInterval)
            let (listening, cursor) = state.withLock { ($0.subscribers.isEmpty == false, $0.lastID) }
            guard let cursor else {
                if let last = try? await reader.lastEventID() { state.withLock { if $0.lastID == nil { $0.lastID = last } } }
                continue
            }
            guard listening else {
                // Nobody listens live: keep the position near the head, cheaply, so a new subscriber starts live (one
                // that resumes reads what it missed from the table). Jump only if still nobody listens: one who joined
                // meanwhile must get what was committed since.
                if let last = try? await reader.lastEventID() {
                    state.withLock { if $0.subscribers.isEmpty { $0.lastID = max($0.lastID ?? 0, last) } }
                }
                continue
            }
            do {
                var after = cursor
                while true {
                    let items = try await reader.events(afterID: after, limit: Self.pageSize)
                    guard let last = items.last else { break }
                    broadcast(items)
                    after = last.id
                    if items.count < Self.pageSize { break }
                }
            } catch {
                if Task.isCancelled { break }
                logger.warning("event feed read failed", metadata: ["error": "\(error)"])
            }
            if ContinuousClock.now - lastKeepAlive > Self.keepAliveInterval {
                lastKeepAlive = .now
                broadcastRaw(Array(": keep-alive\n\n".utf8))
            }
        }
        finishAll()
    }

    /// Ends every live stream (gateway shutdown).
    func finishAll() {
        let all = state.withLock { s -> [Subscriber] in
            defer { s.subscribers.removeAll() }
            return Array(s.subscribers.values)
        }
        for s in all { s.continuation.finish() }
    }

    /// Hands `items` (the page after the loop's position) to every live subscriber. The position moves under the
    /// same lock the subscriber list is read with: a subscriber that joins later already has these events.
    private func broadcast(_ items: [TaskEventFeedItem]) {
        guard let last = items.last else { return }
        let subscribers = state.withLock { s -> [(Int, Subscriber)] in
            s.lastID = max(s.lastID ?? 0, last.id)
            return Array(s.subscribers)
        }
        let chunks = items.map { ($0.id, Self.encode($0)) }
        for (key, subscriber) in subscribers {
            var delivered = subscriber.deliveredThrough
            var dropped = false
            for (id, chunk) in chunks where id > delivered {
                if case .dropped = subscriber.continuation.yield(chunk) {
                    dropped = true
                    break
                }
                delivered = id
            }
            if dropped {
                logger.notice("dropping a live-feed client that does not keep up", metadata: ["buffered": "\(Self.bufferLimit)"])
                _ = state.withLock { $0.subscribers.removeValue(forKey: key) }
                subscriber.continuation.finish()
            } else if delivered != subscriber.deliveredThrough {
                state.withLock { $0.subscribers[key]?.deliveredThrough = delivered }
            }
        }
    }

    private func broadcastRaw(_ chunk: Chunk) {
        for subscriber in state.withLock({ Array($0.subscribers.values) }) { subscriber.continuation.yield(chunk) }
    }

    static func encode(_ item: TaskEventFeedItem) -> Chunk {
        var w = JSONWriter(capacity: 320)
        w.beginObject()
        w.key("id"); w.int(item.id)
        w.key("task_id"); w.string(item.taskID)
        w.key("event"); w.string(item.event)
        w.key("at"); w.string(item.at)
        w.key("worker_id"); w.stringOrNull(item.workerID)
        w.key("attempt"); w.int(item.attempt)
        w.key("function"); w.stringOrNull(item.function)
        w.key("pool"); w.stringOrNull(item.pool)
        w.key("mode"); w.stringOrNull(item.mode)
        w.key("status"); w.stringOrNull(item.status)
        w.key("duration_ms"); if let d = item.durationMs { w.double(d) } else { w.null() }
        w.endObject()
        var out = Array("id: \(item.id)\nevent: task\ndata: ".utf8)
        out.append(contentsOf: w.bytes)
        out.append(contentsOf: [0x0A, 0x0A])
        return out
    }
}
