import NIOPosix
import NeutrinoCore
import Synchronization

/// Queries behind the polling API. SQLite calls block, so they run on a small NIO thread pool of their own,
/// never on the event loops or Swift's cooperative pool; each query borrows one of a few read connections
/// (WAL lets them read while the writer commits).
public final class TaskLogReader: Sendable {
    private let pool: NIOThreadPool
    private let connections: ConnectionStack
    private let path: String
    private let watch = WatchConnection()

    public init(path: String, threads: Int = 2) throws {
        self.path = path
        // Make sure the file and schema exist before opening read connections.
        let db = try SQLiteConnection(path: path)
        try TaskLogSchema.prepare(db)
        connections = ConnectionStack(first: db)
        pool = NIOThreadPool(numberOfThreads: threads)
        pool.start()
    }

    public func shutdown() async {
        try? await pool.shutdownGracefully()
    }

    public func record(id: String) async throws -> TaskRecord? {
        try await withStore { try $0.record(id: id) }
    }

    /// The status of task `id` alone (nil: no such task).
    public func status(id: String) async throws -> TaskStatus? {
        try await withStore { try $0.status(id: id) }
    }

    public func events(taskID: String) async throws -> [TaskEventRecord] {
        try await withStore { try $0.events(taskID: taskID) }
    }

    /// The record and its event timeline, read in one go.
    public func recordWithEvents(id: String) async throws -> (TaskRecord, [TaskEventRecord])? {
        try await withStore { store in
            guard let r = try store.record(id: id) else { return nil }
            return (r, try store.events(taskID: id))
        }
    }

    public func list(_ filter: TaskListFilter) async throws -> [TaskRecord] {
        try await withStore { try $0.list(filter) }
    }

    /// Claims `key` for `taskID` unless it already names a task created within `window`; returns the task the key
    /// names now (the earlier one, or `taskID`). One short write transaction, safe across gateway replicas on one file.
    public func claimIdempotencyKey(_ key: String, taskID: String, window: Duration) async throws -> String {
        try await withStore { try $0.claim(key: key, taskID: taskID, now: .now(), windowMs: window.wholeMilliseconds) }
    }

    // MINIMAL ADDITION (branch `harden`, issue 13): fingerprinted claims and their release; see TaskLogStore.claim.

    /// Claims `key` for `taskID`, remembering `fingerprint` (what the request asked for), unless the key names a task
    /// claimed within `window`: then that task and the fingerprint it was claimed with.
    public func claimIdempotencyKey(_ key: String, taskID: String, fingerprint: String, window: Duration) async throws -> IdempotencyClaim {
        try await withStore {
            try $0.claim(key: key, taskID: taskID, fingerprint: fingerprint, now: .now(), windowMs: window.wholeMilliseconds)
        }
    }

    /// Frees `key` if it still names `taskID` (its task was never queued); true if it did.
    @discardableResult
    public func releaseIdempotencyKey(_ key: String, taskID: String) async throws -> Bool {
        try await withStore { try $0.release(key: key, taskID: taskID) }
    }

    /// The ids among `ids` whose task is in a terminal status.
    public func terminal(among ids: [String]) async throws -> Set<String> {
        guard !ids.isEmpty else { return [] }
        return try await withStore { try $0.terminal(among: ids) }
    }

    /// SQLite's `data_version` on one dedicated connection: it changes whenever another connection (any process)
    /// commits, so one cheap query tells a watcher whether anything can have changed.
    public func dataVersion() async throws -> Int {
        let path = self.path
        return try await pool.runIfActive { [watch] in
            try watch.dataVersion(path: path)
        }
    }

    func withStore<T: Sendable>(_ body: @escaping @Sendable (TaskLogStore) throws -> T) async throws -> T {
        let path = self.path
        return try await pool.runIfActive { [connections] in
            let conn = try connections.pop() ?? UncheckedBox(SQLiteConnection(path: path))
            defer { connections.push(conn) }
            return try body(TaskLogStore(db: conn.value))
        }
    }
}

/// Idle read connections; one is borrowed per query.
private final class ConnectionStack: Sendable {
    private let idle: Mutex<[UncheckedBox<SQLiteConnection>]>
    init(first: SQLiteConnection) { idle = Mutex([UncheckedBox(first)]) }
    func pop() -> UncheckedBox<SQLiteConnection>? { idle.withLock { $0.popLast() } }
    func push(_ c: UncheckedBox<SQLiteConnection>) { idle.withLock { $0.append(c) } }
}

/// The one connection `data_version` is read on (the value is per connection).
private final class WatchConnection: Sendable {
    private let connection = Mutex(UncheckedBox<SQLiteConnection?>(nil))

    func dataVersion(path: String) throws -> Int {
        try connection.withLock { box in
            if box.value == nil { box = UncheckedBox(try SQLiteConnection(path: path, readOnly: true)) }
            guard let db = box.value else { return 0 }
            return try db.withStatement("PRAGMA data_version") { try $0.step() ? ($0.int(0) ?? 0) : 0 }
        }
    }
}
