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
        let args = members["args"] ?? .object([:])
        var issues = manifest.validate(args: args, for: task)
        for key in members.keys.sorted() where key != "args" {
            issues.append(.init(path: key, message: "unexpected field '\(key)' (the body is {\"args\": {...}})"))
        }
        guard issues.isEmpty else { return Self.invalidArguments(issues, task: name) }
        return await submitter.submit(spec: task.spec, args: args, idempotencyKey: request.headers[TaskSubmitter.idempotencyKey])
    }

    /// 422 with every issue's path and message.
    static func invalidArguments(_ issues: [ArgumentSchema.Issue], task name: String) -> Response {
        .error(.invalidArguments, "arguments do not match the schema of '\(name)': \(issues[0])") { w in
            w.key("details")
            w.beginArray()
            for issue in issues {
                w.beginObject()
                w.key("path"); w.string(issue.path)
                w.key("message"); w.string(issue.message)
                w.endObject()
            }
            w.endArray()
        }
    }
}
