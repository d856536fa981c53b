import FoundationEssentials
import NeutrinoCore

/// Everything `neutrino-gateway` is told on its command line.
public struct GatewayConfiguration: Sendable {
    public var manifestPath: String
    /// Sync pool name → worker base URLs.
    public var httpPools: [String: [String]]
    /// Path of the SQLite task log, or nil to run without one (the polling API then answers 503).
    public var taskLogPath: String?
    public var host: String
    public var port: Int
    public var maxBodyBytes: Int
    /// Added to a task's timeout before the gateway gives up on its worker (the worker answers 504 first).
    public var timeoutGraceMs: Int
    /// NATS server URL(s) for async and gpu tasks (without it they answer 501): one server, or the members of a
    /// cluster comma-separated (the connection fails over between them).
    public var natsURL: String?
    /// `--stream-replicas`: the replica count of the streams the gateway provisions (pool consumers inherit it),
    /// reconciled on existing streams; nil: 1 for one server, 3 when several are given, applied to new streams only.
    public var streamReplicas: Int?
    /// NATS user, password and TLS files (`--nats-user`, `NEUTRINO_NATS_PASSWORD`, `--nats-tls-ca`, ...).
    public var natsAuth = NATSAuth()
    /// AckWait of the pool consumers the gateway provisions.
    public var ackWait: Duration
    /// The folder `GET /` serves the dashboard from, if any.
    public var dashboardDirectory: String?
    /// A worker not heard from for this long leaves the live set.
    public var heartbeatTimeout: Duration = .seconds(6)
    /// How long a sync call waits for a reachable worker of its pool before it answers 503: when the pool has no worker
    /// at all, for one to join from its heartbeat (a gateway that just started, a pool scaled to zero); when every
    /// worker refused the connection, for one to come back (restarting after a crash, replaced in a rolling update).
    /// Zero answers at once. A saturated worker is alive: its 503 never waits.
    public var workerJoinWait: Duration = .seconds(5)
    /// `--scale POOL=MIN:MAX[:TARGET[:WINDOW]]` texts by pool, checked against the manifest's modes at start-up.
    public var scaling: [String: String] = [:]
    /// Cluster mode of the task log: consume NEUTRINO_EVENTS into this gateway's file and publish its own events there.
    public var eventsViaNATS = false
    /// Cluster mode: how long another replica's events may take to reach this one. A lookup of an unknown task id
    /// younger than this waits for it (read-your-writes across replicas, see `ReplicaCatchUp`); zero answers 404 at once.
    public var replicationLagBound: Duration = .seconds(5)
    /// Names this gateway's durable events consumer (`events_<id>`).
    public var gatewayID = "gateway"
    /// Terminal tasks older than this are deleted from the task log (with their events), in small batches off the
    /// request path; nil keeps everything.
    public var retention: Duration? = .seconds(7 * 24 * 3600)

    // Limits (README "Input semantics and limits"). Each refusal is counted in neutrino_http_rejected_total{reason}.
    /// A request's head must arrive within this (from the connection's start, or the request's first byte): else 408.
    public var headerTimeout: Duration = .seconds(10)
    /// A request's body must arrive within this after its head: else 408.
    public var bodyTimeout: Duration = .seconds(30)
    /// A kept-alive connection without a request for this long is closed.
    public var idleTimeout: Duration = .seconds(60)
    /// Open client connections; more are answered 503 and closed.
    public var maxConnections = 1024
    /// The largest request head (request line and headers): 431 above.
    public var maxHeaderBytes = 32 * 1024
    /// Requests parked in `?wait=` at once: 503 above.
    public var maxLongPollWaiters = 10_000
    /// Open `GET /events` streams: 503 above.
    public var maxSSESubscribers = 256
    /// Events a resuming `GET /events` client is sent from the table at most; further behind it gets `event: gap`.
    public var sseBacklog = 1000
    /// Connections from this gateway to each sync worker; when all are busy the call goes to the next worker.
    public var workerConnections = 128
    /// Sync calls of a pool that wait for room while every worker is at capacity (each within its task's timeout); one
    /// more is answered 503 at once. 0: none wait.
    public var maxWaitingCalls = 1024
    /// The largest answer read from a sync worker: 502 above.
    public var maxWorkerAnswerBytes = 16 << 20
    /// A request forwarded to the mounted ASGI app must get its answer's head within this (its body may stream longer).
    public var asgiHeadTimeout: Duration = .seconds(60)
    /// The largest `GET /tasks` body; a page is cut short (`truncated`, `next_before`) before it.
    public var maxListBytes = 4 << 20

    /// Access control (`--api-keys`, `--insecure-no-auth`, `--allowed-host`, `--cors-origin`, `--metrics-token`,
    /// `--default-rate`): see `AccessConfiguration`.
    public var access = AccessConfiguration()

    public init(
        manifestPath: String, httpPools: [String: [String]], taskLogPath: String?, host: String = "127.0.0.1",
        port: Int = 8080, maxBodyBytes: Int = 1 << 20, timeoutGraceMs: Int = 2000, natsURL: String? = nil,
        ackWait: Duration = .seconds(30)
    ) {
        self.manifestPath = manifestPath
        self.httpPools = httpPools
        self.taskLogPath = taskLogPath
        self.host = host
        self.port = port
        self.maxBodyBytes = maxBodyBytes
        self.timeoutGraceMs = timeoutGraceMs
        self.natsURL = natsURL
        self.ackWait = ackWait
    }

    /// Parses one `--http-pool NAME=URL[,URL…]` flag.
    public static func parsePool(_ argument: String) -> (String, [String])? {
        guard let eq = argument.firstIndex(of: "=") else { return nil }
        let name = String(argument[..<eq])
        let urls = argument[argument.index(after: eq)...].split(separator: ",").map { $0.trimmingWhitespace() }
        guard TaskSpec.isValidName(name), !urls.isEmpty,
            urls.allSatisfy({ $0.hasPrefix("http://") || $0.hasPrefix("https://") })
        else { return nil }
        return (name, urls)
    }
}
