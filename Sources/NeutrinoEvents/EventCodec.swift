import NeutrinoCore

/// Why a message body is not a task event.
public struct EventDecodingError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { "not a task event: \(message)" }
}

/// `TaskEvent` ⇄ one JSON object, the body of a message on `neutrino.events.<pool>`:
/// `{"task_id","event","at","function","pool","mode","worker_id","attempt","args","result","error","duration_ms",
/// "progress","detail"}`, plus `output`, `submitted_by` and `trace_id` when the event has them.
///
/// - `at` is the timestamp's ISO-8601 text (millisecond resolution, as the task log stores it).
/// - `args`, `result`, `error` are the raw JSON texts the event carries, sent as JSON strings so they come back
///   byte for byte (whatever their spacing or key order), and so a malformed text cannot break the envelope.
/// - Absent optional fields are written as `null`; on decoding, missing and `null` both mean absent.
/// - Numbers are written in Swift's shortest round-trip form, so `duration_ms` and `progress` come back equal.
public enum EventCodec {
    public static func encode(_ event: TaskEvent) -> [UInt8] {
        var w = JSONWriter(
            capacity: 256 + (event.args?.utf8.count ?? 0) + (event.result?.utf8.count ?? 0)
                + (event.error?.utf8.count ?? 0))
        w.beginObject()
        w.key("task_id"); w.string(event.taskID)
        w.key("event"); w.string(event.kind.rawValue)
        w.key("at"); w.string(event.at.iso8601)
        w.key("function"); w.string(event.function)
        w.key("pool"); w.string(event.pool)
        w.key("mode"); w.string(event.mode.rawValue)
        w.key("worker_id"); w.stringOrNull(event.workerID)
        w.key("attempt"); w.int(event.attempt)
        w.key("args"); w.stringOrNull(event.args)
        w.key("result"); w.stringOrNull(event.result)
        w.key("error"); w.stringOrNull(event.error)
        w.key("duration_ms"); number(event.durationMs, &w)
        w.key("progress"); number(event.progress, &w)
        w.key("detail"); w.stringOrNull(event.detail)
        if let output = event.output { w.key("output"); w.string(output) }
        if let submittedBy = event.submittedBy { w.key("submitted_by"); w.string(submittedBy) }
        if let traceID = event.traceID { w.key("trace_id"); w.string(traceID) }
        w.endObject()
        return w.bytes
    }

    public static func decode(_ bytes: [UInt8]) throws(EventDecodingError) -> TaskEvent {
        let value: JSONValue
        do {
            value = try JSONParser.parse(bytes)
        } catch {
            throw EventDecodingError("invalid JSON (\(error))")
        }
        guard case .object(let fields) = value else { throw EventDecodingError("not a JSON object") }
        let fieldsReader = Fields(fields)
        let taskID = try fieldsReader.string("task_id")
        guard !taskID.isEmpty else { throw EventDecodingError("empty task_id") }
        let kindText = try fieldsReader.string("event")
        guard let kind = TaskEventKind(rawValue: kindText) else { throw EventDecodingError("unknown event '\(kindText)'") }
        let atText = try fieldsReader.string("at")
        guard let at = Timestamp(iso8601: atText) else { throw EventDecodingError("invalid time '\(atText)'") }
        let modeText = try fieldsReader.string("mode")
        guard let mode = ExecutionMode(rawValue: modeText) else { throw EventDecodingError("unknown mode '\(modeText)'") }
        let attempt = try fieldsReader.optionalInt("attempt") ?? 0
        var event = TaskEvent(
            taskID: taskID, kind: kind, at: at, function: try fieldsReader.string("function"),
            pool: try fieldsReader.string("pool"), mode: mode,
            workerID: try fieldsReader.optionalString("worker_id"), attempt: attempt,
            args: try fieldsReader.optionalString("args"), result: try fieldsReader.optionalString("result"),
            error: try fieldsReader.optionalString("error"),
            durationMs: try fieldsReader.optionalDouble("duration_ms"),
            progress: try fieldsReader.optionalDouble("progress"),
            detail: try fieldsReader.optionalString("detail"),
            output: try fieldsReader.optionalString("output"))
        event.submittedBy = try fieldsReader.optionalString("submitted_by")
        // Stored and shown as it came: only a trace id's shape is accepted.
        if let traceID = try fieldsReader.optionalString("trace_id") {
            guard TraceParent.isTraceID(traceID) else { throw EventDecodingError("trace_id is not 32 lower-case hex digits") }
            event.traceID = traceID
        }
        return event
    }

    /// A finite number in its shortest round-trip text (`null` when absent or not finite).
    private static func number(_ value: Double?, _ w: inout JSONWriter) {
        guard let value, value.isFinite else { w.null(); return }
        w.value(.number(value.description))
    }
}

/// Typed access to a decoded object's members; every mismatch is an `EventDecodingError`.
private struct Fields {
    let members: [String: JSONValue]
    init(_ members: [String: JSONValue]) { self.members = members }

    func string(_ key: String) throws(EventDecodingError) -> String {
        guard let value = members[key] else { throw EventDecodingError("missing \(key)") }
        guard case .string(let text) = value else { throw EventDecodingError("\(key) is not a string") }
        return text
    }

    func optionalString(_ key: String) throws(EventDecodingError) -> String? {
        switch members[key] {
        case nil, .null?: return nil
        case .string(let text)?: return text
        default: throw EventDecodingError("\(key) is not a string")
        }
    }

    func optionalDouble(_ key: String) throws(EventDecodingError) -> Double? {
        switch members[key] {
        case nil, .null?: return nil
        case .number(let text)?:
            guard let value = Double(text), value.isFinite else { throw EventDecodingError("\(key) is out of range") }
            return value
        default: throw EventDecodingError("\(key) is not a number")
        }
    }

    func optionalInt(_ key: String) throws(EventDecodingError) -> Int? {
        switch members[key] {
        case nil, .null?: return nil
        case .number(let text)?:
            guard let value = Int(text) else { throw EventDecodingError("\(key) is not an integer") }
            return value
        default: throw EventDecodingError("\(key) is not a number")
        }
    }
}
