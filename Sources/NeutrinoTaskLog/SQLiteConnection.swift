import CSQLite
import Dispatch
import Glibc

/// An SQLite error with the library's message and the statement that caused it.
public struct SQLiteError: Error, Sendable, CustomStringConvertible {
    public var code: Int32
    public var message: String
    public var description: String { "SQLite error \(code): \(message)" }

    /// The primary result code (the low byte of an extended code).
    var primary: Int32 { code & 0xFF }

    /// Errors that say something about one value or row (a constraint, a value too big, a type SQLite refuses), not
    /// about the database: the writer isolates the event that caused one instead of retrying or dropping its batch.
    var isDataError: Bool {
        switch primary {
        case SQLITE_CONSTRAINT, SQLITE_TOOBIG, SQLITE_MISMATCH, SQLITE_RANGE: true
        default: false
        }
    }
}

/// One SQLite connection, used by one thread at a time (opened `NOMUTEX`). Not `Sendable`: the writer
/// thread and each reader own theirs.
final class SQLiteConnection {
    let handle: OpaquePointer
    private var statements: [StatementKey: OpaquePointer] = [:]
    /// Extra copies of a statement, for queries that step several cursors of one SQL text at once (the list merge).
    private var slotted: [String: [OpaquePointer]] = [:]
    private var savepointDepth = 0
    /// A value `sqlite3_bind_*` refused (too big), thrown by the next `step` instead of running with a NULL.
    var bindError: SQLiteError?
    /// How long the last `writeTransaction` waited for the write lock (other connections, other processes).
    private(set) var lastLockWaitNanoseconds: UInt64 = 0

    /// Process-wide settings, applied once before the first connection opens (SQLite initialises then).
    /// `sqlite3_config` must not run while another thread uses SQLite: a process that runs other code using the same
    /// library (a worker's Python app may `import sqlite3`) calls `TaskLogWriter.configureSQLite()` before starting it.
    static let configured: Int32 = neutrino_sqlite_disable_memstatus()

    init(path: String, readOnly: Bool = false) throws(SQLiteError) {
        _ = Self.configured
        var db: OpaquePointer?
        let flags = (readOnly ? SQLITE_OPEN_READONLY : (SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE)) | SQLITE_OPEN_NOMUTEX
        let rc = sqlite3_open_v2(path, &db, flags, nil)
        guard rc == SQLITE_OK, let db else {
            let message = db.map { String(cString: sqlite3_errmsg($0)) } ?? "cannot open"
            if let db { sqlite3_close_v2(db) }
            throw SQLiteError(code: rc, message: "\(message) (\(path))")
        }
        handle = db
        sqlite3_extended_result_codes(db, 1)
        // SQLite's own busy timeout sleeps 1, 2, 5, 10 … ms between tries; with the gateway and every worker
        // committing small batches to one file, locks are held for well under a millisecond, so poll finely first
        // (0.1 ms for the first 20 ms), then every millisecond, giving up after about 10 s.
        sqlite3_busy_handler(
            db,
            { _, count in
                if count < 200 { usleep(100); return 1 }
                if count < 200 + 10_000 { usleep(1000); return 1 }
                return 0
            }, nil)
    }

    deinit {
        for stmt in statements.values { sqlite3_finalize(stmt) }
        for list in slotted.values { for stmt in list { sqlite3_finalize(stmt) } }
        sqlite3_close_v2(handle)
    }

    var lastError: SQLiteError { SQLiteError(code: sqlite3_extended_errcode(handle), message: String(cString: sqlite3_errmsg(handle))) }

    func execute(_ sql: String) throws(SQLiteError) {
        var err: UnsafeMutablePointer<CChar>?
        let rc = sqlite3_exec(handle, sql, nil, nil, &err)
        if rc != SQLITE_OK {
            let message = err.map { String(cString: $0) } ?? "unknown error"
            sqlite3_free(err)
            throw SQLiteError(code: sqlite3_extended_errcode(handle), message: message)
        }
    }

    /// The integer a `PRAGMA name` (or any one-value query) answers; 0 when it answers nothing.
    func integer(_ sql: String) throws -> Int64 {
        try withStatement(sql) { try $0.step() ? Int64($0.int(0) ?? 0) : 0 }
    }

    /// Rows changed by the last INSERT, UPDATE or DELETE on this connection.
    var changes: Int { Int(sqlite3_changes(handle)) }

    /// Runs `body` with the prepared statement for `sql` (cached by its text) and resets it afterwards: a
    /// statement left mid-result would hold its read snapshot open and hide later commits from this connection.
    func withStatement<T>(_ sql: String, _ body: (Statement) throws -> T) throws -> T {
        let stmt = try statement(sql)
        defer { sqlite3_reset(stmt.handle) }
        return try body(stmt)
    }

    /// `count` independent prepared copies of `sql` (cached), all reset afterwards: for stepping several cursors
    /// of one query side by side.
    func withStatements<T>(_ sql: String, count: Int, _ body: ([Statement]) throws -> T) throws -> T {
        var list = slotted[sql] ?? []
        while list.count < count {
            list.append(try prepare(sql))
            slotted[sql] = list
        }
        let stmts = list.prefix(count).map { stmt in
            sqlite3_reset(stmt)
            sqlite3_clear_bindings(stmt)
            return Statement(handle: stmt, connection: self)
        }
        defer { for s in stmts { sqlite3_reset(s.handle) } }
        return try body(stmts)
    }

    private func statement(_ sql: String) throws(SQLiteError) -> Statement {
        bindError = nil
        if let cached = statements[StatementKey(sql)] {
            sqlite3_reset(cached)
            sqlite3_clear_bindings(cached)
            return Statement(handle: cached, connection: self)
        }
        let stmt = try prepare(sql)
        statements[StatementKey(sql)] = stmt
        return Statement(handle: stmt, connection: self)
    }

