import HTTPTypes
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import NeutrinoCore
import NeutrinoHTTP
import Synchronization

/// The fast workers of one sync pool: round robin over the workers whose circuit is closed, over pooled
/// keep-alive connections (`WorkerConnections`). A worker that cannot be reached is skipped and the call
/// goes to the next one, so one dead worker costs no failed request while another is healthy.
///
/// Members are static (`--http-pool`, for the pool's lifetime) or discovered (`PoolDiscovery`: added when a worker's
/// heartbeat announces its URL, removed when it says it is stopping or falls silent). A call works on the members it
/// saw when it started, so a worker removed meanwhile still answers the calls it is running; its connections close as
/// those end.
public final class WorkerPool: Sendable {
    public struct Endpoint: Sendable, Hashable {
        public var url: String
        public var host: String
        public var port: Int

        /// `http://HOST:PORT` (a trailing slash is ignored); nil for anything else.
        public init?(url: String) {
            let trimmed = url.hasSuffix("/") ? String(url.dropLast()) : url
            guard trimmed.hasPrefix("http://") else { return nil }
            let authority = trimmed.dropFirst("http://".count)
            guard let colon = authority.lastIndex(of: ":"), let port = Int(authority[authority.index(after: colon)...]),
                (1...65535).contains(port), !authority[..<colon].isEmpty, !authority.contains("/" as Character)
            else { return nil }
            self.url = trimmed
            self.host = String(authority[..<colon])
            self.port = port
        }
    }

    /// A worker's answer: status, headers and the whole body.
    public struct Answer: Sendable {
        public var status: Int
        public var headers: Headers
        public var body: [UInt8]
        public var endpoint: String
    }

    /// A worker's answer headers, read by name (case-insensitively) where they arrived: no dictionary of lowercased
    /// names built per call (hashing was about 2 % of the gateway's samples on echo, a third of it here).
    public struct Headers: Sendable {
        let fields: HTTPHeaders

        public subscript(_ name: HTTPField.Name) -> String? { fields.first(name: name.canonicalName) }
    }

    public enum Failure: Error, Sendable {
        /// No worker could be reached.
        case noWorkerAvailable(String)
        /// Every worker was at capacity, and the call could not wait for room: `--max-waiting-calls` calls were
        /// waiting already, or it waited until its deadline. Nothing ran.
        case atCapacity(String)
        /// The caller closed its connection while the call waited for room: nothing ran.
        case callerLeft(String)
        /// The worker did not answer before the deadline.
        case timedOut
        /// The connection dropped after the request was sent: the worker died (crashed, was killed, ran out of
        /// memory) while it may have been running the task.
        case workerCrashed(String)
        /// The worker's answer was larger than the gateway reads (`--max-worker-answer-bytes`); the task ran.
        case answerTooLarge(limit: Int)
    }

    /// One worker of the pool.
    final class Member: Sendable {
        let endpoint: Endpoint
        let connections: WorkerConnections
        /// From `--http-pool`: never removed by discovery.
        let isStatic: Bool

        init(endpoint: Endpoint, connections: WorkerConnections, isStatic: Bool) {
            self.endpoint = endpoint
            self.connections = connections
            self.isStatic = isStatic
        }
    }

    private struct State {
        var members: [Member] = []
        /// `breakers[i]` is `members[i]`'s (an array beside it, not a dictionary by URL: a call looks its worker's up
        /// twice, and hashing the URL showed in the profile); a worker that leaves and comes back starts closed.
        var breakers: [CircuitBreaker] = []

        /// Where `url`'s member is.
        func index(of url: String) -> Int? { members.firstIndex { $0.endpoint.url == url } }
    }

