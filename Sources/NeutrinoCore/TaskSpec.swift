/// How a task is executed: sync over HTTP to a fast worker, or through JetStream for async and gpu pools.
public enum ExecutionMode: String, Sendable, Codable, CaseIterable {
    case sync, async, gpu

    /// Whether tasks of this mode go through NATS JetStream.
    public var isQueued: Bool { self != .sync }
}

/// One task as the manifest (and the worker's imported app) describes it.
public struct TaskSpec: Sendable, Hashable, Codable {
    public var name: String
    public var mode: ExecutionMode
    public var pool: String
    public var timeoutMs: Int
    public var retries: Int
    /// Whether the task is an `async def`, run in a worker's coroutine slots (true), or a plain function, run on one of
    /// its Python threads (false): the manifest's `x-neutrino-coroutine`; nil where the manifest does not say.
    public var coroutine: Bool?

    public init(name: String, mode: ExecutionMode, pool: String, timeoutMs: Int, retries: Int, coroutine: Bool? = nil) {
        self.name = name
        self.mode = mode
        self.pool = pool
        self.timeoutMs = timeoutMs
        self.retries = retries
        self.coroutine = coroutine
    }

    enum CodingKeys: String, CodingKey {
        case name
        case mode = "execution_mode"
        case pool
        case timeoutMs = "timeout_ms"
        case retries
    }

    /// Task and pool names become URL segments and NATS subject tokens: `[a-z0-9_]+`.
    public static func isValidName(_ name: String) -> Bool {
        !name.isEmpty && name.utf8.allSatisfy { ($0 >= 97 && $0 <= 122) || ($0 >= 48 && $0 <= 57) || $0 == 95 }
    }

    /// The longest a sync task may run: longer work belongs on a queue.
    public static let maxSyncTimeoutMs = 5000
}
