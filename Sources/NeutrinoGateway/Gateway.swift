import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import NeutrinoCore
import NeutrinoEvents
import NeutrinoHTTP
import NeutrinoNATS
import NeutrinoObservability
import NeutrinoTaskLog
import ServiceLifecycle

/// `neutrino-gateway`: routes `POST /api/<task>` by the manifest, validates arguments, sends sync tasks to their
/// pool's fast workers, and serves the polling API from the task log. Links no Python.
public final class Gateway: Sendable {
    let configuration: GatewayConfiguration
    let manifest: Manifest
    let pools: [String: WorkerPool]
    let taskLog: (any TaskEventSink)?
    let reader: TaskLogReader?
    let eventsConsumer: EventStreamConsumer?
    let waiters: TaskWaiters?
    let queue: GatewayQueue?
    let workers: WorkerRegistry
    let monitor: PoolMonitor
    let feed: EventFeed?
    let logger: Logger

    public init(configuration: GatewayConfiguration, queue: GatewayQueue? = nil, logger: Logger) throws {
        self.configuration = configuration
        self.queue = queue
        self.logger = logger
        let bytes: [UInt8]
        do {
            bytes = try readFile(configuration.manifestPath)
        } catch {
            throw GatewayError(message: "cannot read the manifest \(configuration.manifestPath): \(error)")
        }
        do { manifest = try Manifest(json: bytes) } catch { throw GatewayError(message: "\(configuration.manifestPath): \(error)") }
        var pools: [String: WorkerPool] = [:]
        for (name, urls) in configuration.httpPools {
            let endpoints = try urls.map { url in
                guard let e = WorkerPool.Endpoint(url: url) else { throw GatewayError(message: "--http-pool \(name): '\(url)' is not http://HOST:PORT") }
                return e
            }
            pools[name] = WorkerPool(name: name, endpoints: endpoints, logger: logger)
        }
        self.pools = pools
        if let path = configuration.taskLogPath {
            let writer = try TaskLogWriter(path: path, logger: logger)
            if configuration.eventsViaNATS {
                guard let queue else { throw GatewayError(message: "--events-via-nats needs --nats") }
                // Workers' events arrive on NEUTRINO_EVENTS and are committed here; this gateway's own events are
                // committed at once and published for the other replicas (applying one twice is harmless).
                taskLog = TeeSink(local: writer, published: NATSEventPublisher(jetStream: queue.js, logger: logger))
                eventsConsumer = EventStreamConsumer(jetStream: queue.js, id: configuration.gatewayID, sink: writer, logger: logger)
            } else {
                taskLog = writer
                eventsConsumer = nil
            }
            let reader = try TaskLogReader(path: path)
            self.reader = reader
            waiters = TaskWaiters(reader: reader)
        } else {
            taskLog = nil
            reader = nil
            waiters = nil
            eventsConsumer = nil
        }
        for (pool, mode) in manifest.pools where mode == .sync && pools[pool] == nil {
            logger.warning("no --http-pool given for a sync pool of the manifest; its tasks will answer 503", metadata: ["pool": "\(pool)"])
        }
        var policies: [String: ScalingPolicy] = [:]
        for (pool, text) in configuration.scaling {
            guard let mode = manifest.pools[pool] else {
                throw GatewayError(message: "--scale \(pool)=\(text): the manifest has no pool '\(pool)'")
            }
            do { policies[pool] = try ScalingPolicy.parse(text, mode: mode) } catch {
                throw GatewayError(message: "--scale \(pool)=\(text): \(error)")
            }
        }
        workers = WorkerRegistry(timeout: configuration.heartbeatTimeout, logger: logger)
        monitor = PoolMonitor(pools: manifest.pools, policies: policies, registry: workers, queue: queue, reader: reader,
                              staticPools: pools, logger: logger)
        feed = reader.map { EventFeed(reader: $0, logger: logger) }
    }