    public let name: String
    private let state: Mutex<State>
    private let next = Atomic<Int>(0)
    private let group: any EventLoopGroup
    private let maxConnections: Int
    private let maxAnswerBytes: Int
    private let logger: Logger
    /// Sent to workers when this gateway records the lifecycle of the calls it forwards (it has a task log): the
    /// answer size it relays, so a worker writes only what the gateway cannot (`X-Neutrino-Caller-Records-Output`).
    private let callerRecords: String?
    /// How long a call waits for a reachable worker when the pool has none: no worker yet, or every one refusing
    /// connections (see `GatewayConfiguration.workerJoinWait`).
    private let joinWait: Duration
    /// Finds the first worker back after every one refused connections.
    private let recovery: PoolRecoveryProbe
    /// The calls waiting for room while every worker is at capacity.
    private let capacity: PoolCapacityQueue
    /// The calls of plain-function tasks waiting for a worker's thread place (`X-Neutrino-Max-Thread-Calls`): a line of
    /// their own, so that while every thread is taken the `async def` calls behind them still go to the coroutine
    /// slots.
    private let threadCapacity: PoolCapacityQueue

    /// `maxConnections` bounds the connections to each worker, and so its calls in flight, further bounded by what the
    /// worker says it takes at once (`X-Neutrino-Max-Calls`); a request finding them all busy goes to the next worker,
    /// as if that one were saturated; when every worker is, it waits for room, `maxWaiting` calls at most;
    /// `maxAnswerBytes` bounds the answer read from a worker.
    public init(
        name: String, endpoints: [Endpoint], group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        maxConnections: Int = 128, maxAnswerBytes: Int = 16 << 20, recordsCalls: Bool = false, joinWait: Duration = .zero,
        maxWaiting: Int = 1024, logger: Logger
    ) {
        self.name = name
        self.joinWait = joinWait
        self.recovery = PoolRecoveryProbe(group: group)
        self.capacity = PoolCapacityQueue(limit: maxWaiting, group: group)
        self.threadCapacity = PoolCapacityQueue(limit: maxWaiting, group: group)
        self.callerRecords = recordsCalls ? String(max(1024, maxAnswerBytes)) : nil
        self.group = group
        self.maxConnections = maxConnections
        self.maxAnswerBytes = maxAnswerBytes
        self.logger = logger
        self.state = Mutex(State())
        for e in endpoints { _ = insert(e, isStatic: true) }
    }

    /// The workers calls go to now.
    public var endpoints: [Endpoint] { state.withLock { $0.members.map(\.endpoint) } }

    /// Calls waiting for room now (every worker was at capacity when they tried).
    public var waitingCalls: Int { capacity.waiting + threadCapacity.waiting }

    /// How many workers have a closed circuit (are believed reachable).
    public var healthyCount: Int {
        state.withLock { s in s.breakers.filter { !$0.isOpen }.count }
    }

    /// Adds a discovered worker; false if it is already a member.
    @discardableResult
    public func add(_ endpoint: Endpoint) -> Bool { insert(endpoint, isStatic: false) }

    /// Stops routing new calls to a discovered worker (its calls in flight finish); false if it is not a discovered
    /// member.
    @discardableResult
    public func remove(url: String) -> Bool {
        let removed = state.withLock { s -> Member? in
            guard let i = s.members.firstIndex(where: { $0.endpoint.url == url && !$0.isStatic }) else { return nil }
            s.breakers.remove(at: i)
            return s.members.remove(at: i)
        }
        removed?.connections.retire()
        return removed != nil
    }

    /// Whether `--http-pool` named workers of this pool.
    public var hasStaticMembers: Bool { state.withLock { $0.members.contains(where: \.isStatic) } }

    /// The discovered members' URLs.
    var discovered: Set<String> { state.withLock { Set($0.members.filter { !$0.isStatic }.map(\.endpoint.url)) } }

    private func insert(_ endpoint: Endpoint, isStatic: Bool) -> Bool {
        let added = state.withLock { s in
            guard s.index(of: endpoint.url) == nil else { return false }
            let connections = WorkerConnections(
                host: endpoint.host, port: endpoint.port, group: group, maxConnections: maxConnections,
                maxAnswerBytes: maxAnswerBytes,
                onRoom: { [capacity, threadCapacity] in
                    // A thread place, if the call had one, was given back first.
                    capacity.roomMade()
                    threadCapacity.roomMade()
                })
            s.members.append(Member(endpoint: endpoint, connections: connections, isStatic: isStatic))
            s.breakers.append(CircuitBreaker())
            return true
        }
        // A new worker is room for every waiting call.
        if added { membersChanged() }
        return added
    }

