/// The manifest the gateway routes by: the OpenAPI 3.1 document `neutrino openapi APP` writes, with one
/// `POST /api/<task>` per task, its argument schema, and the routing facts in `x-neutrino-*` extensions.
public struct Manifest: Sendable {
    public struct Task: Sendable {
        public var spec: TaskSpec
        public var arguments: ArgumentSchema
    }

    public var appName: String?
    public var tasks: [String: Task]
    /// `components.schemas`, compiled: what `$ref`s in argument schemas point to.
    public var definitions: [String: ArgumentSchema]
    /// The document as it was read, served back at `/openapi.json`.
    public var document: [UInt8]

    public struct LoadError: Error, Sendable, CustomStringConvertible {
        public var message: String
        public var description: String { message }
    }

    /// The pools the manifest's tasks use, with their execution mode.
    public var pools: [String: ExecutionMode] {
        var out: [String: ExecutionMode] = [:]
        for t in tasks.values { out[t.spec.pool] = t.spec.mode }
        return out
    }

    public init(json bytes: [UInt8]) throws(LoadError) {
        let root: JSONValue
        do { root = try JSONParser.parse(bytes) } catch { throw LoadError(message: "manifest is not JSON: \(error)") }
        guard let openapi = root["openapi"]?.stringValue, openapi.hasPrefix("3.") else {
            throw LoadError(message: "manifest is not an OpenAPI 3 document (no 'openapi' version)")
        }
        guard let paths = root["paths"]?.objectValue else { throw LoadError(message: "manifest has no 'paths'") }
        var definitions: [String: ArgumentSchema] = [:]
        for (name, schema) in root["components"]?["schemas"]?.objectValue ?? [:] {
            do { definitions[name] = try ArgumentSchema(schema) } catch {
                throw LoadError(message: "components.schemas.\(name): \(error)")
            }
        }
        var tasks: [String: Task] = [:]
        for (path, item) in paths {
            guard path.hasPrefix("/api/"), let op = item["post"] else { continue }
            let name = String(path.dropFirst("/api/".count))
            let location = "paths['\(path)'].post"
            guard TaskSpec.isValidName(name) else { throw LoadError(message: "\(location): task name '\(name)' is not [a-z0-9_]+") }
            guard let modeText = op["x-neutrino-mode"]?.stringValue, let mode = ExecutionMode(rawValue: modeText) else {
                throw LoadError(message: "\(location): 'x-neutrino-mode' must be one of sync, async, gpu")
            }
            guard let pool = op["x-neutrino-pool"]?.stringValue, TaskSpec.isValidName(pool) else {
                throw LoadError(message: "\(location): 'x-neutrino-pool' must be a [a-z0-9_]+ name")
            }
            guard let timeout = op["x-neutrino-timeout"]?.intValue, timeout > 0 else {
                throw LoadError(message: "\(location): 'x-neutrino-timeout' must be a positive number of milliseconds")
            }
            if mode == .sync && timeout > TaskSpec.maxSyncTimeoutMs {
                throw LoadError(message: "\(location): a sync task's timeout must be at most \(TaskSpec.maxSyncTimeoutMs) ms")
            }
            let retries = op["x-neutrino-retries"]?.intValue ?? 0
            guard retries >= 0 else { throw LoadError(message: "\(location): 'x-neutrino-retries' must be >= 0") }
            let argsSchema = op["requestBody"]?["content"]?["application/json"]?["schema"]?["properties"]?["args"] ?? .object([:])
            let arguments: ArgumentSchema
            do { arguments = try ArgumentSchema(argsSchema) } catch { throw LoadError(message: "\(location): args schema: \(error)") }
            tasks[name] = Task(
                spec: TaskSpec(name: name, mode: mode, pool: pool, timeoutMs: timeout, retries: retries),
                arguments: arguments)
        }
        guard !tasks.isEmpty else { throw LoadError(message: "manifest declares no task (no POST /api/<task> paths)") }
        self.appName = root["x-neutrino-app"]?.stringValue ?? root["info"]?["title"]?.stringValue
        self.tasks = tasks
        self.definitions = definitions
        self.document = bytes
    }

    /// Issues with `args` for `task` (empty when valid).
    public func validate(args: JSONValue, for task: Task) -> [ArgumentSchema.Issue] {
        task.arguments.validate(args, definitions: definitions)
    }

    /// `args` checked against `task`'s schema: its issues (the first `limit`, all counted) and the value to forward.
    public func conform(args: JSONValue, for task: Task, limit: Int = 20) -> ArgumentSchema.Conformance {
        task.arguments.conform(args, definitions: definitions, limit: limit)
    }
}
