import NeutrinoCore
import NeutrinoTaskLog

/// The bodies a task record may carry, which `GET /tasks` leaves out unless `fields=` asks for them.
struct TaskBodies: OptionSet, Sendable {
    let rawValue: Int
    static let args = TaskBodies(rawValue: 1)
    static let result = TaskBodies(rawValue: 2)
    static let error = TaskBodies(rawValue: 4)
    static let all: TaskBodies = [.args, .result, .error]
    static let names: [(String, TaskBodies)] = [("args", .args), ("result", .result), ("error", .error)]
}

/// The polling API's view of a task: the row, with the JSON fields spliced in as stored.
extension JSONWriter {
    mutating func task(_ r: TaskRecord, events: [TaskEventRecord]? = nil, bodies: TaskBodies = .all) {
        beginObject()
        key("task_id"); string(r.id)
        key("function"); string(r.function)
        key("status"); string(r.status.rawValue)
        key("pool"); string(r.pool)
        key("execution_mode"); string(r.mode.rawValue)
        key("worker_id"); stringOrNull(r.workerID)
        key("created_at"); string(r.createdAt.iso8601)
        key("started_at"); stringOrNull(r.startedAt?.iso8601)
        key("completed_at"); stringOrNull(r.completedAt?.iso8601)
        key("duration_ms"); if let d = r.durationMs { double(d) } else { null() }
        key("attempts"); int(r.attempts)
        key("progress"); if let p = r.progress { double(p) } else { null() }
        key("progress_message"); stringOrNull(r.progressMessage)
        if bodies.contains(.args) { key("args"); rawOrNull(r.args) }
        if bodies.contains(.result) { key("result"); rawOrNull(r.result) }
        if bodies.contains(.error) { key("error"); rawOrNull(r.error) }
        if let events {
            key("output"); stringOrNull(r.output)
            key("submitted_by"); stringOrNull(r.submittedBy)
            key("trace_id"); stringOrNull(r.traceID)
            key("events")
            beginArray()
            for e in events {
                beginObject()
                key("event"); string(e.event)
                key("at"); string(e.at.iso8601)
                key("worker_id"); stringOrNull(e.workerID)
                key("attempt"); int(e.attempt)
                key("detail"); stringOrNull(e.detail)
                endObject()
            }
            endArray()
        }
        endObject()
    }
}
