import CSQLite
import Glibc

/// The task log's tables. `tasks` is the seed's table plus `attempts`, `progress` and `progress_message`;
/// `task_events` keeps every lifecycle event; `task_groups` counts the tasks of every (status, function, pool,
/// mode) combination and is what filtered lists start from. Timestamps are ISO-8601 UTC text with milliseconds,
/// which sorts in time order. docs/architecture.md ("The task log: layout") says why the indexes are what they are.
enum TaskLogSchema {
    static let version = 7

    /// Version 5: what a task printed (`TaskEvent.output`), kept with its row.
    static let version5 = ["ALTER TABLE tasks ADD COLUMN output TEXT"]
    /// Version 6: the id of the API key that submitted the task (`TaskEvent.submittedBy`; issue 12).
    static let version6 = ["ALTER TABLE tasks ADD COLUMN submitted_by TEXT"]
    /// Version 7: the task's OpenTelemetry trace id (`TaskEvent.traceID`; issue 16).
    static let version7 = ["ALTER TABLE tasks ADD COLUMN trace_id TEXT"]

    /// The tables as version 3 made them (and the statements a file older than 3 is brought to 3 with).
    static let version3 = [
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
        // One row per (task, event, attempt): the gateway and the worker may both report an outcome. Also the
        // index a task's timeline and retention's per-task delete use.
        "CREATE UNIQUE INDEX IF NOT EXISTS idx_task_events_unique ON task_events(task_id, event, attempt)",
        """
        CREATE TABLE IF NOT EXISTS idempotency_keys (
            key TEXT PRIMARY KEY,
            task_id TEXT NOT NULL,
            created_at TIMESTAMP NOT NULL
        )
        """,
    ]

    /// Version 3's single-column indexes on `tasks`, replaced in version 4 by `idx_tasks_group` and `idx_tasks_completed`.
    static let replacedIndexes = ["idx_status", "idx_created_at", "idx_function_name", "idx_pool", "idx_completed_at"]

    /// Version 4's two big indexes on `tasks`. Each is one `CREATE INDEX` over the whole table: on an existing file
    /// it holds the write lock while it sorts (about a second per million tasks here), so each gets a
    /// transaction of its own and readers go on reading meanwhile.
    static let version4Indexes = [
        // Every filtered list: equality on all four columns of one group, then id order (newest first) — the
        // filter and the order from one index, whatever combination was asked for. Covering for the id walk.
        "CREATE INDEX IF NOT EXISTS idx_tasks_group ON tasks(status, function_name, pool, execution_mode, id)",
        // /pools' outcomes and durations of the last minute, read from the index alone. Partial: queued and running
        // tasks are not in it, so creating a task or starting it does not touch it.
        "CREATE INDEX IF NOT EXISTS idx_tasks_completed ON tasks(completed_at, pool, status, duration_ms) WHERE completed_at IS NOT NULL",
    ]

    /// The rest of version 4, in one transaction: the single-column indexes the composite ones replace, the group
    /// table filled from the data, the triggers that keep it exact from then on, and the index retention needs.
    static let version4 = [
        "DROP INDEX IF EXISTS idx_status",
        "DROP INDEX IF EXISTS idx_created_at",
        "DROP INDEX IF EXISTS idx_function_name",
        "DROP INDEX IF EXISTS idx_pool",
        "DROP INDEX IF EXISTS idx_completed_at",
        """
        CREATE TABLE IF NOT EXISTS task_groups (
            status TEXT NOT NULL,
            function_name TEXT NOT NULL,
            pool TEXT NOT NULL,
            execution_mode TEXT NOT NULL,
            n INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (status, function_name, pool, execution_mode)
        ) WITHOUT ROWID
        """,
        "DELETE FROM task_groups",
        // Read in idx_tasks_group's order: one pass over the index, no sort.
        """
        INSERT INTO task_groups (status, function_name, pool, execution_mode, n)
        SELECT status, function_name, IFNULL(pool, ''), IFNULL(execution_mode, ''), COUNT(*) FROM tasks WHERE true
        GROUP BY status, function_name, pool, execution_mode
        ON CONFLICT DO UPDATE SET n = n + excluded.n
        """,
        // Kept by the database itself, so every writer (older binaries, the sqlite3 shell, retention) keeps it exact.
        """
        CREATE TRIGGER IF NOT EXISTS tasks_group_insert AFTER INSERT ON tasks BEGIN
            INSERT INTO task_groups (status, function_name, pool, execution_mode, n)
            VALUES (NEW.status, NEW.function_name, IFNULL(NEW.pool, ''), IFNULL(NEW.execution_mode, ''), 1)
            ON CONFLICT DO UPDATE SET n = n + 1;
        END
        """,
        """
        CREATE TRIGGER IF NOT EXISTS tasks_group_delete AFTER DELETE ON tasks BEGIN
            UPDATE task_groups SET n = n - 1 WHERE status = OLD.status AND function_name = OLD.function_name
                AND pool = IFNULL(OLD.pool, '') AND execution_mode = IFNULL(OLD.execution_mode, '');
        END
        """,
        """
        CREATE TRIGGER IF NOT EXISTS tasks_group_update AFTER UPDATE OF status, function_name, pool, execution_mode ON tasks
        WHEN OLD.status IS NOT NEW.status OR OLD.function_name IS NOT NEW.function_name
            OR OLD.pool IS NOT NEW.pool OR OLD.execution_mode IS NOT NEW.execution_mode
        BEGIN
            UPDATE task_groups SET n = n - 1 WHERE status = OLD.status AND function_name = OLD.function_name
                AND pool = IFNULL(OLD.pool, '') AND execution_mode = IFNULL(OLD.execution_mode, '');
            INSERT INTO task_groups (status, function_name, pool, execution_mode, n)
            VALUES (NEW.status, NEW.function_name, IFNULL(NEW.pool, ''), IFNULL(NEW.execution_mode, ''), 1)
            ON CONFLICT DO UPDATE SET n = n + 1;
        END
        """,
        "CREATE INDEX IF NOT EXISTS idx_idempotency_created ON idempotency_keys(created_at)",
    ]

