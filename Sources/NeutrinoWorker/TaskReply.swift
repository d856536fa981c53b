import NeutrinoCore
import NeutrinoPython

/// The body a worker answers a task call with, which the gateway passes on unchanged:
/// `{"task_id","function","pool","status","worker_id","attempt","duration_ms","result"|"error"}`.
/// The raw outcome JSON is the last member, and its offset is reported so the gateway can log it
/// without parsing the body.
struct TaskReply {
    var status: TaskStatus
    var body: [UInt8]
    var outcomeOffset: Int
    var outcome: String?
    var durationMs: Double

    init(taskID: String, spec: TaskSpec, workerID: String, attempt: Int, outcome: PythonOutcome) {
        var w = JSONWriter(capacity: 256)
        w.beginObject()
        w.key("task_id"); w.string(taskID)
        w.key("function"); w.string(spec.name)
        w.key("pool"); w.string(spec.pool)
        let raw: [UInt8]
        let key: String
        switch outcome {
        case .completed(let result, let ms):
            (status, raw, key, durationMs) = (.completed, result, "result", ms)
        case .failed(let error, let ms):
            (status, raw, key, durationMs) = (.failed, error, "error", ms)
        case .timedOut(let ms):
            let message = "task '\(spec.name)' exceeded its timeout of \(spec.timeoutMs) ms"
            (status, raw, key, durationMs) = (.timedOut, JSONWriter.taskError(type: APIError.timeout.type, message: message), "error", ms)
        case .cancelled(let ms):
            (status, raw, key, durationMs) = (
                .cancelled, JSONWriter.taskError(type: APIError.cancelled.type, message: "task '\(spec.name)' was cancelled"), "error", ms
            )
        case .abandoned(let reason):
            let message = "the worker's interpreter wedged while this task ran; the worker restarts: \(reason)"
            (status, raw, key, durationMs) = (.failed, JSONWriter.taskError(type: APIError.workerCrashed.type, message: message), "error", 0)
        case .rejected(let reason):
            (status, raw, key, durationMs) = (.failed, JSONWriter.taskError(type: APIError.workerUnavailable.type, message: reason), "error", 0)
        }
        w.key("status"); w.string(status.rawValue)
        w.key("worker_id"); w.string(workerID)
        w.key("attempt"); w.int(attempt)
        w.key("duration_ms"); w.double(durationMs)
        w.key(key)
        outcomeOffset = w.bytes.count
        w.raw(raw)
        w.endObject()
        body = w.bytes
        self.outcome = String(decoding: raw, as: UTF8.self)
    }

}
