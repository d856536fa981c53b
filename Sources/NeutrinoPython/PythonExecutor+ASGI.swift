import CPython
import Glibc
import NeutrinoCore
import NeutrinoThreads

/// One header of an ASGI response, as the app sent it (bytes).
public struct ASGIHeader: Sendable {
    public var name: [UInt8]
    public var value: [UInt8]
}

/// What the mounted ASGI app sends for one request, in order: a head, body chunks (the last with `more` false), then
/// the end of its coroutine (with the traceback when it raised). `rejected`: it never ran (no slot, stopping).
public enum ASGIEvent: Sendable {
    case head(status: Int, headers: [ASGIHeader], route: String)
    case body([UInt8], more: Bool)
    case end(error: String?)
    case rejected(String)
}

/// One HTTP request served by the mounted ASGI app on the worker's event loop (`neutrino._asgi`).
///
/// The loop thread delivers what the app sends (`deliver`, GIL held, never blocking); the HTTP handler takes it with
/// `next()`. Unsent body bytes are bounded: past `highWater` the app's `send` waits (the bridge answers "paused")
/// until the handler has written enough to the client to fall under `lowWater`, then the loop is told to resume.
/// `disconnect()` (the client went away, or the handler stopped reading) tells the app: `http.disconnect` from
/// `receive`, and `send` raises.
public final class ASGIExchange: @unchecked Sendable {
    // Every mutable field is read and written under the executor's lock.
    static let highWater = 1 << 20
    static let lowWater = 256 << 10

    let executor: PythonExecutor
    /// The request's fields for `neutrino._asgi` (see `ASGIRequestHead`), and its whole body.
    let head: [UInt8]
    let body: [UInt8]
    var id: UInt64 = 0
    private var events: [ASGIEvent] = []
    private var waiter: CheckedContinuation<ASGIEvent?, Never>?
    private var buffered = 0
    private var producerPaused = false
    /// No event comes after the queued ones.
    private var finished = false
    private var disconnected = false
    private var abandonedFlag = false

    init(executor: PythonExecutor, head: [UInt8], body: [UInt8]) {
        self.executor = executor
        self.head = head
        self.body = body
    }

    /// Queues an event (executor lock held). True when the app should wait before sending more.
    @discardableResult
    func deliver(_ event: ASGIEvent, final: Bool = false) -> Bool {
        if finished { return false }
        if final { finished = true }
        if case .body(let bytes, _) = event { buffered += bytes.count }
        if let waiter {
            self.waiter = nil
            waiter.resume(returning: event)
            if case .body(let bytes, _) = event { buffered -= bytes.count }
        } else {
            events.append(event)
        }
        if buffered > Self.highWater && !disconnected {
            producerPaused = true
            return true
        }
        return false
    }

    /// The next event; nil after the last one.
    public func next() async -> ASGIEvent? {
        await withCheckedContinuation { continuation in
            var wake = false
            executor.lock.lock()
            if !events.isEmpty {
                let event = events.removeFirst()
                if case .body(let bytes, _) = event { buffered -= bytes.count }
                // The app waits for RESUME once past the high-water mark: tell it when the client has taken enough.
                if producerPaused && buffered <= Self.lowWater {
                    producerPaused = false
                    wake = executor.queueForLoop(.asgiResume(id))
                }
                executor.lock.unlock()
                if wake { executor.wakeTheLoop() }
                continuation.resume(returning: event)
                return
            }
            if finished {
                executor.lock.unlock()
                continuation.resume(returning: nil)
                return
            }
            waiter = continuation
            executor.lock.unlock()
        }
    }

    /// The client is gone (or the response will not be read further): the app sees `http.disconnect`.
    public func disconnect() {
        executor.asgiDisconnect(self)
    }

    /// Gives up on the request (no answer in time): `next()` returns at once, the app's coroutine is cancelled.
    public func abandon(_ reason: String) {
        executor.asgiAbandon(self, reason: reason)
    }

    /// Whether `abandon` ended it.
    public var abandoned: Bool { executor.lock.withLock { abandonedFlag } }

    func markAbandoned() -> Bool {
        if abandonedFlag || finished { return false }
        abandonedFlag = true
        disconnected = true
        producerPaused = false
        return true
    }

    func markDisconnected() -> Bool {
        if disconnected { return false }
        disconnected = true
        producerPaused = false
        return true
    }

    func end(_ event: ASGIEvent) {
        deliver(event, final: true)
        if let waiter {
            self.waiter = nil
            waiter.resume(returning: nil)
        }
    }
}