    /// Workers to try, in order: the round-robin choice and the other available ones, then the ones whose circuit
    /// is open (a last resort: better a refused connection than a 503 while a worker may be back).
    func order(now: Timestamp) -> [Member] {
        let start = next.wrappingAdd(1, ordering: .relaxed).oldValue
        return state.withLock { s in
            let count = s.members.count
            guard count > 0 else { return [] }
            // One array: the members whose breaker lets a request through, then (rarely any) those whose is open.
            var ordered: [Member] = []
            ordered.reserveCapacity(count)
            var open: [Member] = []
            for k in 0..<count {
                let r = (start &+ k) % count
                let i = r < 0 ? r + count : r
                if s.breakers[i].allowRequest(now: now) { ordered.append(s.members[i]) } else { open.append(s.members[i]) }
            }
            if !open.isEmpty { ordered.append(contentsOf: open) }
            return ordered
        }
    }

    private func record(_ url: String, success: Bool) {
        state.withLock { s in
            guard let i = s.index(of: url) else { return }  // removed meanwhile
            if success { s.breakers[i].recordSuccess() } else { s.breakers[i].recordFailure(now: .now()) }
        }
    }

    /// Sends `POST /api/<task>` to a worker of this pool. Unreachable and saturated workers move on to the next
    /// worker (nothing ran there). A connection that drops after the request was sent means the worker died while
    /// the task may have been running: that ends the call (`workerCrashed`), unless the task opted in to `reruns`
    /// extra attempts on other workers (at-least-once), each with the next attempt number. `traceParent` (W3C) makes
    /// the worker's execution span a child of the caller's.
    ///
    /// When every worker is at capacity (all its connections busy, or it answered that it is saturated), the call
    /// waits for room in the pool's line (`PoolCapacityQueue`), within its deadline; when every worker refused the
    /// connection (all restarting, say), it waits up to `joinWait` for one to come back (`PoolRecoveryProbe`). Either
    /// way it then tries the pool again.
    ///
    /// `timeout` bounds the call from the moment it first tries a worker, its wait for room included: the wait for a
    /// first worker of an empty pool, or for one to come back (`joinWait`), comes before it.
    public func call(
        task: String, taskID: String, body: [UInt8], timeout: TimeAmount, reruns: Int = 0, traceParent: String? = nil,
        caller: CallerPresence? = nil, threadCall: Bool = false
    ) async throws(Failure) -> Answer {
        var attempt = 1
        var (members, lastError) = await candidates()
        let payload = ByteBuffer(bytes: body)
        var deadline = NIODeadline.now() + timeout
        var line = Place(caller: caller, queue: threadCall ? threadCapacity : capacity)
        try await takePlace(until: deadline, line: &line)
        while true {
            var allRefused = !members.isEmpty
            var noRoom = false
            let ticket = line.queue.ticket()
            for member in members {
                let endpoint = member.endpoint
                var headers = HTTPHeaders()
                headers.add(name: "Content-Type", value: "application/json")
                headers.add(name: NeutrinoHeader.taskID.canonicalName, value: taskID)
                headers.add(name: NeutrinoHeader.attempt.canonicalName, value: String(attempt))
                if let callerRecords { headers.add(name: NeutrinoHeader.callerRecords.canonicalName, value: callerRecords) }
                if let traceParent { headers.add(name: NeutrinoHeader.traceParent.canonicalName, value: traceParent) }
                // The worker does not start the call once this gateway has stopped waiting for it.
                let waits = max(1, (deadline - .now()).nanoseconds / 1_000_000)
                headers.add(name: NeutrinoHeader.callerWaitsMs.canonicalName, value: String(waits))
                do {
                    var reply = try await member.connections.send(
                        path: "/api/\(task)", headers: headers, body: payload, deadline: deadline, threadCall: threadCall)
                    if reply.status == 503 {
                        // Saturated: it ran nothing; another worker may have room.
                        lastError = "worker \(endpoint.url) is saturated"
                        allRefused = false
                        noRoom = true
                        continue
                    }
                    record(endpoint.url, success: true)
                    let bytes = reply.body.readBytes(length: reply.body.readableBytes) ?? []
                    return Answer(status: reply.status, headers: Headers(fields: reply.headers), body: bytes, endpoint: endpoint.url)
                } catch {
                    switch error {
                    case .timedOut: throw .timedOut  // a slow task, not a broken worker
                    case .saturated(let limit, let announced, let threads):
                        // It has as many calls as it takes at once: nothing was sent, the worker is fine; try the next one.
                        lastError = Self.busy(endpoint, limit: limit, announced: announced, threads: threads)
                        allRefused = false
                        noRoom = true
                        continue
                    case .answerTooLarge(let limit):
                        record(endpoint.url, success: true)
                        throw .answerTooLarge(limit: limit)
                    default: break
                    }
                    record(endpoint.url, success: false)
                    switch error {
                    case .timedOut, .saturated, .answerTooLarge:
                        throw .timedOut
                    case .unreachable(let reason):
                        lastError = "worker \(endpoint.url): \(reason)"
                        logger.warning("worker unreachable", metadata: ["pool": "\(name)", "worker": "\(endpoint.url)", "error": "\(reason)"])
                    case .lost(let reason):
                        let crash = "worker \(endpoint.url) dropped the connection during attempt \(attempt) (it crashed or was killed): \(reason)"
                        logger.error(
                            "worker lost mid-call",
                            metadata: [
                                "pool": "\(name)", "worker": "\(endpoint.url)", "task_id": "\(taskID)",
                                "attempt": "\(attempt)",
                            ])
                        guard attempt <= reruns else { throw .workerCrashed(crash) }
                        lastError = crash
                        attempt += 1
                    }
                }
            }
            let cameBack = try await nextRound(
                noRoom: noRoom, allRefused: allRefused, ticket: ticket, deadline: deadline, line: &line, members: &members,
                lastError: lastError)
            if cameBack { deadline = NIODeadline.now() + timeout }
        }
    }

