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
    /// The ASGI app the Python app mounts (`App.mount`, `x-neutrino-asgi`), or nil.
    public var asgi: ASGIMount?

    /// An ASGI app mounted as the gateway's fallback: the sync pool whose HTTP workers serve it, and its routes as the
    /// SDK read them (Starlette/FastAPI `app.routes`), for the start-up check against Neutrino's own routes.
    public struct ASGIMount: Sendable {
        public struct Route: Sendable {
            /// Starlette's pattern: `/items/{item_id}`, `/files/{path:path}`; a mount's prefix for `kind` "mount".
            public var path: String
            /// Empty: any method (a mount, a WebSocket route, an app without `methods`).
            public var methods: [String]
            /// `route`, `websocket` or `mount`.
            public var kind: String

            public init(path: String, methods: [String], kind: String) {
                self.path = path
                self.methods = methods
                self.kind = kind
            }
        }

        public var pool: String
        /// The app's class (`fastapi.applications.FastAPI`), for messages.
        public var app: String
        public var routes: [Route]

        public init(pool: String, app: String, routes: [Route]) {
            self.pool = pool
            self.app = app
            self.routes = routes
        }
    }

    public struct LoadError: Error, Sendable, CustomStringConvertible {
        public var message: String
        public var description: String { message }
    }

    /// The pools the manifest's tasks use, with their execution mode.
    public var pools: [String: ExecutionMode] {
        var out: [String: ExecutionMode] = [:]
        for t in tasks.values { out[t.spec.pool] = t.spec.mode }
        if let asgi, out[asgi.pool] == nil { out[asgi.pool] = .sync }
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
            var coroutine: Bool?
            if let kind = op["x-neutrino-coroutine"], kind != .null {
                guard let flag = kind.boolValue else { throw LoadError(message: "\(location): 'x-neutrino-coroutine' must be true or false") }
                coroutine = flag
            }
            let argsSchema = op["requestBody"]?["content"]?["application/json"]?["schema"]?["properties"]?["args"] ?? .object([:])
            let arguments: ArgumentSchema
            do { arguments = try ArgumentSchema(argsSchema) } catch { throw LoadError(message: "\(location): args schema: \(error)") }
            tasks[name] = Task(
                spec: TaskSpec(name: name, mode: mode, pool: pool, timeoutMs: timeout, retries: retries, coroutine: coroutine),
                arguments: arguments)
        }
        var asgi: ASGIMount?
        if let mount = root["x-neutrino-asgi"], mount != .null {
            guard let pool = mount["pool"]?.stringValue, TaskSpec.isValidName(pool) else {
                throw LoadError(message: "x-neutrino-asgi: 'pool' must be a [a-z0-9_]+ name")
            }
            if let other = tasks.values.first(where: { $0.spec.pool == pool && $0.spec.mode != .sync }) {
                throw LoadError(message: "x-neutrino-asgi: pool '\(pool)' runs \(other.spec.mode.rawValue) tasks; an ASGI app needs a sync pool")
            }
            var routes: [ASGIMount.Route] = []
            for item in mount["routes"]?.arrayValue ?? [] {
                guard let path = item["path"]?.stringValue else { continue }
                routes.append(
                    ASGIMount.Route(
                        path: path, methods: item["methods"]?.arrayValue?.compactMap(\.stringValue) ?? [],
                        kind: item["kind"]?.stringValue ?? "route"))
            }
            asgi = ASGIMount(pool: pool, app: mount["app"]?.stringValue ?? "the ASGI app", routes: routes)
        }
        guard !tasks.isEmpty || asgi != nil else {
            throw LoadError(message: "manifest declares no task (no POST /api/<task> paths) and mounts no ASGI app")
        }
        self.asgi = asgi
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
