import CSQLite
import Glibc

/// The task log's tables. `tasks` is the seed's table plus `attempts`, `progress` and `progress_message`;
/// `task_events` keeps every lifecycle event. Timestamps are ISO-8601 UTC text with milliseconds, which sorts
/// in time order.
enum TaskLogSchema {
    static let version = 3

    static let statements = [
        """
        CREATE TABLE IF NOT EXISTS tasks (
            id TEXT PRIMARY KEY,
            function_name TEXT NOT NULL,
            status TEXT NOT NULL,
            created_at TIMESTAMP NOT NULL,
            started_at TIMESTAMP,
            completed_at TIMESTAMP,
            worker_id TEXT,
            pool TEXT,
            execution_mode TEXT,
            args TEXT,
            result TEXT,
            error TEXT,
            duration_ms REAL,
            attempts INTEGER NOT NULL DEFAULT 0,
            progress REAL,
            progress_message TEXT
        )
        """,
        "CREATE INDEX IF NOT EXISTS idx_status ON tasks(status)",
        "CREATE INDEX IF NOT EXISTS idx_created_at ON tasks(created_at)",
        "CREATE INDEX IF NOT EXISTS idx_function_name ON tasks(function_name)",
        "CREATE INDEX IF NOT EXISTS idx_pool ON tasks(pool)",
        // Last-minute throughput and durations per pool, for /pools (version 3).
        "CREATE INDEX IF NOT EXISTS idx_completed_at ON tasks(completed_at)",
        """
        CREATE TABLE IF NOT EXISTS task_events (
            id INTEGER PRIMARY KEY,
            task_id TEXT NOT NULL,
            event TEXT NOT NULL,
            at TIMESTAMP NOT NULL,
            worker_id TEXT,
            attempt INTEGER NOT NULL DEFAULT 0,
            detail TEXT
        )
        """,
        // One row per (task, event, attempt): the gateway and the worker may both report an outcome.
        "CREATE UNIQUE INDEX IF NOT EXISTS idx_task_events_unique ON task_events(task_id, event, attempt)",
        // Idempotency-Key → the task it created, for the gateway's dedup window (version 2).
        """
        CREATE TABLE IF NOT EXISTS idempotency_keys (
            key TEXT PRIMARY KEY,
            task_id TEXT NOT NULL,
            created_at TIMESTAMP NOT NULL
        )
        """,
    ]

    /// Opens `path` for writing: WAL, NORMAL sync (a commit is a WAL append, not a disk sync), busy timeout,
    /// and the schema, created once under a write lock so several processes can start together.
    static func prepare(_ db: SQLiteConnection) throws {
        // Processes starting together race to create the file and switch it to WAL; SQLite answers some of those
        // races with SQLITE_BUSY at once instead of waiting, so retry for a while.
        var attempt = 0
        while true {
            do {
                return try prepareOnce(db)
            } catch let error as SQLiteError where (error.code == SQLITE_BUSY || error.code == SQLITE_LOCKED) && attempt < 100 {
                attempt += 1
                usleep(UInt32(20_000 + Int.random(in: 0..<20_000)))
            }
        }
    }

    private static func prepareOnce(_ db: SQLiteConnection) throws {
        try db.execute("PRAGMA journal_mode=WAL")
        try db.execute("PRAGMA synchronous=NORMAL")
        try db.writeTransaction {
            let current = try db.withStatement("PRAGMA user_version") { try $0.step() ? ($0.int(0) ?? 0) : 0 }
            guard current < version else { return }
            for sql in statements { try db.execute(sql) }
            try db.execute("PRAGMA user_version=\(version)")
        }
    }
}
