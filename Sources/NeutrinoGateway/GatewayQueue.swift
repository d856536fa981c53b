import Logging
import NeutrinoCore
import NeutrinoNATS

/// The gateway's side of the JetStream path: publishing async and gpu tasks with
/// `Nats-Msg-Id = task_id`, and broadcasting cancellations.
public final class GatewayQueue: Sendable {
    let connection: NATSConnection
    let js: JetStream

    public enum Failure: Error, Sendable, CustomStringConvertible {
        case unavailable(String)
        /// The message (with its headers) is larger than the server's `max_payload`: no retry can succeed.
        case tooLarge(size: Int, limit: Int)
        public var description: String {
            switch self {
            case .unavailable(let m): m
            case .tooLarge(let size, let limit): "the task's message is \(size) bytes with its headers; the NATS server accepts at most \(limit) (max_payload)"
            }
        }
    }

    /// Bytes allowed for the headers of a task message (`NATS/1.0`, `Nats-Msg-Id: <task id>`): more than they take.
    public static let headerAllowance = 128

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

    /// Connects to `url` (cnats keeps reconnecting in the background when the server is down). Provisioning the
    /// streams and pool consumers is the `QueueProvisioner` service's job: a server that is down at start-up does not
    /// stop the gateway, submits answer 503 until it is up.
    public static func connect(url: String, logger: Logger) async throws -> GatewayQueue {
        let connection = try await NATSConnection.connect(url: url, name: "neutrino-gateway", logger: logger)
        return GatewayQueue(connection: connection, js: try connection.jetStream())
    }

    private init(connection: NATSConnection, js: JetStream) {
        self.connection = connection
        self.js = js
    }

    public var isConnected: Bool { connection.isConnected }

    /// Publishes a task; returns once JetStream has stored it (or already had it: the duplicate window).
    /// Refuses at once while disconnected, rather than leaving a buffered message that might be stored later.
    public func publish(spec: TaskSpec, taskID: String, body: [UInt8]) async throws(Failure) {
        guard connection.isConnected else { throw .unavailable("not connected to NATS") }
        if let refusal = refusal(bodyBytes: body.count) { throw refusal }
        do {
            _ = try await js.publish(subject: QueueLayout.taskSubject(pool: spec.pool, task: spec.name), data: body, msgID: taskID,
                                     timeout: .seconds(5))
        } catch {
            // The server's limit may have changed since it was learnt: a refused size is final, not a retry.
            if let refusal = refusal(bodyBytes: body.count) { throw refusal }
            throw .unavailable("\(error)")
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
    public func recordCancel(taskID: String) async throws(Failure) {
        do {
            try await js.markSettled(taskID: taskID, status: .cancelled, timeout: .seconds(5))
        } catch {
            throw .unavailable("\(error)")
        }
    }

    public func close() async { await connection.close() }
}
