import Logging
import NeutrinoCore
import NeutrinoNATS

/// The gateway's side of the JetStream path: publishing async and gpu tasks with
/// `Nats-Msg-Id = task_id`, and broadcasting cancellations.
public final class GatewayQueue: Sendable {
    let connection: NATSConnection
    let js: JetStream
    let logger: Logger

    public enum Failure: Error, Sendable, CustomStringConvertible {
        case unavailable(String)
        /// The message (with its headers) is larger than the server's `max_payload`: no retry can succeed.
        case tooLarge(size: Int, limit: Int)
        public var description: String {
            switch self {
            case .unavailable(let m): m
            case .tooLarge(let size, let limit):
                "the task's message is \(size) bytes with its headers; the NATS server accepts at most \(limit) (max_payload)"
            }
        }
    }

    /// Bytes allowed for the headers of a task message (`NATS/1.0`, `Nats-Msg-Id: <task id>`, with tracing on
    /// `traceparent: <55 characters>`): more than they take.
    public static let headerAllowance = 256

    /// The server's `max_payload` (payload and headers together), once known.
    public var maxPayload: Int? { connection.maxPayload }

    /// Why a task whose body is `bodyBytes` long cannot be published, if it cannot: nil when it fits (or the
    /// limit is not known yet).
    public func refusal(bodyBytes: Int) -> Failure? {
        guard let limit = maxPayload else { return nil }
        let size = bodyBytes.addingReportingOverflow(Self.headerAllowance)
        guard size.overflow || size.partialValue > limit else { return nil }
        return .tooLarge(size: size.overflow ? Int.max : size.partialValue, limit: limit)
    }

    /// Connects to `url`, one server or a cluster's members comma-separated (cnats keeps reconnecting in the
    /// background when the server is down, and fails over between a cluster's members). Provisioning the streams
    /// and pool consumers is the `QueueProvisioner` service's job, with `streamReplicas` (nil: 1 for one server, 3
    /// for several; see `StreamReplication.forServers`): a server that is down at start-up does not stop the
    /// gateway, submits answer 503 until it is up.
    public static func connect(url: String, streamReplicas: Int? = nil, auth: NATSAuth = NATSAuth(), logger: Logger) async throws -> GatewayQueue {
        var options = NATSConnection.Options()
        options.auth = auth
        options.replication = .forServers(NATSConnection.serverList(url).count, explicit: streamReplicas)
        let connection = try await NATSConnection.connect(url: url, name: "neutrino-gateway", logger: logger, options: options)
        return GatewayQueue(connection: connection, js: try connection.jetStream(), logger: logger)
    }

    private init(connection: NATSConnection, js: JetStream, logger: Logger) {
        self.connection = connection
        self.js = js
        self.logger = logger
    }

    public var isConnected: Bool { connection.isConnected }

    /// How long a publish keeps trying before the task is refused (503).
    public static let publishBudget = Duration.seconds(5)

    /// Publishes a task; returns once JetStream has stored it (or already had it: the duplicate window).
    /// Refuses at once while disconnected, rather than leaving a buffered message that might be stored later.
    ///
    /// A publish that gets no ack within `attemptTimeout` (a stream leader being elected after its server died,
    /// a reconnect to another server of the cluster) is sent again with the same `Nats-Msg-Id` until `budget` has
    /// passed: whichever copy the new leader stores first is the task, the others are answered as duplicates.
    /// When the budget runs out the task is refused (503), and, since a copy may still be stored by a leader
    /// elected later, it is marked settled (`failed`) in the background so that no worker runs it.
    public func publish(
        spec: TaskSpec, taskID: String, body: [UInt8], headers: [String: String] = [:], budget: Duration = GatewayQueue.publishBudget,
        attemptTimeout: Duration = .milliseconds(1500)
    ) async throws(Failure) {
        guard connection.isConnected else { throw .unavailable("not connected to NATS") }
        if let refusal = refusal(bodyBytes: body.count) { throw refusal }
        let clock = ContinuousClock()
        let deadline = clock.now + budget
        var attempts = 0
        var lastError: any Error = Failure.unavailable("no publish attempt")
        while true {
            let remaining = deadline - clock.now
            if remaining <= .zero { break }
            attempts += 1
            do {
                _ = try await js.publish(
                    subject: QueueLayout.taskSubject(pool: spec.pool, task: spec.name), data: body,
                    msgID: taskID, headers: headers, timeout: min(attemptTimeout, remaining))
                return
            } catch let error as NATSError where error.isUnavailable {
                lastError = error
                // No leader yet, or the connection moves to another server: a short pause, then the same message.
                let pause = min(Duration.milliseconds(100), deadline - clock.now)
                if pause > .zero { try? await Task.sleep(for: pause) }
            } catch {
                // Refused by the server (not a transient condition): nothing was stored. The server's limit may have
                // changed since it was learnt: a refused size is final, not a retry.
                if let refusal = refusal(bodyBytes: body.count) { throw refusal }
                throw .unavailable("\(error)")
            }
        }
        settleRefusedInBackground(pool: spec.pool, taskID: taskID)
        throw .unavailable("no acknowledgement after \(attempts) attempt\(attempts == 1 ? "" : "s") in \(budget): \(lastError)")
    }

    /// Marks a task the gateway refused as settled (`failed`) on `NEUTRINO_SETTLED`, retrying for up to two minutes:
    /// a copy of it stored after all (by a leader elected after the gateway gave up, or a publish cnats sent after a
    /// reconnect) is then skipped by the worker that receives it, as is the case with the task log's `failed` row.
    private func settleRefusedInBackground(pool: String, taskID: String) {
        let js = self.js
        let logger = self.logger
        Task.detached {
            let clock = ContinuousClock()
            let deadline = clock.now + .seconds(120)
            while clock.now < deadline && !js.connection.isClosed {
                do {
                    try await js.markSettled(pool: pool, taskID: taskID, status: .failed, timeout: .seconds(2))
                    return
                } catch {
                    try? await Task.sleep(for: .seconds(1))
                }
            }
            logger.warning(
                "could not mark a refused task settled; a copy stored after all may still run",
                metadata: ["task_id": "\(taskID)"])
        }
    }

    /// Tells every worker that `taskID` is cancelled (skip it if queued, interrupt it if running).
    public func broadcastCancel(taskID: String) async throws(Failure) {
        do {
            try await connection.publish(subject: QueueLayout.cancelSubject, data: Array(taskID.utf8))
        } catch {
            throw .unavailable("\(error)")
        }
    }

    /// Stores the cancellation of a queued task on `NEUTRINO_SETTLED`, where workers without the task log look
    /// before running a task.
    public func recordCancel(pool: String, taskID: String) async throws(Failure) {
        do {
            try await js.markSettled(pool: pool, taskID: taskID, status: .cancelled, timeout: .seconds(5))
        } catch {
            throw .unavailable("\(error)")
        }
    }

    public func close() async { await connection.close() }
}
