import Hummingbird
import HummingbirdTesting
import Logging
import NIOCore
import NIOHTTP1
import NeutrinoCore
import NeutrinoHTTP
import Synchronization
import Testing

@testable import NeutrinoGateway

/// A pool whose workers are all busy: calls wait for room in line instead of failing, within their deadline and the
/// line's bound. The worker is a real HTTP server on a loopback port (Hummingbird, live): `/api/slow` answers after
/// 400 ms, `/api/busy` always says it is saturated (503).
struct WorkerPoolCapacityTests {
    static let answersAfter = Duration.milliseconds(400)

    final class Counts: Sendable {
        let slowStarted = Atomic<Int>(0)
        let busyAsked = Atomic<Int>(0)
        let refusedAsked = Atomic<Int>(0)
        /// `/api/announcing`: calls running now, and the most that ran at once.
        let running = Atomic<Int>(0)
        let mostAtOnce = Atomic<Int>(0)
        /// `/api/mixed`: calls of plain-function tasks (task id "thread") running now and the most at once, and
        /// every call's end.
        let threadsRunning = Atomic<Int>(0)
        let mostThreadsAtOnce = Atomic<Int>(0)
        let threadCallsEnded = Atomic<Int>(0)
    }

    /// Raises `most` to `now` if it is higher.
    static func raise(_ most: borrowing Atomic<Int>, to now: Int) {
        var seen = most.load(ordering: .relaxed)
        while now > seen {
            let (exchanged, original) = most.compareExchange(expected: seen, desired: now, ordering: .relaxed)
            if exchanged { break }
            seen = original
        }
    }

    /// What `/api/announcing` says in `X-Neutrino-Max-Calls`, by the call's `X-Neutrino-Task-Id`.
    static let announcements = ["two": "2", "zero": "0", "negative": "-3", "text": "many", "huge": "99999999999999999999999"]