    /// Forwards a request for the mounted ASGI app to a worker of this pool (`ASGIForwarding.prefix` + the client's
    /// target) and returns the answer once its head arrives; the body streams behind it. Unreachable and saturated
    /// workers, and a worker that refused the request without running it (`X-Neutrino-Rejected`), move on to the next
    /// worker; when every worker is at capacity the request waits for room, as a task's call does, and leaves the
    /// line if `caller` (its client's connection) goes. A connection lost after the request was sent is
    /// `workerCrashed`: the app may have acted on it, so it is not sent again.
    func forward(
        method: HTTPMethod, target: String, headers: HTTPHeaders, body: [UInt8], headDeadline: NIODeadline,
        caller: CallerPresence? = nil
    ) async throws(Failure) -> (WorkerConnections.StreamedReply, String) {
        var (members, lastError) = await candidates()
        let payload = ByteBuffer(bytes: body)
        var line = Place(caller: caller, queue: capacity, comeBackCap: headDeadline)
        try await takePlace(until: headDeadline, line: &line)
        while true {
            var allRefused = !members.isEmpty
            var noRoom = false
            let ticket = line.queue.ticket()
            for member in members {
                let endpoint = member.endpoint
                do {
                    var h = headers
                    h.replaceOrAdd(name: "Host", value: headers.first(name: "Host") ?? "\(endpoint.host):\(endpoint.port)")
                    let reply = try await member.connections.stream(
                        method: method, target: ASGIForwarding.prefix + target, headers: h, body: payload, headDeadline: headDeadline,
                        caller: caller)
                    if reply.status == 503, reply.headers.first(name: NeutrinoHeader.rejected.canonicalName) != nil {
                        lastError = "worker \(endpoint.url) refused the request: it is saturated or stopping"
                        allRefused = false
                        noRoom = true
                        // Read to the end so the connection can be reused.
                        if let body = reply.body.take() { for try await _ in body {} }
                        continue
                    }
                    record(endpoint.url, success: true)
                    return (reply, endpoint.url)
                } catch let error as WorkerConnections.Failure {
                    switch error {
                    case .timedOut: throw .timedOut
                    case .saturated(let limit, let announced, let threads):
                        lastError = Self.busy(endpoint, limit: limit, announced: announced, threads: threads)
                        allRefused = false
                        noRoom = true
                        continue
                    case .answerTooLarge(let limit): throw .answerTooLarge(limit: limit)
                    case .unreachable where caller?.hasLeft == true, .lost where caller?.hasLeft == true:
                        // Closed here because the client left (`WorkerConnections.stream`): the worker is fine.
                        throw .callerLeft("the client closed its connection before the app answered")
                    case .unreachable(let reason):
                        record(endpoint.url, success: false)
                        lastError = "worker \(endpoint.url): \(reason)"
                        logger.warning("worker unreachable", metadata: ["pool": "\(name)", "worker": "\(endpoint.url)", "error": "\(reason)"])
                    case .lost(let reason):
                        record(endpoint.url, success: false)
                        throw .workerCrashed("worker \(endpoint.url) dropped the connection while serving the request: \(reason)")
                    }
                } catch {
                    lastError = "worker \(endpoint.url): \(error)"
                    allRefused = false
                }
            }
            _ = try await nextRound(
                noRoom: noRoom, allRefused: allRefused, ticket: ticket, deadline: headDeadline, line: &line,
                members: &members, lastError: lastError)
        }
    }

