/// What a worker announces about itself every few seconds on `neutrino.heartbeat.<pool>` (NATS core). The gateway
/// keeps the live set per pool from these, and forgets a worker that stops sending them.
public struct WorkerHeartbeat: Sendable, Hashable {
    public var workerID: String
    public var pool: String
    /// `http` or `nats`.
    public var mode: String
    public var concurrency: Int
    public var busy: Int
    public var gpu: Bool
    public var version: String
    public var startedAt: Timestamp
    public var host: String
    public var pid: Int
    /// Where its HTTP server listens (sync calls for `http`, health and metrics for both), if it has one.
    public var url: String?
    /// Sent once when the worker begins to drain: the gateway drops it at once.
    public var stopping: Bool
    /// How often its supervisor has restarted this worker slot (crashes and recycles; `NEUTRINO_WORKER_RESTARTS`).
    public var restarts: Int = 0
    /// Coroutine slots (`--max-coroutines`, when the worker's pool has `async def` tasks) and how many are taken.
    /// `concurrency` and `busy` count Python threads only: a pool's thread utilisation and its coroutine utilisation
    /// are separate figures (512 idle coroutine slots say nothing about how busy its threads are).
    public var coroutines: Int = 0
    public var busyCoroutines: Int = 0

    /// Bounds on what a heartbeat may claim: anything read from NATS is validated, and a forged heartbeat with
    /// absurd numbers must not make the gateway's pool arithmetic overflow.
    public static let maxConcurrency = 100_000
    public static let maxRestarts = 1_000_000

    public init(
        workerID: String, pool: String, mode: String, concurrency: Int, busy: Int, gpu: Bool, version: String,
        startedAt: Timestamp, host: String, pid: Int, url: String?, stopping: Bool = false
    ) {
        self.workerID = workerID
        self.pool = pool
        self.mode = mode
        self.concurrency = concurrency
        self.busy = busy
        self.gpu = gpu
        self.version = version
        self.startedAt = startedAt
        self.host = host
        self.pid = pid
        self.url = url
        self.stopping = stopping
    }

    public static func subject(pool: String) -> String { "neutrino.heartbeat.\(pool)" }
    public static let wildcardSubject = "neutrino.heartbeat.>"

    public func write(to w: inout JSONWriter) {
        w.beginObject()
        w.key("worker_id"); w.string(workerID)
        w.key("pool"); w.string(pool)
        w.key("mode"); w.string(mode)
        w.key("concurrency"); w.int(concurrency)
        w.key("busy"); w.int(busy)
        w.key("gpu"); w.bool(gpu)
        w.key("version"); w.string(version)
        w.key("started_at"); w.string(startedAt.iso8601)
        w.key("host"); w.string(host)
        w.key("pid"); w.int(pid)
        w.key("url"); w.stringOrNull(url)
        w.key("stopping"); w.bool(stopping)
        w.key("restarts"); w.int(restarts)
        w.key("coroutines"); w.int(coroutines)
        w.key("busy_coroutines"); w.int(busyCoroutines)
        w.endObject()
    }

    public var json: [UInt8] {
        var w = JSONWriter(capacity: 256)
        write(to: &w)
        return w.bytes
    }

    /// Parses a heartbeat; nil for anything that is not one (a foreign publisher must not break the gateway).
    public init?(json bytes: [UInt8]) {
        guard let value = try? JSONParser.parse(bytes), case .object(let o) = value,
            let id = o["worker_id"]?.stringValue, !id.isEmpty,
            let pool = o["pool"]?.stringValue, TaskSpec.isValidName(pool)
        else { return nil }
        self.workerID = id
        self.pool = pool
        self.mode = o["mode"]?.stringValue ?? "unknown"
        self.concurrency = min(max(0, o["concurrency"]?.intValue ?? 0), Self.maxConcurrency)
        self.busy = min(max(0, o["busy"]?.intValue ?? 0), self.concurrency)
        self.restarts = min(max(0, o["restarts"]?.intValue ?? 0), Self.maxRestarts)
        self.coroutines = min(max(0, o["coroutines"]?.intValue ?? 0), Self.maxConcurrency)
        self.busyCoroutines = min(max(0, o["busy_coroutines"]?.intValue ?? 0), self.coroutines)
        if case .bool(let g) = o["gpu"] { self.gpu = g } else { self.gpu = false }
        self.version = o["version"]?.stringValue ?? ""
        self.startedAt = o["started_at"]?.stringValue.flatMap { Timestamp(iso8601: $0) } ?? Timestamp(millis: 0)
        self.host = o["host"]?.stringValue ?? ""
        self.pid = o["pid"]?.intValue ?? 0
        self.url = o["url"]?.stringValue
        if case .bool(let s) = o["stopping"] { self.stopping = s } else { self.stopping = false }
    }
}

/// The version workers and the gateway report.
public enum NeutrinoVersion {
    public static let current = "0.1.0"
}
