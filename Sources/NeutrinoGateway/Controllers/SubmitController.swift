import Hummingbird
import NeutrinoCore
import NeutrinoHTTP

/// `POST /api/<task>`: manifest lookup, body read with a limit, JSON parse, argument schema, then the submitter.
struct SubmitController: Sendable {
    let components: GatewayComponents
    let submitter: TaskSubmitter

    func addRoutes(to router: Router<GatewayRequestContext>) {
        router.post("/api/:task") { request, context in
            await submit(request, task: context.parameters.get("task") ?? "")
        }
    }

    func submit(_ request: Request, task name: String) async -> Response {
        let manifest = components.manifest
        guard let task = manifest.tasks[name] else {
            return .error(.unknownTask, "no task named '\(name)' in the manifest")
        }
        let body: [UInt8]
        do { body = try await request.collectBody(limit: components.configuration.maxBodyBytes) } catch { return error.response }
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
            idempotencyKey: request.headers[TaskSubmitter.idempotencyKey])
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