    private func prepare(_ sql: String) throws(SQLiteError) -> OpaquePointer {
        var stmt: OpaquePointer?
        guard sqlite3_prepare_v3(handle, sql, -1, UInt32(SQLITE_PREPARE_PERSISTENT), &stmt, nil) == SQLITE_OK, let stmt else {
            throw lastError
        }
        return stmt
    }

    /// Runs `body` in a write transaction taken at once (`BEGIN IMMEDIATE`), so two processes never
    /// deadlock upgrading read locks; rolls back when `body` throws.
    func writeTransaction<T>(_ body: () throws -> T) throws -> T {
        let asked = DispatchTime.now().uptimeNanoseconds
        try execute("BEGIN IMMEDIATE")
        lastLockWaitNanoseconds = DispatchTime.now().uptimeNanoseconds - asked
        return try committing(body)
    }

    /// Runs `body` in one read transaction, so the several statements of one answer see one snapshot.
    func readTransaction<T>(_ body: () throws -> T) throws -> T {
        try execute("BEGIN")
        return try committing(body)
    }

    /// Runs `body` in the transaction just begun: commits after it, rolls back when it throws.
    private func committing<T>(_ body: () throws -> T) throws -> T {
        do {
            let value = try body()
            try execute("COMMIT")
            return value
        } catch {
            try? execute("ROLLBACK")
            throw error
        }
    }

    /// Runs `body` inside a savepoint of the current transaction: when it throws, only its own changes are undone.
    func savepoint<T>(_ body: () throws -> T) throws -> T {
        savepointDepth += 1
        let name = "sp\(savepointDepth)"
        defer { savepointDepth -= 1 }
        try execute("SAVEPOINT \(name)")
        do {
            let value = try body()
            try execute("RELEASE \(name)")
            return value
        } catch {
            try? execute("ROLLBACK TO \(name)")
            try? execute("RELEASE \(name)")
            throw error
        }
    }

    /// `EXPLAIN QUERY PLAN` of `sql`: the detail column of every row (for tests of the query plans).
    func queryPlan(_ sql: String) throws -> [String] {
        try withStatement("EXPLAIN QUERY PLAN " + sql) { s in
            var out: [String] = []
            while try s.step() { if let d = s.string(3) { out.append(d) } }
            return out
        }
    }
}

/// A statement cache key: an SQL text, hashed by its length and its last bytes instead of all of it. The writer looks
/// up five statements of up to 400 bytes per task; hashing and comparing their whole text cost about 1 % of the
/// gateway's CPU. The texts are constants (or cached strings), so equal keys are usually the same storage and compare
/// in one step; texts that collide are told apart by `==`, which compares them whole.
struct StatementKey: Hashable {
    let sql: String
    init(_ sql: String) { self.sql = sql }

    static func == (a: StatementKey, b: StatementKey) -> Bool { a.sql == b.sql }

    func hash(into hasher: inout Hasher) {
        // The length and the last 8 bytes: WHERE clauses and column lists differ at the end more often than at the
        // start ("SELECT ... FROM tasks"). Two words into the hasher, not the whole text.
        let utf8 = sql.utf8
        var tail: UInt64 = 0
        for byte in utf8.suffix(8) { tail = tail << 8 | UInt64(byte) }
        hasher.combine(utf8.count)
        hasher.combine(tail)
    }
}

/// A prepared statement bound positionally (1-based) and stepped row by row.
struct Statement {
    let handle: OpaquePointer
    unowned let connection: SQLiteConnection

    func bind(_ index: Int32, _ value: String?) {
        if var value {
            // With its length, from the string's own UTF-8 (small strings from a stack copy): no C string is made.
            let rc = value.withUTF8 { utf8 -> Int32 in
                guard let base = utf8.baseAddress, !utf8.isEmpty else { return sqlite3_bind_text(handle, index, "", 0, neutrino_sqlite_transient()) }
                return base.withMemoryRebound(to: CChar.self, capacity: utf8.count) {
                    sqlite3_bind_text64(handle, index, $0, sqlite3_uint64(utf8.count), neutrino_sqlite_transient(), UInt8(SQLITE_UTF8))
                }
            }
            if rc != SQLITE_OK && connection.bindError == nil { connection.bindError = connection.lastError }
        } else {
            sqlite3_bind_null(handle, index)
        }
    }

    func bind(_ index: Int32, _ value: Int?) {
        if let value { sqlite3_bind_int64(handle, index, Int64(value)) } else { sqlite3_bind_null(handle, index) }
    }

    func bind(_ index: Int32, _ value: Double?) {
        if let value { sqlite3_bind_double(handle, index, value) } else { sqlite3_bind_null(handle, index) }
    }

    /// Advances; `true` while a row is available.
    func step() throws(SQLiteError) -> Bool {
        if let error = connection.bindError {
            connection.bindError = nil
            throw error
        }
        switch sqlite3_step(handle) {
        case SQLITE_ROW: return true
        case SQLITE_DONE: return false
        default: throw connection.lastError
        }
    }

    func run() throws(SQLiteError) { while try step() {} }

    func string(_ column: Int32) -> String? {
        guard sqlite3_column_type(handle, column) != SQLITE_NULL, let text = sqlite3_column_text(handle, column) else { return nil }
        return String(cString: text)
    }

    func int(_ column: Int32) -> Int? {
        sqlite3_column_type(handle, column) == SQLITE_NULL ? nil : Int(sqlite3_column_int64(handle, column))
    }

    func double(_ column: Int32) -> Double? {
        sqlite3_column_type(handle, column) == SQLITE_NULL ? nil : sqlite3_column_double(handle, column)
    }
}
