import Foundation
import Logging
import NeutrinoCore
import NeutrinoNATS
import NeutrinoTaskLog
@_exported import NeutrinoTestSupport

/// A writer and a one-thread reader on a fresh task log in a temporary folder.
func freshTaskLog() throws -> (writer: TaskLogWriter, reader: TaskLogReader) {
    let path = temporaryTaskLogPath()
    return (try TaskLogWriter(path: path, logger: testLogger), try TaskLogReader(path: path, threads: 1))
}

/// One task's life as a NATS worker (and the gateway's `pending`) would record it: pending, running, progress,
/// completed.
func lifecycle(_ id: String, pool: String = "gpu", worker: String = "w1", base: Int64 = 1_700_000_000_000) -> [TaskEvent] {
    [
        TaskEvent(
            taskID: id, kind: .pending, at: Timestamp(millis: base), function: "embed", pool: pool, mode: .gpu,
            attempt: 0, args: #"{ "text" : "é\"q\"" , "n":[1, 2.50] }"#),
        TaskEvent(
            taskID: id, kind: .running, at: Timestamp(millis: base + 1), function: "embed", pool: pool, mode: .gpu,
            workerID: worker, attempt: 1),
        TaskEvent(
            taskID: id, kind: .progress, at: Timestamp(millis: base + 2), function: "embed", pool: pool, mode: .gpu,
            workerID: worker, attempt: 1, progress: 0.5, detail: "half"),
        TaskEvent(
            taskID: id, kind: .completed, at: Timestamp(millis: base + 3), function: "embed", pool: pool, mode: .gpu,
            workerID: worker, attempt: 1, result: #"{"v": [0.1,0.2]}"#, durationMs: 12.345),
    ]
}

/// Checks that every task of `ids` has its row completed with the exact texts, and each lifecycle event once.
func expectLifecycleRows(_ ids: [String], reader: TaskLogReader) async throws -> [String] {
    var problems: [String] = []
    for id in ids {
        guard let (record, events) = try await reader.recordWithEvents(id: id) else {
            problems.append("\(id): no row")
            continue
        }
        if record.status != .completed { problems.append("\(id): status \(record.status)") }
        if record.args != #"{ "text" : "é\"q\"" , "n":[1, 2.50] }"# { problems.append("\(id): args \(record.args ?? "nil")") }
        if record.result != #"{"v": [0.1,0.2]}"# { problems.append("\(id): result \(record.result ?? "nil")") }
        if record.durationMs != 12.345 { problems.append("\(id): duration \(String(describing: record.durationMs))") }
        let kinds = events.map(\.event).sorted()
        if kinds != ["completed", "pending", "running"] { problems.append("\(id): events \(kinds)") }
    }
    return problems
}
