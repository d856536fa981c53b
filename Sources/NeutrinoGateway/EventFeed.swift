import Logging
import NeutrinoCore
import NeutrinoTaskLog
import Synchronization

/// The live feed behind `GET /events`: one loop reads the events committed to the task log since the last read
/// (every 100 ms, only while someone listens) and hands each subscriber the Server-Sent Events text. Every
/// subscriber has a bounded buffer; one that falls behind by `bufferLimit` events is cut off, so a slow or stuck
/// browser never holds the gateway or the other subscribers back.
final class EventFeed: Sendable {
    typealias Chunk = [UInt8]

    private struct Subscriber {
        let continuation: AsyncStream<Chunk>.Continuation
        /// Events up to this id were already sent from the backlog.
        var sentThrough: Int64
    }

    private struct State {
        var subscribers: [Int: Subscriber] = [:]
        var nextKey = 0
        var lastID: Int64?
    }

    private let reader: TaskLogReader
    private let logger: Logger
    private let state = Mutex(State())
    static let bufferLimit = 1000
    static let backlogLimit = 1000
    static let pollInterval = Duration.milliseconds(100)
    static let keepAliveInterval = Duration.seconds(15)

    init(reader: TaskLogReader, logger: Logger) {
        self.reader = reader
        self.logger = logger
    }

    var subscriberCount: Int { state.withLock { $0.subscribers.count } }
    /// The last event id handed out (nil until the loop has read the head once).
    var cursor: Int64? { state.withLock { $0.lastID } }

    /// A stream of SSE text for one client. With `lastEventID` (a reconnect), events after it are sent first
    /// (at most `backlogLimit`).
    func subscribe(lastEventID: Int64?) async -> AsyncStream<Chunk> {
        let (stream, continuation) = AsyncStream<Chunk>.makeStream(bufferingPolicy: .bufferingOldest(Self.bufferLimit))
        let key = state.withLock { s -> Int in
            s.nextKey += 1
            s.subscribers[s.nextKey] = Subscriber(continuation: continuation, sentThrough: 0)
            return s.nextKey
        }
        continuation.onTermination = { [weak self] _ in
            _ = self?.state.withLock { $0.subscribers.removeValue(forKey: key) }
        }
        continuation.yield(Array("retry: 2000\n: connected\n\n".utf8))
        if let lastEventID, let backlog = try? await reader.events(afterID: lastEventID, limit: Self.backlogLimit) {
            for item in backlog { continuation.yield(Self.encode(item)) }
            if let last = backlog.last {
                state.withLock { $0.subscribers[key]?.sentThrough = last.id }
            }
        }
        return stream
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
                // Nobody listens: keep the cursor near the head, cheaply, so a new subscriber starts live. Jump only if
                // still nobody listens: one who subscribed meanwhile must get what was committed since.
                if let last = try? await reader.lastEventID() {
                    state.withLock { if $0.subscribers.isEmpty { $0.lastID = max($0.lastID ?? 0, last) } }
                }
                continue
            }
            do {
                var after = cursor
                while true {
                    let items = try await reader.events(afterID: after, limit: 500)
                    guard let last = items.last else { break }
                    broadcast(items)
                    after = last.id
                    state.withLock { $0.lastID = last.id }
                    if items.count < 500 { break }
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

    /// Ends every stream (gateway shutdown).
    func finishAll() {
        let all = state.withLock { s -> [Subscriber] in
            defer { s.subscribers.removeAll() }
            return Array(s.subscribers.values)
        }
        for s in all { s.continuation.finish() }
    }

    private func broadcast(_ items: [TaskEventFeedItem]) {
        let subscribers = state.withLock { Array($0.subscribers) }
        let chunks = items.map { ($0.id, Self.encode($0)) }
        for (key, subscriber) in subscribers {
            for (id, chunk) in chunks where id > subscriber.sentThrough {
                if case .dropped = subscriber.continuation.yield(chunk) {
                    logger.notice("dropping a live-feed client that does not keep up", metadata: ["buffered": "\(Self.bufferLimit)"])
                    subscriber.continuation.finish()
                    _ = state.withLock { $0.subscribers.removeValue(forKey: key) }
                    break
                }
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
