import NeutrinoCore

/// Where lifecycle events go: straight into the shared SQLite file, published on NATS for the gateway to record
/// (`nats`, for pools spread over nodes), or nowhere (a worker run by hand).
public enum TaskLogTarget: Sendable, Hashable {
    case sqlite(path: String)
    case nats
    case none

    /// Parses `sqlite:PATH`, `nats` or `none`.
    public init?(argument: String) {
        if argument == "none" { self = .none; return }
        if argument == "nats" { self = .nats; return }
        guard argument.hasPrefix("sqlite:"), argument.count > "sqlite:".count else { return nil }
        self = .sqlite(path: String(argument.dropFirst("sqlite:".count)))
    }
}

public enum WorkerMode: String, Sendable, CaseIterable {
    case http
    case nats
}

/// Everything `neutrino-worker` is told on its command line.
public struct WorkerConfiguration: Sendable {
    public var mode: WorkerMode
    public var pool: String
    public var app: String
    public var host: String
    public var port: Int
    public var concurrency: Int
    public var taskLog: TaskLogTarget
    public var pythonPaths: [String]
    public var workerID: String
    public var maxBodyBytes: Int
    public var maxQueued: Int
    /// NATS server URL(s) for `--mode nats`, heartbeats and `--task-log nats`: one server, or the members of a
    /// cluster comma-separated (the connection fails over between them).
    public var natsURL: String?
    /// `--stream-replicas`: the replica count of the streams this worker provisions (its pool's consumer inherits
    /// it), reconciled on existing streams; nil: 1 for one server, 3 when several are given, applied to new
    /// streams only.
    public var streamReplicas: Int?
    /// NATS user, password and TLS files (`--nats-user`, `NEUTRINO_NATS_PASSWORD`, `--nats-tls-ca`, ...).
    public var natsAuth = NATSAuth()
    /// The pool consumer's AckWait; `InProgress` heartbeats go out every third of it while a task runs.
    public var ackWait: Duration
    /// How long SIGTERM waits for running tasks before handing them back to the queue.
    public var drainGrace: Duration
    /// How often the worker announces itself on `neutrino.heartbeat.<pool>` (with `--nats`).
    public var heartbeatInterval: Duration = .seconds(2)
    /// The host the heartbeats announce in the worker's URL (gateways route sync calls there); nil: `host`. Needed
    /// when `host` is a wildcard (`0.0.0.0` in a pod: announce the pod IP).
    public var advertiseHost: String?
    /// `--mode http`: how long SIGTERM keeps serving after the `stopping` heartbeat, so every gateway has stopped
    /// routing here before the server stops taking requests (then the calls in flight finish).
    public var stopDelay: Duration = .milliseconds(500)
    /// How long a task may run past its timeout (after the injected exception) before its thread is given up on.
    public var hardTimeoutGrace: Duration = .seconds(5)
    /// `async def` tasks in flight at once on the worker's event loop (`--max-coroutines`).
    public var maxCoroutines = 512
    /// A request to the mounted ASGI app that has not started its answer after this is cancelled and answered 504, so
    /// an app that never answers cannot hold its coroutine slot (`--asgi-head-timeout`).
    public var asgiHeadTimeout: Duration = .seconds(60)
    /// Threads given up on and still blocked before the worker recycles itself.
    public var maxLeakedThreads = 8
    /// Recycle after this many tasks (0: never).
    public var maxTasksPerWorker = 0
    /// Recycle once resident memory passes this many MB after a task (0: never).
    public var maxRSSMB = 0
    /// How often the supervisor has restarted this worker slot (`NEUTRINO_WORKER_RESTARTS`), for the heartbeats.
    public var restarts = 0
    /// A sync call whose caller records its lifecycle (the gateway) is recorded `running` by the worker only once it
    /// has run this long (`--running-visible-after-ms`); shorter calls cost the worker no task-log write.
    public var runningVisibleAfter: Duration = .milliseconds(250)
    /// `--mode http`: the port of the call lane, the listener for the gateways' sync calls without HTTP (0: any
    /// free port, announced on each call's answer); nil: no lane, the gateways call over HTTP.
    public var callLanePort: Int? = 0

    public init(
        mode: WorkerMode, pool: String, app: String, host: String = "127.0.0.1", port: Int = 0,
        concurrency: Int = 2, taskLog: TaskLogTarget = .none, pythonPaths: [String] = [],
        workerID: String, maxBodyBytes: Int = 16 << 20, maxQueued: Int = 1024, natsURL: String? = nil,
        ackWait: Duration = .seconds(30), drainGrace: Duration = .seconds(30)
    ) {
        self.mode = mode
        self.pool = pool
        self.app = app
        self.host = host
        self.port = port
        self.concurrency = concurrency
        self.taskLog = taskLog
        self.pythonPaths = pythonPaths
        self.workerID = workerID
        self.maxBodyBytes = maxBodyBytes
        self.maxQueued = maxQueued
        self.natsURL = natsURL
        self.ackWait = ackWait
        self.drainGrace = drainGrace
    }
}
