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
                (1...65535).contains(port), !authority[..<colon].isEmpty, !authority.contains("/")
            else { return nil }
            self.url = trimmed
            self.host = String(authority[..<colon])
            self.port = port
        }
    }

    /// A worker's answer: status, headers and the whole body.
    public struct Answer: Sendable {
        public var status: Int
        public var headers: [String: String]
        public var body: [UInt8]
        public var endpoint: String
    }

    public enum Failure: Error, Sendable {
        /// No worker could be reached (or all were saturated).
        case noWorkerAvailable(String)
        /// The worker did not answer before the deadline.
        case timedOut
        /// The connection dropped after the request was sent: the worker died (crashed, was killed, ran out of
        /// memory) while it may have been running the task.
        case workerCrashed(String)
        /// The worker's answer was larger than the gateway reads (`--max-worker-answer-bytes`); the task ran.
        case answerTooLarge(limit: Int)
    }

    public let name: String
    public let endpoints: [Endpoint]
    private let breakers: Mutex<[CircuitBreaker]>
    private let next = Atomic<Int>(0)
    private let connections: [WorkerConnections]
    private let logger: Logger
    /// Sent to workers when this gateway records the lifecycle of the calls it forwards (it has a task log): the
    /// answer size it relays, so a worker writes only what the gateway cannot (`X-Neutrino-Caller-Records`).
    private let callerRecords: String?

    /// `maxConnections` bounds the connections to each worker (a request finding them all busy goes to the next
    /// worker, as if that one were saturated); `maxAnswerBytes` bounds the answer read from a worker.
    public init(
        name: String, endpoints: [Endpoint], group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        maxConnections: Int = 128, maxAnswerBytes: Int = 16 << 20, recordsCalls: Bool = false, logger: Logger
    ) {
        self.name = name
        self.callerRecords = recordsCalls ? String(max(1024, maxAnswerBytes)) : nil
        self.endpoints = endpoints
        self.breakers = Mutex(Array(repeating: CircuitBreaker(), count: endpoints.count))
        self.connections = endpoints.map {
            WorkerConnections(host: $0.host, port: $0.port, group: group, maxConnections: maxConnections, maxAnswerBytes: maxAnswerBytes)
        }
        self.logger = logger
    }

    /// How many workers have a closed circuit (are believed reachable).
    public var healthyCount: Int { breakers.withLock { $0.filter { !$0.isOpen }.count } }

    /// Workers to try, in order: the round-robin choice and the other available ones, then the ones whose circuit
    /// is open (a last resort: better a refused connection than a 503 while a worker may be back).
    func order(now: Timestamp) -> [Int] {
        let count = endpoints.count
        guard count > 0 else { return [] }
        let start = next.wrappingAdd(1, ordering: .relaxed).oldValue
        return breakers.withLock { b in
            var available: [Int] = []
            var open: [Int] = []
            for k in 0..<count {
                let i = (start &+ k) % count
                let idx = i < 0 ? i + count : i
                if b[idx].allowRequest(now: now) { available.append(idx) } else { open.append(idx) }
            }
            return available + open
        }
    }

    /// Sends `POST /api/<task>` to a worker of this pool. Unreachable and saturated workers move on to the next
    /// worker (nothing ran there). A connection that drops after the request was sent means the worker died while
    /// the task may have been running: that ends the call (`workerCrashed`), unless the task opted in to `reruns`
    /// extra attempts on other workers (at-least-once), each with the next attempt number.
    public func call(task: String, taskID: String, body: [UInt8], deadline: NIODeadline, reruns: Int = 0) async throws(Failure) -> Answer {
        var attempt = 1
        var lastError = "no worker is configured for pool '\(name)'"
        let payload = ByteBuffer(bytes: body)
        for index in order(now: .now()) {
            let endpoint = endpoints[index]
            var headers = HTTPHeaders()
            headers.add(name: "Content-Type", value: "application/json")
            headers.add(name: "X-Neutrino-Task-Id", value: taskID)
            headers.add(name: "X-Neutrino-Attempt", value: String(attempt))
            if let callerRecords { headers.add(name: "X-Neutrino-Caller-Records", value: callerRecords) }
            do {
                var reply = try await connections[index].send(path: "/api/\(task)", headers: headers, body: payload, deadline: deadline)
                if reply.status == 503 {
                    // Saturated: it ran nothing; another worker may have room.
                    lastError = "worker \(endpoint.url) is saturated"
                    continue
                }
                breakers.withLock { $0[index].recordSuccess() }
                var answerHeaders: [String: String] = [:]
                for h in reply.headers where h.name.lowercased().hasPrefix("x-neutrino-") { answerHeaders[h.name.lowercased()] = h.value }
                let bytes = reply.body.readBytes(length: reply.body.readableBytes) ?? []
                return Answer(status: reply.status, headers: answerHeaders, body: bytes, endpoint: endpoint.url)
            } catch {
                switch error {
                case .timedOut: throw .timedOut  // a slow task, not a broken worker
                case .saturated(let limit):
                    // Every connection to it is busy: nothing was sent, the worker is fine; try the next one.
                    HTTPRejections.count("worker_connections")
                    lastError = "all \(limit) connections to worker \(endpoint.url) are busy (--worker-connections)"
                    continue
                case .answerTooLarge(let limit):
                    breakers.withLock { $0[index].recordSuccess() }
                    throw .answerTooLarge(limit: limit)
                default: break
                }
                breakers.withLock { $0[index].recordFailure(now: .now()) }
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
        throw .noWorkerAvailable(lastError)
    }

    /// Closes idle connections.
    public func close() {
        for c in connections { c.close() }
    }
}