    /// Opens `path` for writing: WAL, NORMAL sync (a commit is a WAL append, not a disk sync), busy timeout,
    /// and the schema, created or migrated under a write lock so several processes can start together.
    static func prepare(_ db: SQLiteConnection) throws {
        // Processes starting together race to create the file and switch it to WAL; SQLite answers some of those
        // races with SQLITE_BUSY at once instead of waiting, so retry for a while.
        var attempt = 0
        while true {
            do {
                return try prepareOnce(db)
            } catch let error as SQLiteError where (error.primary == SQLITE_BUSY || error.primary == SQLITE_LOCKED) && attempt < 100 {
                attempt += 1
                usleep(UInt32(20_000 + Int.random(in: 0..<20_000)))
            }
        }
    }

    private static func prepareOnce(_ db: SQLiteConnection) throws {
        // Only a file without tables takes this; an existing file keeps its mode until a VACUUM (see the docs).
        try db.execute("PRAGMA auto_vacuum=INCREMENTAL")
        try db.execute("PRAGMA journal_mode=WAL")
        try db.execute("PRAGMA synchronous=NORMAL")
        guard try db.integer("PRAGMA user_version") < version else { return }
        // A new file gets version 4 at once; a file from before version 3 is first brought to 3.
        let fresh = try db.writeTransaction { () -> Bool in
            let current = try db.integer("PRAGMA user_version")
            guard current < version else { return false }
            let hasTasks = try db.integer("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'tasks'") > 0
            if hasTasks && current >= 3 { return false }
            // A new file skips the single-column indexes version 4 replaces.
            for sql in version3 where hasTasks || !replacedIndexes.contains(where: { sql.firstRange(of: "EXISTS \($0) ON") != nil }) {
                try db.execute(sql)
            }
            if !hasTasks {
                for sql in version4Indexes + version4 + version5 + version6 + version7 { try db.execute(sql) }
                try db.execute("PRAGMA user_version=\(version)")
                return true
            }
            try db.execute("PRAGMA user_version=3")
            return false
        }
        if fresh { return }
        try migrate3to4(db)
        try migrate4to5(db)
        try migrate5to6(db)
        try migrate6to7(db)
    }

    /// Version 6 → 7: one nullable column, added in place.
    static func migrate6to7(_ db: SQLiteConnection) throws {
        try db.writeTransaction {
            guard try db.integer("PRAGMA user_version") < 7 else { return }
            let has = try db.integer("SELECT COUNT(*) FROM pragma_table_info('tasks') WHERE name = 'trace_id'") > 0
            if !has { for sql in version7 { try db.execute(sql) } }
            try db.execute("PRAGMA user_version=7")
        }
    }

    /// Version 5 → 6: one nullable column, added in place.
    static func migrate5to6(_ db: SQLiteConnection) throws {
        try db.writeTransaction {
            guard try db.integer("PRAGMA user_version") < 6 else { return }
            let has = try db.integer("SELECT COUNT(*) FROM pragma_table_info('tasks') WHERE name = 'submitted_by'") > 0
            if !has { for sql in version6 { try db.execute(sql) } }
            try db.execute("PRAGMA user_version=6")
        }
    }

    /// Version 4 → 5: one nullable column, added in place (SQLite does not rewrite the table for it).
    static func migrate4to5(_ db: SQLiteConnection) throws {
        try db.writeTransaction {
            guard try db.integer("PRAGMA user_version") < 5 else { return }
            let hasOutput = try db.integer("SELECT COUNT(*) FROM pragma_table_info('tasks') WHERE name = 'output'") > 0
            if !hasOutput { for sql in version5 { try db.execute(sql) } }
            try db.execute("PRAGMA user_version=5")
        }
    }

    /// Version 3 → 4 on a file that may hold millions of tasks and be in use by other processes. Each index is built
    /// in a transaction of its own (readers go on; writers wait on the lock, their batches retrying), then the rest
    /// commits with the new version number. Every step is idempotent, so a migration cut short is finished by the
    /// next process that opens the file.
    static func migrate3to4(_ db: SQLiteConnection) throws {
        for sql in version4Indexes {
            try db.writeTransaction {
                guard try db.integer("PRAGMA user_version") < 4 else { return }
                try db.execute(sql)
            }
        }
        try db.writeTransaction {
            guard try db.integer("PRAGMA user_version") < 4 else { return }
            for sql in version4 { try db.execute(sql) }
            try db.execute("PRAGMA user_version=4")
        }
    }
}
