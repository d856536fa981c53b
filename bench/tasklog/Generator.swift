import CSQLite
import Foundation
import NeutrinoCore
import NeutrinoTaskLog

/// The deployed functions of the generated log: 8 names in 3 pools, with their share of the tasks (per mille).
struct Fn: Sendable {
    var name: String
    var pool: String
    var mode: ExecutionMode
    var weight: UInt64

    static let all: [Fn] = [
        Fn(name: "echo", pool: "fast", mode: .sync, weight: 200),
        Fn(name: "resize_image", pool: "fast", mode: .sync, weight: 150),
        Fn(name: "boom", pool: "fast", mode: .sync, weight: 125),
        Fn(name: "generate_report", pool: "async", mode: .async, weight: 125),
        Fn(name: "send_email", pool: "async", mode: .async, weight: 150),
        Fn(name: "crunch", pool: "async", mode: .async, weight: 125),
        Fn(name: "train_model", pool: "gpu", mode: .gpu, weight: 50),
        Fn(name: "embed_batch", pool: "gpu", mode: .gpu, weight: 75),
    ]

    static func pick(_ rng: inout SplitMix) -> Int {
        var r = rng.next() % 1000
        for (i, f) in all.enumerated() {
            if r < f.weight { return i }
            r -= f.weight
        }
        return 0
    }
}

/// Writes `config.tasks` tasks straight into a file the task log created: one transaction per 50,000 tasks,
/// prepared statements, no journal while it runs (the file is switched to WAL at the end, as the task log keeps it).
struct Generator {
    let config: BenchConfig
    let end: Int64

