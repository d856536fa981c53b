import AsyncHTTPClient
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import NeutrinoCore
import NeutrinoHTTP
import Synchronization

/// The fast workers of one sync pool: round robin over the workers whose circuit is closed, over pooled
/// keep-alive connections (one shared AsyncHTTPClient). A worker that cannot be reached is skipped and the call
/// goes to the next one, so one dead worker costs no failed request while another is healthy.
public final class WorkerPool: Sendable {
    public struct Endpoint: Sendable, Hashable {
        public var url: String
        public init(url: String) { self.url = url.hasSuffix("/") ? String(url.dropLast()) : url }
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
    }

    public let name: String
    public let endpoints: [Endpoint]
    private let breakers: Mutex<[CircuitBreaker]>
    private let next = Atomic<Int>(0)
    private let client: HTTPClient
    private let logger: Logger

    public init(name: String, endpoints: [Endpoint], client: HTTPClient, logger: Logger) {
        self.name = name
        self.endpoints = endpoints
        self.breakers = Mutex(Array(repeating: CircuitBreaker(), count: endpoints.count))
        self.client = client
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

    /// Sends `POST /api/<task>` to a worker of this pool. Connection failures and saturated workers move on to the
    /// next worker; a connection that drops mid-call is retried once elsewhere with the next attempt number.
    public func call(task: String, taskID: String, body: [UInt8], deadline: NIODeadline) async throws(Failure) -> Answer {
        var attempt = 1
        var lastError = "no worker is configured for pool '\(name)'"
        var retriedLostConnection = false
        for index in order(now: .now()) {
            let endpoint = endpoints[index]
            var headers = HTTPHeaders()
            headers.add(name: "Content-Type", value: "application/json")
            headers.add(name: "X-Neutrino-Task-Id", value: taskID)
            headers.add(name: "X-Neutrino-Attempt", value: String(attempt))
            do {
                // The future-based API collects the body on the event loop: fewer hops than the async one.
                let request = try HTTPClient.Request(url: "\(endpoint.url)/api/\(task)", method: .POST, headers: headers,
                                                     body: .byteBuffer(ByteBuffer(bytes: body)))
                let response = try await client.execute(request: request, eventLoop: .indifferent, deadline: deadline,
                                                        logger: nil).get()
                var buffer = response.body ?? ByteBuffer()
                let bytes = buffer.readBytes(length: buffer.readableBytes) ?? []
                if response.status.code == 503 {
                    // Saturated: it ran nothing; another worker may have room.
                    lastError = "worker \(endpoint.url) is saturated"
                    continue
                }
                breakers.withLock { $0[index].recordSuccess() }
                var answerHeaders: [String: String] = [:]
                for h in response.headers where h.name.lowercased().hasPrefix("x-neutrino-") { answerHeaders[h.name.lowercased()] = h.value }
                return Answer(status: Int(response.status.code), headers: answerHeaders, body: bytes, endpoint: endpoint.url)
            } catch {
                if Self.isDeadline(error) { throw .timedOut }
                lastError = "worker \(endpoint.url): \(error)"
                breakers.withLock { $0[index].recordFailure(now: .now()) }
                logger.warning("worker unreachable", metadata: ["pool": "\(name)", "worker": "\(endpoint.url)", "error": "\(error)"])
                if Self.mayHaveRun(error) {
                    guard !retriedLostConnection else { throw .noWorkerAvailable(lastError) }
                    retriedLostConnection = true
                    attempt += 1
                }
            }
        }
        throw .noWorkerAvailable(lastError)
    }

    static func isDeadline(_ error: any Error) -> Bool {
        if let e = error as? HTTPClientError, e == .deadlineExceeded || e == .readTimeout { return true }
        return false
    }

    /// Whether the request may have reached the worker before the connection broke (so the task may have run).
    static func mayHaveRun(_ error: any Error) -> Bool {
        if let e = error as? HTTPClientError, e == .remoteConnectionClosed { return true }
        return false
    }
}
