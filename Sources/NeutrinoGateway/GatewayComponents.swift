import Hummingbird
import Logging
import NeutrinoCore
import NeutrinoHTTP
import NeutrinoTaskLog

/// What the gateway's controllers share, built once by `buildGateway` (the composition root): the manifest, the
/// sync pools, the task log's sink and reader, the queue, and the monitors that answer from memory.
struct GatewayComponents: Sendable {
    let configuration: GatewayConfiguration
    let manifest: Manifest
    /// Sync pool name → its fast workers.
    let pools: [String: WorkerPool]
    /// Where this gateway records lifecycle events (the SQLite writer, or in cluster mode a tee to NATS too).
    let taskLog: (any TaskEventSink)?
    let reader: TaskLogReader?
    let waiters: TaskWaiters?
    /// NATS: async and gpu tasks, cancellations, heartbeats. Nil without `--nats`.
    let queue: GatewayQueue?
    let workers: WorkerRegistry
    let monitor: PoolMonitor
    let feed: EventFeed?
    /// How long a lookup of a young id that is not in this replica's file yet may wait for it (cluster mode).
    var catchUp = ReplicaCatchUp.none
    /// Sync calls being forwarded now (their rows are written when they end).
    let syncCalls = SyncCallsInFlight()
    /// Submits answered outside the router, running now (waited for at shutdown).
    let claimedSubmits = ClaimedSubmits()
    let logger: Logger

    /// The task `rawID` names, read after this gateway's own events are committed (and, in cluster mode, after
    /// waiting for another replica's young task to arrive, see `ReplicaCatchUp`); or the answer saying why there is
    /// none (404 unknown, 503 no task log).
    func existingTask(_ rawID: String) async -> TaskLookup {
        guard let reader else { return .answer(.noTaskLog) }
        guard TaskID.isValid(rawID) else { return .answer(.error(.taskNotFound, "'\(rawID)' is not a task id")) }
        let id = rawID.lowercased()
        if let pending = syncCalls.reveal(id) { taskLog?.record(pending) }
        await taskLog?.flush()
        do {
            guard let record = try await catchUp.find(id, { try await reader.record(id: id) }) else {
                return .answer(.error(.taskNotFound, "no task with id \(rawID)"))
            }
            return .found(record)
        } catch is ReplicaCatchUp.Full {
            return .answer(.replicaCatchUpFull)
        } catch {
            return .answer(.error(.taskLogUnavailable, "\(error)"))
        }
    }
}

enum TaskLookup {
    case found(TaskRecord)
    case answer(Response)
}

extension Response {
    /// The answer of every task-log route on a gateway started without `--task-log`.
    static var noTaskLog: Response { .error(.taskLogUnavailable, "this gateway runs without a task log (--task-log)") }

    /// Too many lookups wait for other replicas' events (`ReplicaCatchUp.maxWaiting`): retry shortly.
    static var replicaCatchUpFull: Response {
        .error(
            .overloaded, "too many lookups are waiting for other gateway replicas' events; retry shortly",
            headers: [.retryAfter: "1"])
    }

    /// An error about one task: the error body plus its `task_id` and `status`.
    static func taskError(
        _ error: APIError, taskID: String, status: TaskStatus, message: String,
        headers: HTTPFields = [:]
    ) -> Response {
        .error(error, message, headers: headers) { w in
            w.key("task_id"); w.string(taskID)
            w.key("status"); w.string(status.rawValue)
        }
    }
}

extension HTTPFields {
    static func + (lhs: HTTPFields, rhs: HTTPFields) -> HTTPFields {
        var out = lhs
        out.append(contentsOf: rhs)
        return out
    }
}
