import NeutrinoCore

/// Builds the payload `neutrino._runtime.invoke` receives: the request body `{"args":{…}}` with the task's
/// context added as the last members (so they win over anything a caller put there), without re-encoding
/// the arguments.
enum TaskPayload {
    enum Failure: Error, Equatable { case notAnObject }

    /// `traceParent`: the W3C trace context the task runs in (the worker's execution span), which Python reads as
    /// `current_task().traceparent`.
    static func make(body: [UInt8], taskID: String, attempt: Int, pool: String, traceParent: String? = nil) throws(Failure) -> [UInt8] {
        func isSpace(_ c: UInt8) -> Bool { c == 0x20 || c == 0x0A || c == 0x0D || c == 0x09 }
        guard let first = body.firstIndex(where: { !isSpace($0) }), body[first] == UInt8(ascii: "{"),
            let last = body.lastIndex(where: { !isSpace($0) }), last > first, body[last] == UInt8(ascii: "}")
        else {
            throw .notAnObject
        }
        let isEmpty = body[(first + 1)..<last].allSatisfy(isSpace)
        var context = JSONWriter(capacity: 96)
        context.beginObject()
        context.key("task_id"); context.string(taskID)
        context.key("attempt"); context.int(attempt)
        context.key("pool"); context.string(pool)
        if let traceParent { context.key("traceparent"); context.string(traceParent) }
        context.endObject()
        // context.bytes is `{…}`: splice its members in before the body's closing brace.
        var out = [UInt8]()
        out.reserveCapacity(body.count + context.bytes.count)
        out.append(contentsOf: body[first..<last])
        if !isEmpty { out.append(UInt8(ascii: ",")) }
        out.append(contentsOf: context.bytes.dropFirst().dropLast())
        out.append(UInt8(ascii: "}"))
        return out
    }
}