    public func run() async throws {
        let router = Router()
        // Hummingbird applies a middleware to the routes added after it: count every route.
        router.add(middleware: RequestMetricsMiddleware())
        router.get("/healthz") { _, _ in Response.json(.ok, Array(#"{"status":"ok"}"#.utf8)) }
        router.get("/readyz") { _, _ in await self.readiness() }
        router.get("/openapi.json") { _, _ in Response.json(.ok, self.manifest.document) }
        router.post("/api/:task") { request, context in
            await self.submit(request, task: context.parameters.get("task") ?? "")
        }
        router.get("/tasks/:id") { request, context in
            await self.getTask(context.parameters.get("id") ?? "", wait: request.uri.queryParameters.get("wait"))
        }
        router.delete("/tasks/:id") { _, context in
            await self.cancelTask(context.parameters.get("id") ?? "")
        }
        router.get("/tasks") { request, _ in
            await self.listTasks(request.uri.queryParameters)
        }
        router.post("/tasks/:id/retry") { _, context in
            await self.retryTask(context.parameters.get("id") ?? "")
        }
        router.get("/pools") { _, _ in Response.json(.ok, self.monitor.snapshot) }
        router.get("/events") { request, _ in await self.eventStream(request) }
        router.addMetricsRoute()
        if let directory = configuration.dashboardDirectory {
            router.add(middleware: FileMiddleware(directory, searchForIndexHtml: true, logger: logger))
        }
        let app = makeApplication(router: router, host: configuration.host, port: configuration.port,
                                  serverName: "neutrino-gateway", logger: logger)
        logger.info("gateway starting", metadata: [
            "tasks": "\(manifest.tasks.keys.sorted().joined(separator: ","))",
            "pools": "\(configuration.httpPools.map { "\($0.key)=\($0.value.count)" }.sorted().joined(separator: ","))",
        ])
        eventsConsumer?.start()
        let background = Task {
            await withTaskGroup(of: Void.self) { group in
                group.addTask { await self.monitor.run() }
                if let feed = self.feed { group.addTask { await feed.run() } }
                if let queue = self.queue { group.addTask { await self.listenForHeartbeats(queue) } }
            }
        }
        do {
            try await app.runService()
        } catch {
            background.cancel()
            await shutdown()
            throw error
        }
        background.cancel()
        await shutdown()
    }

    /// Feeds the live set of workers from `neutrino.heartbeat.>` until cancelled (resubscribing if NATS was down).
    private func listenForHeartbeats(_ queue: GatewayQueue) async {
        while !Task.isCancelled {
            do {
                let subscription = try await queue.connection.subscribe(subject: WorkerHeartbeat.wildcardSubject)
                await withTaskCancellationHandler {
                    for await data in subscription.messages {
                        if let heartbeat = WorkerHeartbeat(json: data) { workers.apply(heartbeat) }
                    }
                } onCancel: {
                    subscription.close()
                }
            } catch {
                logger.debug("cannot subscribe to heartbeats yet", metadata: ["error": "\(error)"])
            }
            try? await Task.sleep(for: .seconds(1))
        }
    }

    /// `GET /events`: Server-Sent Events, one per committed lifecycle event (see EventFeed).
    private func eventStream(_ request: Request) async -> Response {
        guard let feed else { return Self.noTaskLog }
        let lastID = request.headers[Self.lastEventID].flatMap { Int64($0) }
            ?? request.uri.queryParameters.get("last_event_id").flatMap { Int64($0) }
        let stream = await feed.subscribe(lastEventID: lastID)
        return Response(
            status: .ok,
            headers: [.contentType: "text/event-stream", .cacheControl: "no-cache", Self.accelBuffering: "no"],
            body: ResponseBody { writer in
                for await chunk in stream.cancelOnGracefulShutdown() {
                    try await writer.write(ByteBuffer(bytes: chunk))
                }
                try await writer.finish(nil)
            })
    }

    static let lastEventID = HTTPField.Name("Last-Event-ID")!
    static let accelBuffering = HTTPField.Name("X-Accel-Buffering")!

    private func shutdown() async {
        await eventsConsumer?.stop()
        await taskLog?.close()
        await reader?.shutdown()
        for pool in pools.values { pool.close() }
        await queue?.close()
    }

    // MARK: Submitting

    func submit(_ request: Request, task name: String) async -> Response {
        guard let task = manifest.tasks[name] else {
            return .error(.notFound, type: "UnknownTask", message: "no task named '\(name)' in the manifest")
        }
        let body: [UInt8]
        do { body = try await request.collectBody(limit: configuration.maxBodyBytes) } catch { return error.response }
        let document: JSONValue
        do { document = try JSONParser.parse(body) } catch {
            return .error(.badRequest, type: "MalformedJSON", message: "the body is not valid JSON: \(error)")
        }
        guard case .object(let members) = document else {
            return .error(.badRequest, type: "MalformedJSON", message: "the body must be a JSON object {\"args\": {...}}")
        }
        let args = members["args"] ?? .object([:])
        var issues = manifest.validate(args: args, for: task)
        for key in members.keys.sorted() where key != "args" {
            issues.append(.init(path: key, message: "unexpected field '\(key)' (the body is {\"args\": {...}})"))
        }
        guard issues.isEmpty else {
            return .error(.unprocessableContent, type: "InvalidArguments",
                          message: "arguments do not match the schema of '\(name)': \(issues[0])") { w in
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
        let spec = task.spec
        NeutrinoMetrics.submitted(task: spec.name, mode: spec.mode.rawValue, pool: spec.pool)
        guard spec.mode == .sync else {
            return await enqueue(spec: spec, args: args, idempotencyKey: request.headers[Self.idempotencyKey])
        }
        return await callSync(spec: spec, args: args)
    }

    static let idempotencyKey = HTTPField.Name("Idempotency-Key")!
    /// How long an Idempotency-Key keeps naming its task: JetStream's duplicate window.
    static let idempotencyWindow = Duration.seconds(120)

    /// Async and gpu tasks: recorded `queued` (committed alongside the publish), published with
    /// `Nats-Msg-Id = task_id`, and answered 202 only after both. A failed publish leaves the task `failed` (never
    /// `queued` forever) and answers 503 with Retry-After. An `Idempotency-Key` seen within the window answers with
    /// the task it created first.
    private func enqueue(spec: TaskSpec, args: JSONValue, idempotencyKey: String?) async -> Response {
        guard let queue else {
            return .error(.notImplemented, type: "NotSupported",
                          message: "'\(spec.name)' is an \(spec.mode.rawValue) task: start the gateway with --nats URL to run queued tasks")
        }
        let taskID = TaskID.make()
        if let key = idempotencyKey {
            guard !key.isEmpty, key.utf8.count <= 255 else {
                return .error(.badRequest, type: "BadRequest", message: "Idempotency-Key must be 1 to 255 bytes")
            }
            guard let reader else { return Self.noTaskLog }
            do {
                let owner = try await reader.claimIdempotencyKey("\(spec.name):\(key)", taskID: taskID, window: Self.idempotencyWindow)
                if owner != taskID { return await replay(taskID: owner, spec: spec) }
            } catch {
                return .error(.serviceUnavailable, type: "TaskLogUnavailable", message: "\(error)", headers: [.retryAfter: "1"])
            }
        }
        return await publishQueued(spec: spec, args: args, taskID: taskID, queue: queue)
    }

    /// The answer for a repeated Idempotency-Key: the task the first request created, as it stands now.
    private func replay(taskID: String, spec: TaskSpec) async -> Response {
        await taskLog?.flush()
        let status = (try? await reader?.record(id: taskID))??.status ?? .queued
        return queuedAnswer(taskID: taskID, spec: spec, status: status, extra: ["Idempotent-Replayed": "true"])
    }

    private func queuedAnswer(taskID: String, spec: TaskSpec, status: TaskStatus, extra: [String: String] = [:],
                              retryOf: String? = nil) -> Response {
        var w = JSONWriter()
        w.beginObject()
        w.key("task_id"); w.string(taskID)
        if let retryOf { w.key("retry_of"); w.string(retryOf) }
        w.key("function"); w.string(spec.name)
        w.key("pool"); w.string(spec.pool)
        w.key("status"); w.string(status.rawValue)
        w.key("poll_url"); w.string("/tasks/\(taskID)")
        w.endObject()
        var headers: HTTPFields = [NeutrinoHeader.taskID: taskID, .location: "/tasks/\(taskID)"]
        for (k, v) in extra { if let name = HTTPField.Name(k) { headers[name] = v } }
        return .json(.accepted, w.bytes, headers: headers)
    }

    private func publishQueued(spec: TaskSpec, args: JSONValue, taskID: String, queue: GatewayQueue, retryOf: String? = nil) async -> Response {
        let taskHeader: HTTPFields = [NeutrinoHeader.taskID: taskID]
        taskLog?.record(TaskEvent(taskID: taskID, kind: .queued, function: spec.name, pool: spec.pool, mode: spec.mode,
                                  attempt: 0, args: args.jsonText, detail: retryOf.map { "retry of \($0)" }))
        // The commit of the queued row and the publish run side by side; the 202 waits for both, so an id that was
        // answered always exists. (A worker may record `running` before the `queued` row commits: events apply in
        // any order.)
        let taskLog = self.taskLog
        async let committed: Void = { await taskLog?.flush() }()
        do {
            try await queue.publish(spec: spec, taskID: taskID, body: Self.forwardBody(args))
            await committed
        } catch {
            await committed
            let message = "the task queue is unavailable: \(error)"
            taskLog?.record(TaskEvent(taskID: taskID, kind: .failed, function: spec.name, pool: spec.pool, mode: spec.mode,
                                      error: JSONWriter.taskErrorText(type: "QueueUnavailable", message: message)))
            logger.warning("publish failed", metadata: ["task_id": "\(taskID)", "error": "\(error)"])
            NeutrinoMetrics.finished(task: spec.name, mode: spec.mode.rawValue, pool: spec.pool, status: TaskStatus.failed.rawValue)
            return Self.taskError(.serviceUnavailable, taskID: taskID, status: .failed, type: "QueueUnavailable", message: message,
                                  headers: taskHeader + [.retryAfter: "2"])
        }
        return queuedAnswer(taskID: taskID, spec: spec, status: .queued, retryOf: retryOf)
    }

    private enum Lookup {
        case found(TaskRecord)
        case answer(Response)
    }

    /// The task `rawID` names, read after this gateway's own events are committed; or the answer saying why there
    /// is none (404 unknown, 503 no task log).
    private func existingTask(_ rawID: String) async -> Lookup {
        guard let reader else { return .answer(Self.noTaskLog) }
        guard TaskID.isValid(rawID) else { return .answer(.error(.notFound, type: "TaskNotFound", message: "'\(rawID)' is not a task id")) }
        await taskLog?.flush()
        do {
            guard let record = try await reader.record(id: rawID.lowercased()) else {
                return .answer(.error(.notFound, type: "TaskNotFound", message: "no task with id \(rawID)"))
            }
            return .found(record)
        } catch {
            return .answer(.error(.serviceUnavailable, type: "TaskLogUnavailable", message: "\(error)"))
        }
    }

    /// `DELETE /tasks/<id>`: a queued task becomes `cancelled` and never runs; a running async task is interrupted
    /// by its worker (202, `cancelling`); a finished task answers 409.
    func cancelTask(_ rawID: String) async -> Response {
        let record: TaskRecord
        switch await existingTask(rawID) {
        case .found(let r): record = r
        case .answer(let response): return response
        }
        let id = record.id
        func answer(_ code: HTTPResponse.Status, _ status: String) -> Response {
            var w = JSONWriter()
            w.beginObject()
            w.key("task_id"); w.string(id)
            w.key("status"); w.string(status)
            w.endObject()
            return .json(code, w.bytes)
        }
        if record.status.isTerminal {
            return Self.taskError(.conflict, taskID: id, status: record.status, type: "TaskFinished",
                                  message: "task \(id) is already \(record.status.rawValue)")
        }
        if record.mode == .sync {
            return .error(.conflict, type: "NotCancellable", message: "a sync task cannot be cancelled; it ends within its timeout")
        }
        switch record.status {
        case .pending, .queued:
            taskLog?.record(TaskEvent(taskID: id, kind: .cancelled, function: record.function, pool: record.pool, mode: record.mode,
                                      attempt: record.attempts,
                                      error: JSONWriter.taskErrorText(type: "Cancelled", message: "cancelled while queued")))
            await taskLog?.flush()
            // Best effort: a worker about to run it also checks the task log, or (--task-log nats) NEUTRINO_SETTLED.
            try? await queue?.recordCancel(taskID: id)
            try? await queue?.broadcastCancel(taskID: id)
            return answer(.ok, TaskStatus.cancelled.rawValue)
        default:
            guard let queue else { return .error(.serviceUnavailable, type: "QueueUnavailable", message: "not connected to NATS") }
            do {
                try await queue.broadcastCancel(taskID: id)
            } catch {
                return .error(.serviceUnavailable, type: "QueueUnavailable", message: "cannot reach the workers: \(error)",
                              headers: [.retryAfter: "2"])
            }
            return answer(.accepted, "cancelling")
        }
    }

    /// `POST /tasks/<id>/retry`: runs a failed, timed-out or cancelled task again as a new task with the same
    /// function and arguments; answers as the submit would (202 or the sync result), naming the original.
    func retryTask(_ rawID: String) async -> Response {
        let record: TaskRecord
        switch await existingTask(rawID) {
        case .found(let r): record = r
        case .answer(let response): return response
        }
        let id = record.id
        guard [.failed, .timedOut, .cancelled].contains(record.status) else {
            return Self.taskError(.conflict, taskID: id, status: record.status, type: "NotRetryable",
                                  message: "task \(id) is \(record.status.rawValue); only failed, timed_out or cancelled tasks can be retried")
        }
        guard let task = manifest.tasks[record.function] else {
            return .error(.conflict, type: "NotRetryable", message: "the manifest no longer has a task named '\(record.function)'")
        }
        let args: JSONValue
        do { args = try JSONParser.parse(Array((record.args ?? "{}").utf8)) } catch {
            return .error(.conflict, type: "NotRetryable", message: "the stored arguments of \(id) are not valid JSON")
        }
        let issues = manifest.validate(args: args, for: task)
        guard issues.isEmpty else {
            return .error(.conflict, type: "NotRetryable", message: "the stored arguments no longer match the schema of '\(record.function)': \(issues[0])")
        }
        let retryHeader: HTTPFields = [Self.retryOf: id]
        let spec = task.spec
        NeutrinoMetrics.submitted(task: spec.name, mode: spec.mode.rawValue, pool: spec.pool)
        guard spec.mode == .sync else {
            guard let queue else {
                return .error(.notImplemented, type: "NotSupported", message: "start the gateway with --nats URL to run queued tasks")
            }
            var response = await publishQueued(spec: spec, args: args, taskID: TaskID.make(), queue: queue, retryOf: id)
            response.headers.append(contentsOf: retryHeader)
            return response
        }
        var response = await callSync(spec: spec, args: args, retryOf: id)
        response.headers.append(contentsOf: retryHeader)
        return response
    }

    static let retryOf = HTTPField.Name("X-Neutrino-Retry-Of")!

    private func callSync(spec: TaskSpec, args: JSONValue, retryOf: String? = nil) async -> Response {
        let taskID = TaskID.make()
        func event(_ kind: TaskEventKind, workerID: String? = nil, result: String? = nil, error: String? = nil,
                   durationMs: Double? = nil) -> TaskEvent {
            TaskEvent(taskID: taskID, kind: kind, function: spec.name, pool: spec.pool, mode: spec.mode, workerID: workerID,
                      attempt: kind == .pending ? 0 : 1, args: kind == .pending ? args.jsonText : nil, result: result,
                      error: error, durationMs: durationMs, detail: kind == .pending ? retryOf.map { "retry of \($0)" } : nil)
        }
        // `pending` is recorded together with the outcome, in one batch: the worker's `running` makes the task
        // visible while it runs, and a sync call costs the task log one transaction instead of two.
        let pending = event(.pending)
        let started = ContinuousClock.now
        func record(_ outcome: TaskEvent?, running: TaskEvent? = nil) {
            taskLog?.record(contentsOf: [pending] + (running.map { [$0] } ?? []) + (outcome.map { [$0] } ?? []))
            let elapsed = ContinuousClock.now - started
            if let final = outcome.flatMap({ TaskStatus(rawValue: $0.kind.rawValue) }) {
                NeutrinoMetrics.finished(task: spec.name, mode: spec.mode.rawValue, pool: spec.pool, status: final.rawValue)
            }
            NeutrinoMetrics.recordDuration(NeutrinoMetrics.taskDuration, task: spec.name, mode: spec.mode.rawValue, pool: spec.pool,
                                           milliseconds: elapsed.milliseconds)
        }
        let taskHeader: HTTPFields = [NeutrinoHeader.taskID: taskID]
        guard let pool = pools[spec.pool] else {
            let message = "no worker is configured for pool '\(spec.pool)'"
            record(event(.failed, error: JSONWriter.taskErrorText(type: "NoWorkerAvailable", message: message)))
            return Self.taskError(.serviceUnavailable, taskID: taskID, status: .failed, type: "NoWorkerAvailable", message: message,
                                  headers: taskHeader + [.retryAfter: "1"])
        }
        // The worker enforces the timeout and answers 504 itself; the grace covers queueing and transport.
        let deadline = NIODeadline.now() + .milliseconds(Int64(spec.timeoutMs + configuration.timeoutGraceMs))
        let answer: WorkerPool.Answer
        do {
            answer = try await pool.call(task: spec.name, taskID: taskID, body: Self.forwardBody(args), deadline: deadline)
        } catch {
            switch error {
            case .timedOut:
                let message = "no answer from the worker within \(spec.timeoutMs) ms + \(configuration.timeoutGraceMs) ms grace"
                record(event(.timedOut, error: JSONWriter.taskErrorText(type: "TimeoutError", message: message)))
                return Self.taskError(.gatewayTimeout, taskID: taskID, status: .timedOut, type: "TimeoutError", message: message, headers: taskHeader)
            case .noWorkerAvailable(let reason):
                let message = "no worker of pool '\(spec.pool)' is reachable (\(reason))"
                record(event(.failed, error: JSONWriter.taskErrorText(type: "NoWorkerAvailable", message: message)))
                return Self.taskError(.serviceUnavailable, taskID: taskID, status: .failed, type: "NoWorkerAvailable", message: message,
                                      headers: taskHeader + [.retryAfter: "1"])
            }
        }
        // Record the outcome the caller is about to see, so GET /tasks/<id> right after this answer shows it.
        var outcome: TaskEvent?
        if let statusText = answer.headers["x-neutrino-status"], let status = TaskStatus(rawValue: statusText), status.isTerminal,
           let offsetText = answer.headers["x-neutrino-outcome-offset"], let offset = Int(offsetText),
           offset < answer.body.count {
            let raw = String(decoding: answer.body[offset..<(answer.body.count - 1)], as: UTF8.self)
            let kind: TaskEventKind = status == .completed ? .completed : status == .timedOut ? .timedOut : .failed
            outcome = event(kind, workerID: answer.headers["x-neutrino-worker"],
                            result: kind == .completed ? raw : nil, error: kind == .completed ? nil : raw,
                            durationMs: answer.headers["x-neutrino-duration-ms"].flatMap(Double.init))
        }
        // The worker's own `running` may still sit in its writer's queue: record the start it reported too (the unique
        // (task, event, attempt) index keeps one), so the record read right after this answer is complete.
        var running: TaskEvent?
        if outcome != nil, let startedText = answer.headers["x-neutrino-started-at"], let millis = Int64(startedText) {
            var e = event(.running, workerID: answer.headers["x-neutrino-worker"])
            e.at = Timestamp(millis: millis)
            running = e
        }
        record(outcome, running: running)
        return .json(HTTPResponse.Status(code: answer.status), answer.body, headers: taskHeader)
    }

    /// What a worker receives: `{"args":…}` re-written from the validated value.
    static func forwardBody(_ args: JSONValue) -> [UInt8] {
        var w = JSONWriter()
        w.beginObject()
        w.key("args")
        w.value(args)
        w.endObject()
        return w.bytes
    }

    static func taskError(_ code: HTTPResponse.Status, taskID: String, status: TaskStatus, type: String, message: String,
                          headers: HTTPFields = [:]) -> Response {
        .error(code, type: type, message: message, headers: headers) { w in
            w.key("task_id"); w.string(taskID)
            w.key("status"); w.string(status.rawValue)
        }
    }

    // MARK: Polling API

    /// The longest `?wait=` honoured, in seconds.
    static let maxWaitSeconds = 60.0

    func getTask(_ rawID: String, wait: String?) async -> Response {
        guard let reader, let waiters else { return Self.noTaskLog }
        guard TaskID.isValid(rawID) else { return .error(.notFound, type: "TaskNotFound", message: "'\(rawID)' is not a task id") }
        let id = rawID.lowercased()
        var waitSeconds = 0.0
        if let wait, !wait.isEmpty {
            guard let seconds = Double(wait), seconds >= 0, seconds.isFinite else {
                return .error(.badRequest, type: "BadRequest", message: "wait must be a number of seconds (0 to \(Int(Self.maxWaitSeconds)))")
            }
            waitSeconds = min(seconds, Self.maxWaitSeconds)
        }
        await taskLog?.flush()
        do {
            guard var (record, events) = try await reader.recordWithEvents(id: id) else {
                return .error(.notFound, type: "TaskNotFound", message: "no task with id \(rawID)")
            }
            if !record.status.isTerminal && waitSeconds > 0 {
                await waiters.waitForTerminal(id: id, timeout: .milliseconds(Int64(waitSeconds * 1000)))
                if let fresh = try await reader.recordWithEvents(id: id) { (record, events) = fresh }
            }
            var w = JSONWriter(capacity: 1024)
            w.task(record, events: events)
            return .json(.ok, w.bytes)
        } catch {
            logger.error("task log read failed", metadata: ["error": "\(error)"])
            return .error(.serviceUnavailable, type: "TaskLogUnavailable", message: "\(error)")
        }
    }

    func listTasks(_ query: Hummingbird.Parameters) async -> Response {
        guard let reader else { return Self.noTaskLog }
        var filter = TaskListFilter()
        if let s = query.get("status"), !s.isEmpty {
            guard let status = TaskStatus(rawValue: s) else {
                let allowed = TaskStatus.allCases.map(\.rawValue).joined(separator: ", ")
                return .error(.badRequest, type: "BadRequest", message: "unknown status '\(s)'; one of \(allowed)")
            }
            filter.status = status
        }
        if let f = query.get("function"), !f.isEmpty { filter.function = f }
        if let p = query.get("pool"), !p.isEmpty { filter.pool = p }
        if let m = query.get("mode"), !m.isEmpty {
            guard let mode = ExecutionMode(rawValue: m) else {
                return .error(.badRequest, type: "BadRequest", message: "unknown mode '\(m)'; one of sync, async, gpu")
            }
            filter.mode = mode
        }
        for (name, keyPath) in [("since", \TaskListFilter.since), ("until", \TaskListFilter.until)] {
            guard let text = query.get(name), !text.isEmpty else { continue }
            guard let time = Self.parseTime(text) else {
                return .error(.badRequest, type: "BadRequest", message: "\(name) must be an ISO-8601 time (2026-12-01T10:00:00Z) or epoch milliseconds")
            }
            filter[keyPath: keyPath] = time
        }
        if let q = query.get("q"), !q.isEmpty {
            guard q.utf8.count <= 200 else { return .error(.badRequest, type: "BadRequest", message: "q must be at most 200 bytes") }
            filter.nameContains = q
        }
        if let l = query.get("limit"), !l.isEmpty {
            guard let limit = Int(l), (1...500).contains(limit) else {
                return .error(.badRequest, type: "BadRequest", message: "limit must be an integer from 1 to 500")
            }
            filter.limit = limit
        }
        if let b = query.get("before"), !b.isEmpty {
            guard TaskID.isValid(b) else { return .error(.badRequest, type: "BadRequest", message: "before must be a task id") }
            filter.before = b.lowercased()
        }
        await taskLog?.flush()
        do {
            let records = try await reader.list(filter)
            var w = JSONWriter(capacity: 512 * max(1, records.count))
            w.beginObject()
            w.key("tasks")
            w.beginArray()
            for r in records { w.task(r) }
            w.endArray()
            w.key("next_before")
            w.stringOrNull(records.count == filter.limit ? records.last?.id : nil)
            w.endObject()
            return .json(.ok, w.bytes)
        } catch {
            logger.error("task log read failed", metadata: ["error": "\(error)"])
            return .error(.serviceUnavailable, type: "TaskLogUnavailable", message: "\(error)")
        }
    }

    /// `2026-12-01T10:00:00Z`, with or without milliseconds, or epoch milliseconds.
    static func parseTime(_ text: String) -> Timestamp? {
        if let millis = Int64(text), millis >= 0 { return Timestamp(millis: millis) }
        if let t = Timestamp(iso8601: text) { return t }
        // Without milliseconds: insert them.
        if text.hasSuffix("Z"), text.count == 20 { return Timestamp(iso8601: String(text.dropLast()) + ".000Z") }
        return nil
    }

    func readiness() async -> Response {
        var problems: [String] = []
        if let reader {
            do { _ = try await reader.list(TaskListFilter(limit: 1)) } catch { problems.append("task log: \(error)") }
        }
        for (name, pool) in pools where pool.healthyCount == 0 { problems.append("pool \(name): no reachable worker") }
        if let queue, !queue.isConnected { problems.append("NATS: not connected") }
        if problems.isEmpty { return .json(.ok, Array(#"{"status":"ready"}"#.utf8)) }
        return .error(.serviceUnavailable, type: "NotReady", message: problems.joined(separator: "; "))
    }

    static let noTaskLog = Response.error(.serviceUnavailable, type: "TaskLogUnavailable",
                                          message: "this gateway runs without a task log (--task-log)")
}

public struct GatewayError: Error, CustomStringConvertible {
    public var message: String
    public var description: String { message }
}

public func readFile(_ path: String) throws -> [UInt8] {
    guard let data = FileManager.default.contents(atPath: path) else { throw GatewayError(message: "no such readable file") }
    return Array(data)
}

extension HTTPFields {
    static func + (lhs: HTTPFields, rhs: HTTPFields) -> HTTPFields {
        var out = lhs
        out.append(contentsOf: rhs)
        return out
    }
}