    /// Why a worker got no more calls: `limit` are in flight to it, as many as it takes at once (`threads`: calls of
    /// plain-function tasks, as many as its Python threads take).
    private static func busy(_ endpoint: Endpoint, limit: Int, announced: Bool, threads: Bool) -> String {
        let bound =
            threads
            ? "of plain-function tasks in flight (what it said its Python threads take, a quarter more included)"
            : announced
                ? "in flight (what it said it takes at once: its Python threads, a quarter more and its coroutine slots)"
                : "in flight (--worker-connections)"
        return "worker \(endpoint.url) has \(limit) calls \(bound)"
    }

    /// Where a call stands in the pool's line: whether it has waited (and so goes back to the front when woken for
    /// nothing), since when, who waits for it (a caller that leaves takes the call out of the line), and until when it
    /// waits for a worker to come back.
    private struct Place {
        let caller: CallerPresence?
        /// The line it waits in: the pool's, or the one of calls waiting for a thread place.
        let queue: PoolCapacityQueue
        var waited = false
        let since = NIODeadline.now()
        /// Set when every worker first refused the call: `joinWait` from then, no later than `comeBackCap`.
        var comeBackBy: NIODeadline?
        let comeBackCap: NIODeadline?

        init(caller: CallerPresence?, queue: PoolCapacityQueue, comeBackCap: NIODeadline? = nil) {
            self.caller = caller
            self.queue = queue
            self.comeBackCap = comeBackCap
        }

        /// How long it has waited so far, in milliseconds (for the messages that end its wait).
        var waitedMs: Int64 { (NIODeadline.now() - since).nanoseconds / 1_000_000 }
    }

    /// After a round over the members that brought no answer: a worker without room → the call waits in the line for
    /// some (within `deadline`); every worker refused → it waits for one to come back (`joinWait` from the first such
    /// round); a worker that answered otherwise is alive → the call fails. Returns once it should try the pool again
    /// (`members` in the order to try), true when it waited for a worker to come back.
    private func nextRound(
        noRoom: Bool, allRefused: Bool, ticket: UInt64, deadline: NIODeadline, line: inout Place, members: inout [Member],
        lastError: String
    ) async throws(Failure) -> Bool {
        if noRoom {
            try await waitForRoom(after: ticket, until: deadline, line: &line, lastError: lastError)
            members = order(now: .now())
            return false
        }
        guard allRefused else { throw .noWorkerAvailable(lastError) }
        let joined = NIODeadline.now() + TimeAmount(joinWait)
        let until = line.comeBackBy ?? line.comeBackCap.map { min(joined, $0) } ?? joined
        line.comeBackBy = until
        guard await workerReturned(until: until, members: &members) else { throw .noWorkerAvailable(noneCameBack(lastError)) }
        return true
    }