/// The request fields `neutrino._asgi` builds its scope from: each a 4-byte big-endian length and its bytes —
/// method, raw path, raw query, HTTP version, client host, client port, server host, server port, scheme, then the
/// headers as name, value pairs (names lowercased).
public enum ASGIRequestHead {
    public static func encode(fields: [[UInt8]], headers: [([UInt8], [UInt8])]) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(fields.reduce(0) { $0 + $1.count + 4 } + headers.reduce(0) { $0 + $1.0.count + $1.1.count + 8 })
        func put(_ bytes: [UInt8]) {
            let n = UInt32(truncatingIfNeeded: bytes.count)
            out.append(UInt8(truncatingIfNeeded: n >> 24))
            out.append(UInt8(truncatingIfNeeded: n >> 16))
            out.append(UInt8(truncatingIfNeeded: n >> 8))
            out.append(UInt8(truncatingIfNeeded: n))
            out.append(contentsOf: bytes)
        }
        for f in fields { put(f) }
        for (name, value) in headers {
            put(name.map { $0 >= 65 && $0 <= 90 ? $0 + 32 : $0 })
            put(value)
        }
        return out
    }

    /// The fields of a blob `neutrino._asgi` wrote (`join_fields`); nil if it is cut short.
    static func decode(_ blob: [UInt8]) -> [[UInt8]]? {
        var out: [[UInt8]] = []
        var i = 0
        while i < blob.count {
            guard blob.count - i >= 4 else { return nil }
            let n = Int(blob[i]) << 24 | Int(blob[i + 1]) << 16 | Int(blob[i + 2]) << 8 | Int(blob[i + 3])
            i += 4
            guard n <= blob.count - i else { return nil }
            out.append(Array(blob[i..<(i + n)]))
            i += n
        }
        return out
    }
}

/// The mounted ASGI app (`App.mount`): requests run as coroutines on the worker's event loop, each taking one of the
/// `maxCoroutines` slots the `async def` tasks use (more wait, up to `maxQueued`, then are refused). A request has no
/// timeout of its own (a streaming response may last long); the client going away ends it.
extension PythonExecutor {
    /// Starts serving one request: its events come from the exchange (`.rejected` when it cannot run).
    public func serveASGI(head: [UInt8], body: [UInt8]) -> ASGIExchange {
        let exchange = ASGIExchange(executor: self, head: head, body: body)
        let reason = lock.withLock { () -> String? in
            if !servesASGI { return "this worker serves no ASGI app" }
            if let wedged = state.wedged { return "the interpreter is wedged: \(wedged)" }
            if let lost = state.loopLost { return "the event loop is lost: \(lost)" }
            if state.stopping { return "the worker is shutting down" }
            if state.asgiWaiting.count >= maxQueued { return "the worker's queue is full (\(maxQueued) requests waiting)" }
            state.asgiWaiting.append(exchange)
            return nil
        }
        if let reason {
            lock.withLock { exchange.end(.rejected(reason)) }
            return exchange
        }
        startWaitingRequests()
        return exchange
    }

    /// Hands waiting requests to the loop while coroutine slots are free.
    func startWaitingRequests() {
        let wake = lock.withLock { () -> Bool in
            var wake = false
            while state.coroutinesRunning < maxCoroutines, !state.asgiWaiting.isEmpty, !state.stopping {
                let exchange = state.asgiWaiting.removeFirst()
                state.coroutinesRunning += 1
                state.busy += 1
                state.nextLoopID &+= 1
                exchange.id = state.nextLoopID
                state.asgiRunning[exchange.id] = exchange
                wake = queueForLoop(.asgiRequest(exchange)) || wake
            }
            return wake
        }
        if wake { wakeTheLoop() }
    }

    func asgiDisconnect(_ exchange: ASGIExchange) {
        let wake = lock.withLock { () -> Bool in
            guard exchange.markDisconnected() else { return false }
            if let i = state.asgiWaiting.firstIndex(where: { $0 === exchange }) {
                state.asgiWaiting.remove(at: i)
                exchange.end(.rejected("the client went away"))
                return false
            }
            guard exchange.id != 0, state.asgiRunning[exchange.id] != nil else { return false }
            return queueForLoop(.asgiDisconnect(exchange.id))
        }
        if wake { wakeTheLoop() }
    }

    func asgiAbandon(_ exchange: ASGIExchange, reason: String) {
        let wake = lock.withLock { () -> Bool in
            guard exchange.markAbandoned() else { return false }
            exchange.end(.end(error: reason))
            if let i = state.asgiWaiting.firstIndex(where: { $0 === exchange }) {
                state.asgiWaiting.remove(at: i)
                return false
            }
            guard exchange.id != 0, state.asgiRunning[exchange.id] != nil else { return false }
            return queueForLoop(.asgiCancel(exchange.id))
        }
        if wake { wakeTheLoop() }
    }

    /// Requests to the app in flight now.
    public var asgiInFlight: Int { lock.withLock { state.asgiRunning.count + state.asgiWaiting.count } }