    static func withWorker(_ test: @Sendable (Int, Counts) async throws -> Void) async throws {
        let counts = Counts()
        let router = Router()
        router.post("/api/slow") { _, _ -> String in
            counts.slowStarted.wrappingAdd(1, ordering: .relaxed)
            try await Task.sleep(for: answersAfter)
            return #"{"ok":true}"#
        }
        router.post("/api/announcing") { request, _ -> Response in
            raise(counts.mostAtOnce, to: counts.running.wrappingAdd(1, ordering: .relaxed).newValue)
            try await Task.sleep(for: .milliseconds(200))
            counts.running.wrappingSubtract(1, ordering: .relaxed)
            let said = announcements[request.headers[NeutrinoHeader.taskID] ?? ""] ?? "2"
            return Response(status: .ok, headers: [NeutrinoHeader.maxCalls: said], body: .init(byteBuffer: ByteBuffer(string: "{}")))
        }
        // A worker with 2 thread places among its 10 calls at once; the task id says the call's kind.
        router.post("/api/mixed") { request, _ -> Response in
            let thread = request.headers[NeutrinoHeader.taskID] == "thread"
            if thread { raise(counts.mostThreadsAtOnce, to: counts.threadsRunning.wrappingAdd(1, ordering: .relaxed).newValue) }
            try await Task.sleep(for: .milliseconds(300))
            if thread {
                counts.threadsRunning.wrappingSubtract(1, ordering: .relaxed)
                counts.threadCallsEnded.wrappingAdd(1, ordering: .relaxed)
            }
            return Response(
                status: .ok, headers: [NeutrinoHeader.maxCalls: "10", NeutrinoHeader.maxThreadCalls: "2"],
                body: .init(byteBuffer: ByteBuffer(string: "{}")))
        }
        router.post("/api/busy") { _, _ -> Response in
            counts.busyAsked.wrappingAdd(1, ordering: .relaxed)
            return Response(status: .serviceUnavailable)
        }
        // What a worker answers a forwarded ASGI request it did not run (its app's queue full, or stopping).
        // An ASGI app that answers after the gateway stopped waiting for the head.
        router.get("\(ASGIForwarding.prefix)/late") { _, _ -> String in
            try await Task.sleep(for: answersAfter)
            return "late"
        }
        router.get("\(ASGIForwarding.prefix)/items") { _, _ -> Response in
            counts.refusedAsked.wrappingAdd(1, ordering: .relaxed)
            return Response(status: .serviceUnavailable, headers: [NeutrinoHeader.rejected: "saturated"])
        }
        var logger = Logger(label: "worker")
        logger.logLevel = .critical
        let app = Application(router: router, configuration: .init(address: .hostname("127.0.0.1", port: 0)), logger: logger)
        try await app.test(.live) { client in
            try await test(try #require(client.port), counts)
        }
    }

    static func pool(port: Int, maxWaiting: Int, maxConnections: Int = 1) throws -> WorkerPool {
        var logger = Logger(label: "pool")
        logger.logLevel = .critical
        let endpoint = try #require(WorkerPool.Endpoint(url: "http://127.0.0.1:\(port)"))
        return WorkerPool(name: "fast", endpoints: [endpoint], maxConnections: maxConnections, maxWaiting: maxWaiting, logger: logger)
    }

    static func call(
        _ pool: WorkerPool, _ task: String = "slow", taskID: String = "t", timeout: TimeAmount = .seconds(30),
        caller: CallerPresence? = nil, threadCall: Bool = false
    ) async -> Result<Int, WorkerPool.Failure> {
        do throws(WorkerPool.Failure) {
            let answer = try await pool.call(
                task: task, taskID: taskID, body: Array(#"{"args":{}}"#.utf8), timeout: timeout, caller: caller, threadCall: threadCall)
            return .success(answer.status)
        } catch {
            return .failure(error)
        }
    }

    static func eventually(_ what: Comment, _ check: () -> Bool) async throws {
        for _ in 0..<2000 where !check() { try await Task.sleep(for: .milliseconds(5)) }
        #expect(check(), what)
    }

    /// A request for the mounted ASGI app, as the ASGI fallback forwards it: the answer's status, or how it failed.
    static func forward(_ pool: WorkerPool, _ target: String, headDeadline: NIODeadline) async -> Result<Int, WorkerPool.Failure> {
        do throws(WorkerPool.Failure) {
            let (reply, _) = try await pool.forward(method: .GET, target: target, headers: HTTPHeaders(), body: [], headDeadline: headDeadline)
            return .success(reply.status)
        } catch {
            return .failure(error)
        }
    }

    /// The message of an `atCapacity` refusal, else nil.
    static func refusal(_ result: Result<Int, WorkerPool.Failure>) -> String? {
        guard case .failure(.atCapacity(let message)) = result else { return nil }
        return message
    }

    /// A call that a saturated worker keeps refusing ends refused at its deadline, saying why; or, where the machine
    /// stalls (CI: two cores, every suite at once), the last look is still on its way to the worker when the deadline
    /// passes and the call ends timed out instead. Anything else (an answer, a transport failure) is wrong.
    static func expectRefusedOrLastLookTimedOut(_ result: Result<Int, WorkerPool.Failure>, saying: String) throws {
        if case .failure(.timedOut) = result { return }
        let message = try #require(Self.refusal(result), "\(result)")
        #expect(message.contains(saying), "\(message)")
    }

    /// The message of a `callerLeft` end, else nil.
    static func callerLeft(_ result: Result<Int, WorkerPool.Failure>) -> String? {
        guard case .failure(.callerLeft(let message)) = result else { return nil }
        return message
    }

    @Test func callsBeyondTheWorkersConnectionsWaitTheirTurnAndBeyondTheLineAreRefused() async throws {
        try await Self.withWorker { port, counts in
            let pool = try Self.pool(port: port, maxWaiting: 1)
            defer { pool.close() }
            let first = Task { await Self.call(pool) }
            try await Self.eventually("the first call holds the only connection") { counts.slowStarted.load(ordering: .relaxed) == 1 }
            let second = Task { await Self.call(pool) }
            try await Self.eventually("the second call waits for room") { pool.waitingCalls == 1 }
            // The line (one place) is full: refused at once, nothing sent.
            let third = await Self.call(pool)
            let message = try #require(Self.refusal(third), "\(third)")
            #expect(message.contains("pool 'fast' is at capacity"), "\(message)")
            #expect(message.contains("(--max-waiting-calls 1)"), "\(message)")
            // The first answers, the second then runs on the connection it gave back.
            #expect(try await first.value.get() == 200)
            #expect(try await second.value.get() == 200)
            #expect(counts.slowStarted.load(ordering: .relaxed) == 2)
            #expect(pool.waitingCalls == 0)
        }
    }

    /// A worker that says it takes 2 calls at once gets no more than 2 in flight, though `--worker-connections` allows
    /// 8: the others wait in the pool's line and run as calls end.
    @Test func aWorkerGetsNoMoreCallsAtOnceThanItSaysItTakes() async throws {
        try await Self.withWorker { port, counts in
            let pool = try Self.pool(port: port, maxWaiting: 16, maxConnections: 8)
            defer { pool.close() }
            // Its first answer says how many it takes.
            #expect(try await Self.call(pool, "announcing", taskID: "two").get() == 200)
            let calls = (0..<6).map { _ in Task { await Self.call(pool, "announcing", taskID: "two") } }
            try await Self.eventually("calls beyond the two wait in line") { pool.waitingCalls > 0 }
            for call in calls { #expect(try await call.value.get() == 200) }
            #expect(counts.mostAtOnce.load(ordering: .relaxed) <= 2)
            #expect(pool.waitingCalls == 0)
        }
    }

    /// A worker with coroutine slots as well as threads says how many of its calls may take threads: calls of
    /// plain-function tasks beyond that wait in a line of their own, and `async def` calls made meanwhile do not wait
    /// behind them.
    @Test func callsOfPlainFunctionsWaitForAThreadPlaceWithoutHoldingUpCoroutineCalls() async throws {
        try await Self.withWorker { port, counts in
            let pool = try Self.pool(port: port, maxWaiting: 16, maxConnections: 16)
            defer { pool.close() }
            #expect(try await Self.call(pool, "mixed", taskID: "coroutine").get() == 200)
            // Eight thread calls of 300 ms over 2 places: about 1.2 s.
            let threadCalls = (0..<8).map { _ in Task { await Self.call(pool, "mixed", taskID: "thread", threadCall: true) } }
            try await Self.eventually("thread calls wait for a place") { pool.waitingCalls > 0 }
            let coroutineCalls = (0..<4).map { _ in Task { await Self.call(pool, "mixed", taskID: "coroutine") } }
            for call in coroutineCalls { #expect(try await call.value.get() == 200) }
            // The coroutine calls ran beside the thread calls (about 300 ms), not after them.
            #expect(counts.threadCallsEnded.load(ordering: .relaxed) < 8)
            for call in threadCalls { #expect(try await call.value.get() == 200) }
            #expect(counts.mostThreadsAtOnce.load(ordering: .relaxed) <= 2)
            #expect(pool.waitingCalls == 0)
        }
    }

    /// What a worker says it takes is used only when it is a positive number: anything else leaves the pool's own
    /// bound (`--worker-connections`) in force.
    @Test func aWorkersNonsenseAboutTheCallsItTakesIsIgnored() async throws {
        for said in ["zero", "negative", "text", "huge"] {
            try await Self.withWorker { port, counts in
                let pool = try Self.pool(port: port, maxWaiting: 16, maxConnections: 4)
                defer { pool.close() }
                #expect(try await Self.call(pool, "announcing", taskID: said).get() == 200)
                let calls = (0..<4).map { _ in Task { await Self.call(pool, "announcing", taskID: said) } }
                for call in calls { #expect(try await call.value.get() == 200) }
                // All four at once, or nearly (a stalled machine may start one late): never held to a nonsense bound.
                #expect(counts.mostAtOnce.load(ordering: .relaxed) > 2, "X-Neutrino-Max-Calls: \(said)")
            }
        }
    }

    /// A forwarded request whose answer's head does not come by its deadline ends `timedOut`, its connection closed;
    /// the gateway goes on (the streamed body made for that answer is ended, never left for its deinit to trap on).
    @Test func aForwardedRequestWhoseHeadIsLateTimesOutAndTheGatewayGoesOn() async throws {
        try await Self.withWorker { port, _ in
            let pool = try Self.pool(port: port, maxWaiting: 4, maxConnections: 4)
            defer { pool.close() }
            for _ in 0..<3 {
                let late = await Self.forward(pool, "/late", headDeadline: .now() + .milliseconds(50))
                guard case .failure(.timedOut) = late else {
                    Issue.record("expected timedOut, got \(late)")
                    return
                }
            }
            // Its connections closed, the pool still forwards (a refusal, as `/items` answers).
            let after = await Self.forward(pool, "/items", headDeadline: .now() + .milliseconds(300))
            if case .failure(.timedOut) = after { return }  // a stalled machine: the look is still on its way
            #expect(Self.refusal(after) != nil, "\(after)")
        }
    }

    @Test func aCallWaitsNoLongerThanItsDeadline() async throws {
        try await Self.withWorker { port, counts in
            let pool = try Self.pool(port: port, maxWaiting: 8)
            defer { pool.close() }
            let holder = Task { await Self.call(pool) }
            try await Self.eventually("the holder runs") { counts.slowStarted.load(ordering: .relaxed) == 1 }
            let late = await Self.call(pool, timeout: .milliseconds(50))
            let message = try #require(Self.refusal(late), "\(late)")
            #expect(message.contains("stayed at capacity"), "\(message)")
            #expect(pool.waitingCalls == 0)
            #expect(try await holder.value.get() == 200)
            #expect(counts.slowStarted.load(ordering: .relaxed) == 1)  // the refused call never reached the worker
        }
    }

    /// A worker that says it is saturated frees no connection when it answers: the waiting call looks again when the
    /// line's first waiter does (every 100 ms), not at once (no busy loop against the worker), until its deadline.
    @Test func aCallToAWorkerThatStaysSaturatedLooksAgainAtAPace() async throws {
        try await Self.withWorker { port, counts in
            let pool = try Self.pool(port: port, maxWaiting: 8)
            defer { pool.close() }
            let result = await Self.call(pool, "busy", timeout: .milliseconds(350))
            try Self.expectRefusedOrLastLookTimedOut(result, saying: "is saturated")
            let asked = counts.busyAsked.load(ordering: .relaxed)
            #expect(asked >= 2 && asked <= 10, "asked \(asked) times in 350 ms")
        }
    }

    /// A call whose client hangs up while it waits for room leaves the line and never reaches a worker.
    @Test func aCallWhoseCallerLeftWhileItWaitedIsNotRun() async throws {
        try await Self.withWorker { port, counts in
            let pool = try Self.pool(port: port, maxWaiting: 8)
            defer { pool.close() }
            let holder = Task { await Self.call(pool) }
            try await Self.eventually("the holder runs") { counts.slowStarted.load(ordering: .relaxed) == 1 }
            let caller = CallerPresence()
            let abandoned = Task { await Self.call(pool, caller: caller) }
            try await Self.eventually("the second call waits") { pool.waitingCalls == 1 }
            caller.leave()
            let result = await abandoned.value
            let message = try #require(Self.callerLeft(result), "\(result)")
            #expect(message.contains("the call was not run"), "\(message)")
            #expect(pool.waitingCalls == 0)
            #expect(try await holder.value.get() == 200)
            #expect(counts.slowStarted.load(ordering: .relaxed) == 1)
        }
    }

    /// The same for a request forwarded to a mounted ASGI app: the refusal's connection coming back is no room.
    @Test func aForwardedRequestToAWorkerThatStaysSaturatedLooksAgainAtAPace() async throws {
        try await Self.withWorker { port, counts in
            let pool = try Self.pool(port: port, maxWaiting: 8)
            defer { pool.close() }
            let result = await Self.forward(pool, "/items", headDeadline: .now() + .milliseconds(350))
            try Self.expectRefusedOrLastLookTimedOut(result, saying: "refused the request")
            let asked = counts.refusedAsked.load(ordering: .relaxed)
            #expect(asked >= 2 && asked <= 10, "asked \(asked) times in 350 ms")
        }
    }

    @Test func withoutALineACallFindingNoRoomIsRefusedAtOnce() async throws {
        try await Self.withWorker { port, counts in
            let pool = try Self.pool(port: port, maxWaiting: 0)
            defer { pool.close() }
            let holder = Task { await Self.call(pool) }
            try await Self.eventually("the holder runs") { counts.slowStarted.load(ordering: .relaxed) == 1 }
            #expect(Self.refusal(await Self.call(pool)) != nil)
            #expect(try await holder.value.get() == 200)
        }
    }
}
