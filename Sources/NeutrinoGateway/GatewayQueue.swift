import Logging
import NeutrinoCore
import NeutrinoNATS

/// The gateway's side of the JetStream path: provisioning at start-up, publishing async and gpu tasks with
/// `Nats-Msg-Id = task_id`, and broadcasting cancellations.
public final class GatewayQueue: Sendable {
    let connection: NATSConnection
    let js: JetStream

    public enum Failure: Error, Sendable, CustomStringConvertible {
        case unavailable(String)
        public var description: String { if case .unavailable(let m) = self { m } else { "" } }
    }

    /// Connects to `url` (retrying in the background when the server is down) and provisions every queued pool of
    /// `manifest`. A server that is down at start-up does not stop the gateway: submits answer 503 until it is up.
    public static func start(url: String, manifest: Manifest, ackWait: Duration, logger: Logger) async throws -> GatewayQueue {
        let connection = try await NATSConnection.connect(url: url, name: "neutrino-gateway", logger: logger)
        let queue = GatewayQueue(connection: connection, js: try connection.jetStream())
        var pools: [String: [Int]] = [:]
        for task in manifest.tasks.values where task.spec.mode.isQueued { pools[task.spec.pool, default: []].append(task.spec.retries) }
        let wanted = pools.mapValues { QueueLayout.maxDeliver(retries: $0) }
        if !wanted.isEmpty {
            // Provision in the background until it succeeds: NATS may come up after the gateway.
            Task {
                for attempt in 0..<Int.max {
                    do {
                        try await TaskQueueProvisioning.ensure(queue.js, pools: wanted, ackWait: ackWait, logger: logger)
                        return
                    } catch {
                        if attempt % 20 == 0 { logger.warning("JetStream provisioning failed; retrying", metadata: ["error": "\(error)"]) }
                        try? await Task.sleep(for: .milliseconds(500))
                    }
                }
            }
        }
        return queue
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
        do {
            _ = try await js.publish(subject: QueueLayout.taskSubject(pool: spec.pool, task: spec.name), data: body, msgID: taskID,
                                     timeout: .seconds(5))
        } catch {
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
