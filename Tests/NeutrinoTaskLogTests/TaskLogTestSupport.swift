import Foundation
import NeutrinoCore
@_exported import NeutrinoTestSupport

@testable import NeutrinoTaskLog

/// Every row of `tasks`, read directly (the brute-force answer the indexed queries are compared with).
func allTasks(path: String) throws -> [TaskRecord] {
    let db = try SQLiteConnection(path: path)
    // A file not migrated yet lacks the newer columns (decode reads a missing last column as NULL).
    let hasOutput = try db.integer("SELECT COUNT(*) FROM pragma_table_info('tasks') WHERE name = 'output'") > 0
    let columns = hasOutput ? TaskLogStore.columns : TaskLogMigrationTests.version3Columns
    return try db.withStatement("SELECT \(columns) FROM tasks") { s in
        var out: [TaskRecord] = []
        while try s.step() { if let r = TaskLogStore.decode(s) { out.append(r) } }
        return out
    }
}

/// `task_groups` as a dictionary, and the same counts computed from `tasks`.
func groupCounts(path: String) throws -> (table: [String: Int], actual: [String: Int]) {
    let db = try SQLiteConnection(path: path)
    func read(_ sql: String) throws -> [String: Int] {
        try db.withStatement(sql) { s in
            var out: [String: Int] = [:]
            while try s.step() {
                let key = [0, 1, 2, 3].map { s.string($0) ?? "∅" }.joined(separator: "|")
                let n = s.int(4) ?? 0
                if n != 0 { out[key, default: 0] += n }
            }
            return out
        }
    }
    return (
        try read("SELECT status, function_name, pool, execution_mode, n FROM task_groups"),
        try read("SELECT status, function_name, IFNULL(pool, ''), IFNULL(execution_mode, ''), COUNT(*) FROM tasks GROUP BY 1, 2, 3, 4")
    )
}

/// Waits (bounded, polling) until `condition` holds; returns whether it did.
func eventually(_ tries: Int = 2000, _ condition: () throws -> Bool) rethrows -> Bool {
    for _ in 0..<tries {
        if try condition() { return true }
        usleep(5_000)
    }
    return try condition()
}

/// A UUIDv7 for `millis` (TaskID.make keeps one process-wide clock that never goes back, so it cannot make ids in
/// the past once any test has made one now).
func taskID(millis: Int64, _ rng: inout SplitMix) -> String {
    var bytes = [UInt8](repeating: 0, count: 16)
    for i in 0..<6 { bytes[i] = UInt8(truncatingIfNeeded: UInt64(millis) >> (40 - 8 * UInt64(i))) }
    let r = rng.next()
    bytes[6] = 0x70 | UInt8(truncatingIfNeeded: r >> 8 & 0x0F)
    bytes[7] = UInt8(truncatingIfNeeded: r)
    let tail = rng.next()
    for i in 0..<8 { bytes[8 + i] = UInt8(truncatingIfNeeded: tail >> (56 - 8 * UInt64(i))) }
    bytes[8] = 0x80 | (bytes[8] & 0x3F)
    let hex = Array("0123456789abcdef")
    var out = ""
    for (i, b) in bytes.enumerated() {
        if i == 4 || i == 6 || i == 8 || i == 10 { out.append("-") }
        out.append(hex[Int(b >> 4)])
        out.append(hex[Int(b & 0x0F)])
    }
    return out
}