    /// A call that arrives while others wait for room queues behind them rather than taking the room made for them.
    private func takePlace(until deadline: NIODeadline, line: inout Place) async throws(Failure) {
        guard line.queue.waiting > 0 else { return }
        try await waitForRoom(after: line.queue.ticket(), until: deadline, line: &line, lastError: nil)
    }

    /// Waits in the pool's line until room is made (returns: try the workers again), or refuses the call
    /// (`atCapacity`): the line is full, or the deadline came first.
    private func waitForRoom(
        after ticket: UInt64, until deadline: NIODeadline, line: inout Place, lastError: String?
    ) async throws(Failure) {
        let outcome = await line.queue.wait(after: ticket, until: deadline, first: line.waited, caller: line.caller)
        line.waited = true
        let why = lastError.map { ": \($0)" } ?? ""
        switch outcome {
        case .tryAgain:
            return
        case .full:
            HTTPRejections.count("worker_connections")
            let queueFull = "the line of calls waiting for room is full (--max-waiting-calls \(line.queue.limit))"
            throw .atCapacity("pool '\(name)' is at capacity: every worker is busy and \(queueFull)\(why)")
        case .callerLeft:
            throw .callerLeft(
                "the caller closed its connection after waiting \(line.waitedMs) ms for room in pool '\(name)' (every worker busy); the call was not run"
            )
        case .expired:
            HTTPRejections.count("worker_connections")
            throw .atCapacity("pool '\(name)' stayed at capacity for the \(line.waitedMs) ms this call could wait: every worker is busy\(why)")
        }
    }

    /// After every worker refused a call's connection: waits until `until` for one to accept connections again
    /// (`PoolRecoveryProbe`, shared by the waiting calls). True when one did: its circuit is closed and `members` is
    /// the pool's order for the call's next round.
    private func workerReturned(until: NIODeadline, members: inout [Member]) async -> Bool {
        guard joinWait > .zero, NIODeadline.now() < until else { return false }
        let back = await recovery.waitForWorker(
            until: until, endpoints: { endpoints }, back: { record($0.url, success: true) })
        guard back else { return false }
        members = order(now: .now())
        // The calls waiting for room in the line may use the worker that came back too.
        membersChanged()
        return true
    }

    /// Every waiting call, of either line, tries the pool again.
    private func membersChanged() {
        capacity.membersChanged()
        threadCapacity.membersChanged()
    }

    private func noneCameBack(_ lastError: String) -> String {
        joinWait > .zero ? "\(lastError); no worker of pool '\(name)' came back within \(joinWait) (--worker-join-wait)" : lastError
    }

    /// The workers to try for a call, in order (`order(now:)`), and what to report if none answers. An empty pool
    /// first waits up to `joinWait` for a worker to join from its heartbeat: a gateway that just started hears its
    /// workers within a heartbeat interval, and a call then should not fail. Checks every 20 ms; only calls to an
    /// empty pool wait here.
    private func candidates() async -> (members: [Member], noAnswer: String) {
        var members = order(now: .now())
        guard members.isEmpty, joinWait > .zero else { return (members, "no worker is configured for pool '\(name)'") }
        let until = NIODeadline.now() + TimeAmount(joinWait)
        while members.isEmpty, NIODeadline.now() < until, !Task.isCancelled {
            try? await Task.sleep(for: .milliseconds(20))
            members = order(now: .now())
        }
        return (members, "no worker of pool '\(name)' announced itself within \(joinWait) (--worker-join-wait)")
    }

    /// Closes idle connections.
    public func close() {
        for m in state.withLock({ $0.members }) { m.connections.close() }
    }
}