    func generate() async throws {
        for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: config.path + suffix) }
        let writer = try TaskLogWriter(path: config.path)  // schema version 4, auto_vacuum=INCREMENTAL
        await writer.close()
        let db = try RawDB(path: config.path)
        var switched = false
        for _ in 0..<500 where !switched {
            switched = (try? db.exec("PRAGMA journal_mode=OFF")) != nil
            if !switched { usleep(20_000) }
        }
        try db.exec("PRAGMA synchronous=OFF")
        try db.exec("PRAGMA cache_size=-1000000")
        let insertTask = try db.prepare(
            """
            INSERT INTO tasks (id, function_name, status, created_at, started_at, completed_at, worker_id, pool, execution_mode,
                args, result, error, duration_ms, attempts, progress, progress_message)
            VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, NULL)
            """)
        let insertEvent = try db.prepare("INSERT INTO task_events (task_id, event, at, worker_id, attempt, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6)")
        let big = String(repeating: "0123456789abcdefghij", count: 2_600)
        let traceback =
            "Traceback (most recent call last):\\n  File \\\"app.py\\\", line 42, in boom\\n    raise ValueError(\\\"boom\\\")\\nValueError: boom"
        var rng = SplitMix(seed: 2026)
        let n = config.tasks
        let start = end - config.spanMs
        let began = ContinuousClock.now
        var events = 0
        var statuses: [String: Int] = [:]

        func text(_ stmt: OpaquePointer, _ i: Int32, _ value: String?) {
            if let value { sqlite3_bind_text(stmt, i, value, -1, neutrino_sqlite_transient()) } else { sqlite3_bind_null(stmt, i) }
        }
        func event(_ id: String, _ kind: String, _ at: Int64, _ worker: String?, _ attempt: Int, _ detail: String? = nil) throws {
            text(insertEvent, 1, id)
            text(insertEvent, 2, kind)
            text(insertEvent, 3, Timestamp(millis: at).iso8601)
            text(insertEvent, 4, worker)
            sqlite3_bind_int64(insertEvent, 5, Int64(attempt))
            text(insertEvent, 6, detail)
            guard sqlite3_step(insertEvent) == SQLITE_DONE else { throw BenchError("event: \(String(cString: sqlite3_errmsg(db.handle)))") }
            sqlite3_reset(insertEvent)
            events += 1
        }

        try db.exec("BEGIN")
        for i in 0..<n {
            if i > 0 && i % 50_000 == 0 {
                try db.exec("COMMIT")
                if i % 1_000_000 == 0 {
                    let s = (ContinuousClock.now - began).seconds
                    print("  generated \(i.formatted()) tasks in \(Int(s)) s (\(Int(Double(i) / s).formatted())/s)")
                }
                try db.exec("BEGIN")
            }
            let fn = Fn.all[Fn.pick(&rng)]
            let created = start + Int64(Double(i) * Double(config.spanMs) / Double(n))
            let id = makeTaskID(millis: created, &rng)
            var r = rng.next() % 10_000
            if fn.name == "send_email" && r >= 9_500 && r < 9_700 && rng.next() % 40 != 0 { r = 0 }  // e-mails rarely time out
            let status: TaskStatus =
                switch r {
                case ..<8_500: .completed
                case ..<9_200: .failed
                case ..<9_500: .cancelled
                case ..<9_700: .timedOut
                case ..<9_850: fn.mode == .sync ? .pending : .queued
                default: .running
                }
            statuses[status.rawValue, default: 0] += 1
            let wait: Int64 =
                switch fn.mode {
                case .sync: Int64(rng.next() % 3)
                case .async: 5 + Int64(rng.next() % 2_000)
                case .gpu: 50 + Int64(rng.next() % 30_000)
                }
            let duration: Int64 =
                switch fn.mode {
                case .sync: 1 + Int64(rng.next() % 80)
                case .async: 50 + Int64(rng.next() % 20_000)
                case .gpu: 1_000 + Int64(rng.next() % 120_000)
                }
            let retried = fn.mode != .sync && rng.next() % 100 < 5 && status != .queued && status != .pending
            let attempts = status == .queued || status == .pending ? 0 : (retried ? 2 : 1)
            let started = created + wait
            let completed = started + duration * (retried ? 2 : 1) + (retried ? 1_000 : 0)
            let worker = "\(fn.pool)-\(rng.next() % 16)"
            let large = rng.next() % 100
            let args =
                large == 0
                ? #"{"data":""# + String(big.prefix(10_000 + Int(rng.next() % 40_000))) + #""}"#
                : #"{"x":\#(i),"label":"bench","n":\#(rng.next() % 1000)}"#
            var result: String?
            var error: String?
            switch status {
            case .completed:
                result =
                    large == 1 ? #"{"blob":""# + String(big.prefix(10_000 + Int(rng.next() % 40_000))) + #""}"# : #"{"ok":true,"value":\#(i % 977)}"#
            case .failed:
                error = #"{"type":"ValueError","message":"boom","traceback":"\#(traceback)"}"#
            case .timedOut:
                error = #"{"type":"TimeoutError","message":"task exceeded its timeout","traceback":null}"#
            case .cancelled:
                error = #"{"type":"Cancelled","message":"cancelled by DELETE /tasks","traceback":null}"#
            default:
                break
            }
            let terminal = status.isTerminal
            text(insertTask, 1, id)
            text(insertTask, 2, fn.name)
            text(insertTask, 3, status.rawValue)
            text(insertTask, 4, Timestamp(millis: created).iso8601)
            text(insertTask, 5, attempts > 0 ? Timestamp(millis: started).iso8601 : nil)
            text(insertTask, 6, terminal ? Timestamp(millis: completed).iso8601 : nil)
            text(insertTask, 7, attempts > 0 ? worker : nil)
            text(insertTask, 8, fn.pool)
            text(insertTask, 9, fn.mode.rawValue)
            text(insertTask, 10, args)
            text(insertTask, 11, result)
            text(insertTask, 12, error)
            if terminal { sqlite3_bind_double(insertTask, 13, Double(duration)) } else { sqlite3_bind_null(insertTask, 13) }
            sqlite3_bind_int64(insertTask, 14, Int64(attempts))
            if status == .completed { sqlite3_bind_double(insertTask, 15, 1) } else { sqlite3_bind_null(insertTask, 15) }
            guard sqlite3_step(insertTask) == SQLITE_DONE else { throw BenchError("task: \(String(cString: sqlite3_errmsg(db.handle)))") }
            sqlite3_reset(insertTask)

            try event(id, fn.mode == .sync ? "pending" : "queued", created, nil, 0)
            if attempts > 0 { try event(id, "running", started, worker, 1) }
            if retried {
                try event(id, "retrying", started + duration, worker, 1, "ValueError: transient")
                try event(id, "running", started + duration + 1_000, worker, 2)
            }
            if terminal { try event(id, status.rawValue, completed, worker, attempts) }
        }
        try db.exec("COMMIT")
        sqlite3_finalize(insertTask)
        sqlite3_finalize(insertEvent)
        try db.exec("PRAGMA journal_mode=WAL")
        let s = (ContinuousClock.now - began).seconds
        print(
            "- generated \(n.formatted()) tasks and \(events.formatted()) events in \(String(format: "%.0f", s)) s "
                + "(\(Int(Double(n) / s).formatted()) tasks/s); statuses: "
                + statuses.sorted { $0.value > $1.value }.map { "\($0.key) \(String(format: "%.1f", Double($0.value) * 100 / Double(n))) %" }.joined(
                    separator: ", "))
    }
}

/// A UUIDv7 for `millis` (TaskID.make only makes ids for now).
func makeTaskID(millis: Int64, _ rng: inout SplitMix) -> String {
    var bytes = [UInt8](repeating: 0, count: 16)
    for i in 0..<6 { bytes[i] = UInt8(truncatingIfNeeded: UInt64(millis) >> (40 - 8 * UInt64(i))) }
    let r = rng.next()
    bytes[6] = 0x70 | UInt8(truncatingIfNeeded: r >> 8 & 0x0F)
    bytes[7] = UInt8(truncatingIfNeeded: r)
    let tail = rng.next()
    for i in 0..<8 { bytes[8 + i] = UInt8(truncatingIfNeeded: tail >> (56 - 8 * UInt64(i))) }
    bytes[8] = 0x80 | (bytes[8] & 0x3F)
    let hex = Array("0123456789abcdef".utf8)
    var out: [UInt8] = []
    out.reserveCapacity(36)
    for (i, b) in bytes.enumerated() {
        if i == 4 || i == 6 || i == 8 || i == 10 { out.append(UInt8(ascii: "-")) }
        out.append(hex[Int(b >> 4)])
        out.append(hex[Int(b & 0x0F)])
    }
    return String(decoding: out, as: UTF8.self)
}