    /// For a stopping worker: waits up to `grace` for the app's requests in flight to end, then cuts the rest short
    /// (a streaming response that never ends, an SSE endpoint): their coroutines are cancelled and their responses end
    /// unfinished, so the server's drain can finish. Returns how many were cut short.
    public func asgiDrain(grace: Duration) async -> Int {
        let deadline = ContinuousClock.now + grace
        while asgiInFlight > 0 && ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(50))
        }
        let left = lock.withLock { Array(state.asgiRunning.values) + state.asgiWaiting }
        for exchange in left { exchange.abandon("the worker is stopping") }
        return left.count
    }

    /// `bridge(4, id, status, headers, route)` (loop thread, GIL held).
    func asgiHead(id: UInt64, status: Int, headers blob: [UInt8], route: String) {
        var headers: [ASGIHeader] = []
        let fields = ASGIRequestHead.decode(blob) ?? []
        var i = 0
        while i + 1 < fields.count {
            headers.append(ASGIHeader(name: fields[i], value: fields[i + 1]))
            i += 2
        }
        lock.withLock { _ = state.asgiRunning[id]?.deliver(.head(status: status, headers: headers, route: route)) }
    }

    /// `bridge(5, id, data, more)`: true when the app should wait for `RESUME` before sending more.
    func asgiBody(id: UInt64, data: [UInt8], more: Bool) -> Bool {
        lock.withLock { state.asgiRunning[id]?.deliver(.body(data, more: more)) ?? false }
    }

    /// `bridge(6, id, error)`: the request's coroutine ended; its slot comes back.
    func asgiEnd(id: UInt64, error: String?) {
        lock.withLock {
            guard let exchange = state.asgiRunning.removeValue(forKey: id) else { return }
            state.coroutinesRunning -= 1
            state.busy -= 1
            exchange.end(.end(error: error))
        }
        startWaitingCoroutines()
        startWaitingRequests()
    }

    /// Every request on a lost loop ends (their responses are cut short), and no more are taken.
    func asgiLoopLost(_ reason: String) {
        lock.withLock {
            for exchange in state.asgiWaiting { exchange.end(.rejected("the event loop is lost: \(reason)")) }
            state.asgiWaiting.removeAll()
            for (_, exchange) in state.asgiRunning { exchange.end(.end(error: "the event loop is lost: \(reason)")) }
        }
        lifespanReported(phase: 0, ok: false, message: "the event loop is lost: \(reason)")
        lifespanReported(phase: 1, ok: false, message: "the event loop is lost: \(reason)")
    }

    /// `bridge(7, phase, ok, message)`: the lifespan startup (0) or shutdown (1) ended.
    func lifespanReported(phase: Int, ok: Bool, message: String) {
        let waiters = lock.withLock { () -> [CheckedContinuation<(ok: Bool, message: String), Never>] in
            guard state.lifespan[phase] == nil else { return [] }
            state.lifespan[phase] = (ok, message)
            return state.lifespanWaiters.removeValue(forKey: phase) ?? []
        }
        for w in waiters { w.resume(returning: (ok, message)) }
    }

    /// Waits for the app's lifespan startup on the loop (it runs before the loop takes anything else): `ok` false with
    /// the app's message (a traceback, for Starlette and FastAPI) when it failed.
    public func asgiStartup() async -> (ok: Bool, message: String) {
        guard servesASGI else { return (false, "this worker serves no ASGI app") }
        return await lifespanOutcome(phase: 0)
    }

    /// Runs the app's lifespan shutdown (once per worker, after the server drained) and waits for it, at most
    /// `timeout`; nil when it did not end in time.
    public func asgiShutdown(timeout: Duration) async -> (ok: Bool, message: String)? {
        guard servesASGI else { return (true, "") }
        let wake = lock.withLock { () -> Bool in
            guard state.lifespan[0]?.ok == true, state.loopLost == nil else { return false }
            return queueForLoop(.lifespanShutdown)
        }
        if wake { wakeTheLoop() }
        if lock.withLock({ state.lifespan[0]?.ok != true }) { return (true, "") }
        return await withTaskGroup(of: (ok: Bool, message: String)?.self) { group in
            group.addTask { await self.lifespanOutcome(phase: 1) }
            group.addTask {
                try? await Task.sleep(for: timeout)
                return nil
            }
            let first = await group.next() ?? nil
            if first == nil {
                // The shutdown hook is still running: release the waiter so the group can end.
                self.lifespanReported(phase: 1, ok: false, message: "the lifespan shutdown did not end within \(timeout)")
            }
            group.cancelAll()
            await group.waitForAll()
            return first
        }
    }

    private func lifespanOutcome(phase: Int) async -> (ok: Bool, message: String) {
        await withCheckedContinuation { continuation in
            lock.lock()
            if let done = state.lifespan[phase] {
                lock.unlock()
                continuation.resume(returning: done)
                return
            }
            state.lifespanWaiters[phase, default: []].append(continuation)
            lock.unlock()
        }
    }
}
