import HTTPTypes
import Hummingbird
import NIOCore
import NeutrinoCore
import NeutrinoHTTP

/// `POST /api/<task>`: manifest lookup, body read with a limit, JSON parse, argument schema, then the submitter.
struct SubmitController: Sendable {
    let components: GatewayComponents
    let submitter: TaskSubmitter
    /// Whether a routed request's client is still connected (`CallHandler`'s calls have their own presence).
    let presences: ConnectionPresences

    func addRoutes(to router: Router<GatewayRequestContext>) {
        router.post("/api/:task") { request, context in
            await submit(request, task: context.parameters.get("task") ?? "", caller: presences.presence(of: context.connection))
        }
    }

    func submit(_ request: Request, task name: String, caller: CallerPresence?) async -> Response {
        guard components.manifest.tasks[name] != nil else {
            return .error(.unknownTask, "no task named '\(name)' in the manifest")
        }
        let body: [UInt8]
        do { body = try await request.collectBody(limit: components.configuration.maxBodyBytes) } catch { return error.response }
        return await submit(task: name, headers: request.headers, body: body, caller: caller)
    }

    /// `POST /api/<task>` once its body is read: through the router, or from `CallHandler` (which says when the
    /// `caller` left).
    func submit(task name: String, headers: HTTPFields, body: [UInt8], caller: CallerPresence? = nil) async -> Response {
        let manifest = components.manifest
        guard let task = manifest.tasks[name] else {
            return .error(.unknownTask, "no task named '\(name)' in the manifest")
        }
        let document: JSONValue
        do { document = try JSONParser.parse(body) } catch {
            return .error(.malformedJSON, "the body is not valid JSON: \(error)")
        }
        guard case .object(let members) = document else {
            return .error(.malformedJSON, "the body must be a JSON object {\"args\": {...}}")
        }
        // The manifest's request schema requires `args` (what /openapi.json tells clients): a body without it is 422.
        var conformance = manifest.conform(args: members["args"] ?? .object([:]), for: task, limit: Self.maxIssues)
        if members["args"] == nil {
            conformance.issues.append(.init(path: "args", message: "missing required field 'args' (the body is {\"args\": {...}})"))
        }
        for key in members.keys.sorted() where key != "args" {
            let shown = ArgumentSchema.abbreviate(key)
            conformance.issues.append(.init(path: shown, message: "unexpected field '\(shown)' (the body is {\"args\": {...}})"))
        }
        guard conformance.issues.isEmpty else { return Self.invalidArguments(conformance.issues, task: name) }
        // The conformed value is what the worker receives and the task log stores: whole numbers given for
        // `integer` parameters are written as integers.
        return await submitter.submit(
            spec: task.spec, args: conformance.value,
            idempotencyKey: headers[TaskSubmitter.idempotencyKey], caller: caller)
    }

    /// The task a request head submits (a sync call or a queued task), when `CallHandler` may serve it instead of
    /// the router: no check the router's middleware makes (tracing, CORS, the Host guard, the Origin and CSRF guard,
    /// sessions) could act on it, and with API keys (`access`) its bearer key may submit the task (the rate and
    /// in-flight quota are taken when the call starts). Otherwise, or for any other request, nil: the router serves
    /// it (and refuses it).
    static func claimedTask(_ head: HTTPRequest, manifest: Manifest, hostGuard: HostGuard?, access: CallAccess?) -> String? {
        guard let name = CallHandler.apiTaskName(head), manifest.tasks[name] != nil else { return nil }
        let fields = head.headerFields
        // A request with an Origin is the Origin guard's and CORS's; one with an unusual Content-Type the CSRF check's.
        guard fields[.origin] == nil, fields[.contentType].map(isJSONMediaType) ?? true else { return nil }
        if let hostGuard, !hostGuard.admits(fields[hostField] ?? head.authority) { return nil }
        if let access, case .failure = access.admittedKey(fields, task: name) { return nil }
        return name
    }

    /// Runs a call `CallHandler` took, as a task on the connection's event loop (as its key's request, with API
    /// keys), and hands back the answer.
    func start(
        task name: String, head: HTTPRequest, body: [UInt8], access: CallAccess?, executor: EventLoopTaskExecutor,
        caller: CallerPresence, answer: @escaping @Sendable (CallAnswer) -> Void
    ) {
        let submits = components.claimedSubmits
        submits.begin()
        Task(executorPreference: executor) {
            defer { submits.end() }
            let fields = head.headerFields
            let response =
                if let access {
                    await access.serve(fields, task: name) { await submit(task: name, headers: fields, body: body, caller: caller) }
                } else {
                    await submit(task: name, headers: fields, body: body, caller: caller)
                }
            let collected = CollectedBody()
            do {
                try await response.body.write(collected)
                answer(CallAnswer(status: response.status, headers: response.headers, body: collected.bytes))
            } catch {
                // Not expected of the JSON bodies this route answers with; never a half-written body.
                components.logger.error("a submit's answer could not be written", metadata: ["error": "\(error)"])
                answer(.error(.internalError, "the gateway could not write the answer: \(error)"))
            }
        }
    }

    /// At most this many issues are listed in a 422 (`issue_count` says how many there were).
    static let maxIssues = 20

    /// 422 with the first issues' path and message, and how many there were in all.
    static func invalidArguments(_ issues: ArgumentSchema.Issues, task name: String) -> Response {
        let first = issues.items.first.map { "\($0)" } ?? "invalid arguments"
        let more = issues.count > 1 ? " (and \(issues.count - 1) more)" : ""
        return .error(.invalidArguments, "arguments do not match the schema of '\(name)': \(first)\(more)") { w in
            w.key("details")
            w.beginArray()
            for issue in issues.items {
                w.beginObject()
                w.key("path"); w.string(issue.path)
                w.key("message"); w.string(issue.message)
                w.endObject()
            }
            w.endArray()
            w.key("issue_count"); w.int(issues.count)
        }
    }
}

/// A response body gathered into bytes (the JSON answers of `POST /api/<task>`, written by `CallHandler`). A class:
/// `ResponseBody.write` takes its writer by value. Used by one task at a time.
final class CollectedBody: ResponseBodyWriter {
    var bytes: [UInt8] = []

    func write(_ buffer: ByteBuffer) async throws { bytes.append(contentsOf: buffer.readableBytesView) }
    func finish(_ trailingHeaders: HTTPFields?) async throws {}
}
