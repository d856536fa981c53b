import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import NeutrinoCore
import NeutrinoHTTP
import NeutrinoTaskLog
import ServiceLifecycle

/// The polling API over the task log: one task (`?wait=` long-poll), the filtered list, cancel, retry, and the live
/// feed of lifecycle events (`GET /events`, Server-Sent Events).
struct TasksController: Sendable {
    let components: GatewayComponents
    let submitter: TaskSubmitter

    /// The longest `?wait=` honoured, in seconds.
    static let maxWaitSeconds = 60.0
    static let retryOf = HTTPField.Name("X-Neutrino-Retry-Of")!
    static let lastEventID = HTTPField.Name("Last-Event-ID")!
    static let accelBuffering = HTTPField.Name("X-Accel-Buffering")!

    func addRoutes(to router: Router<GatewayRequestContext>) {
        router.get("/tasks/:id") { request, context in
            await getTask(context.parameters.get("id") ?? "", wait: request.uri.queryParameters.get("wait"))
        }
        router.delete("/tasks/:id") { _, context in
            await cancelTask(context.parameters.get("id") ?? "")
        }
        router.get("/tasks") { request, _ in
            await listTasks(request.uri.queryParameters)
        }
        router.post("/tasks/:id/retry") { _, context in
            await retryTask(context.parameters.get("id") ?? "")
        }
        router.get("/events") { request, _ in await eventStream(request) }
    }

    // MARK: One task

    func getTask(_ rawID: String, wait: String?) async -> Response {
        guard let reader = components.reader, let waiters = components.waiters else { return .noTaskLog }
        guard TaskID.isValid(rawID) else { return .error(.taskNotFound, "'\(rawID)' is not a task id") }
        let id = rawID.lowercased()
        var waitSeconds = 0.0
        if let wait, !wait.isEmpty {
            guard let seconds = Double(wait), seconds >= 0, seconds.isFinite else {
                return .error(.badRequest, "wait must be a number of seconds (0 to \(Int(Self.maxWaitSeconds)))")
            }
            waitSeconds = min(seconds, Self.maxWaitSeconds)
        }
        await components.taskLog?.flush()
        do {
            let found = try await components.catchUp.find(id) { try await reader.recordWithEvents(id: id) }
            guard var (record, events) = found else {
                return .error(.taskNotFound, "no task with id \(rawID)")
            }
            // A wake-up is a hint (a worker's notice may run ahead of this gateway's copy of the event): wait on until
            // the record is terminal, the deadline passes, or the client is gone.
            let deadline = ContinuousClock.now + .nanoseconds(Int64(waitSeconds * 1e9))
            while !record.status.isTerminal && !Task.isCancelled {
                let left = deadline - ContinuousClock.now
                guard left > .zero else { break }
                if case .full(let limit) = await waiters.waitForTerminal(id: id, timeout: left) {
                    HTTPRejections.count("long_poll_waiters")
                    return .error(
                        .overloaded, "\(limit) long polls are waiting (--max-long-poll-waiters); poll without wait= or retry later",
                        headers: [.retryAfter: "1"])
                }
                guard let fresh = try await reader.recordWithEvents(id: id) else { break }  // removed meanwhile (retention)
                (record, events) = fresh
            }
            var w = JSONWriter(capacity: 1024)
            w.task(record, events: events)
            return .json(.ok, w.bytes)
        } catch is ReplicaCatchUp.Full {
            return .replicaCatchUpFull
        } catch {
            components.logger.error("task log read failed", metadata: ["error": "\(error)"])
            return .error(.taskLogUnavailable, "\(error)")
        }
    }

    // MARK: The list

    func listTasks(_ query: Hummingbird.Parameters) async -> Response {
        guard let reader = components.reader else { return .noTaskLog }
        var filter = TaskListFilter()
        if let s = query.get("status"), !s.isEmpty {
            guard let status = TaskStatus(rawValue: s) else {
                let allowed = TaskStatus.allCases.map(\.rawValue).joined(separator: ", ")
                return .error(.badRequest, "unknown status '\(s)'; one of \(allowed)")
            }
            filter.status = status
        }
        if let f = query.get("function"), !f.isEmpty { filter.function = f }
        if let p = query.get("pool"), !p.isEmpty { filter.pool = p }
        if let m = query.get("mode"), !m.isEmpty {
            guard let mode = ExecutionMode(rawValue: m) else {
                return .error(.badRequest, "unknown mode '\(m)'; one of sync, async, gpu")
            }
            filter.mode = mode
        }
        for (name, keyPath) in [("since", \TaskListFilter.since), ("until", \TaskListFilter.until)] {
            guard let text = query.get(name), !text.isEmpty else { continue }
            guard let time = Self.parseTime(text) else {
                return .error(.badRequest, "\(name) must be an ISO-8601 time (2026-12-01T10:00:00Z) or epoch milliseconds")
            }
            filter[keyPath: keyPath] = time
        }
        if let q = query.get("q"), !q.isEmpty {
            guard q.utf8.count <= 200 else { return .error(.badRequest, "q must be at most 200 bytes") }
            filter.nameContains = q
        }
        if let l = query.get("limit"), !l.isEmpty {
            guard let limit = Int(l), (1...500).contains(limit) else {
                return .error(.badRequest, "limit must be an integer from 1 to 500")
            }
            filter.limit = limit
        }
        if let b = query.get("before"), !b.isEmpty {
            guard TaskID.isValid(b) else { return .error(.badRequest, "before must be a task id") }
            filter.before = b.lowercased()
        }
        var bodies: TaskBodies = []
        if let f = query.get("fields"), !f.isEmpty {
            for name in f.split(separator: ",") {
                guard let body = TaskBodies.names.first(where: { $0.0 == name })?.1 else {
                    return .error(.badRequest, "fields is a comma-separated list of args, result, error")
                }
                bodies.insert(body)
            }
        }
        await components.taskLog?.flush()
        do {
            let records = try await reader.list(filter)
            return .json(.ok, Self.page(records, limit: filter.limit, bodies: bodies, maxBytes: components.configuration.maxListBytes))
        } catch {
            components.logger.error("task log read failed", metadata: ["error": "\(error)"])
            return .error(.taskLogUnavailable, "\(error)")
        }
    }

    /// `{"tasks":[…],"next_before":…}`. Without `fields=`, records leave out their args, result and error. The
    /// body stops before `maxBytes`: a page cut short says `"truncated":true` and continues at `next_before` (a
    /// record too big on its own comes without its bodies, `"bodies_omitted":true`).
    static func page(_ records: [TaskRecord], limit: Int, bodies: TaskBodies, maxBytes: Int) -> [UInt8] {
        var items: [[UInt8]] = []
        var size = 64
        var truncated = false
        for r in records {
            var one = JSONWriter(capacity: 512)
            one.task(r, bodies: bodies)
            if size + one.bytes.count + 1 > maxBytes {
                if items.isEmpty {
                    // Alone over the limit: without its bodies, so the walk goes on.
                    var bare = JSONWriter(capacity: 512)
                    bare.task(r, bodies: [])
                    var marked = bare.bytes
                    if !bodies.isEmpty {
                        marked.removeLast()
                        marked.append(contentsOf: Array(#","bodies_omitted":true}"#.utf8))
                    }
                    items.append(marked)
                    size += marked.count + 1
                }
                truncated = true
                break
            }
            items.append(one.bytes)
            size += one.bytes.count + 1
        }
        let included = records.prefix(items.count)
        var w = JSONWriter(capacity: size + 64)
        w.beginObject()
        w.key("tasks")
        w.beginArray()
        for item in items { w.raw(item) }
        w.endArray()
        w.key("next_before")
        w.stringOrNull(truncated || records.count == limit ? included.last?.id : nil)
        if truncated { w.key("truncated"); w.bool(true) }
        w.endObject()
        return w.bytes
    }

    /// `2026-12-01T10:00:00Z`, with or without milliseconds, or epoch milliseconds.
    static func parseTime(_ text: String) -> Timestamp? {
        if let millis = Int64(text), millis >= 0 { return Timestamp(millis: millis) }
        if let t = Timestamp(iso8601: text) { return t }
        // Without milliseconds: insert them.
        if text.hasSuffix("Z"), text.count == 20 { return Timestamp(iso8601: String(text.dropLast()) + ".000Z") }
        return nil
    }

    // MARK: Cancel and retry

    /// `DELETE /tasks/<id>`: a queued task becomes `cancelled` and never runs; a running task is interrupted by its
    /// worker (202, `cancelling`) — an async or gpu one through the cancel broadcast its NATS worker hears, a sync one
    /// through the same broadcast, heard by the HTTP worker running it, whose caller then gets 409 `cancelled`; a
    /// finished task answers 409.
    func cancelTask(_ rawID: String) async -> Response {
        let record: TaskRecord
        switch await components.existingTask(rawID) {
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
            return .taskError(.taskFinished, taskID: id, status: record.status, message: "task \(id) is already \(record.status.rawValue)")
        }
        let queue = components.queue
        if record.mode == .sync {
            // The call is on an HTTP worker that one of the replicas forwarded it to; every worker hears the broadcast
            // and the one running it interrupts it (a call that has not started yet does not run).
            guard let queue else {
                return .taskError(
                    .notCancellable, taskID: id, status: record.status,
                    message: "cancelling a running sync task needs NATS (--nats): its worker hears the cancel there")
            }
            do {
                try await queue.broadcastCancel(taskID: id)
            } catch {
                return .error(.queueUnavailable, "cannot reach the workers: \(error)", headers: [.retryAfter: "2"])
            }
            return answer(.accepted, "cancelling")
        }
        switch record.status {
        case .pending, .queued:
            components.taskLog?.record(
                TaskEvent(
                    taskID: id, kind: .cancelled, function: record.function, pool: record.pool,
                    mode: record.mode, attempt: record.attempts,
                    error: JSONWriter.taskErrorText(.cancelled, message: "cancelled while queued")))
            await components.taskLog?.flush()
            // Best effort: a worker about to run it also checks the task log, or (--task-log nats) NEUTRINO_SETTLED.
            try? await queue?.recordCancel(pool: record.pool, taskID: id)
            try? await queue?.broadcastCancel(taskID: id)
            return answer(.ok, TaskStatus.cancelled.rawValue)
        default:
            guard let queue else { return .error(.queueUnavailable, "not connected to NATS") }
            do {
                try await queue.broadcastCancel(taskID: id)
            } catch {
                return .error(.queueUnavailable, "cannot reach the workers: \(error)", headers: [.retryAfter: "2"])
            }
            return answer(.accepted, "cancelling")
        }
    }

    /// `POST /tasks/<id>/retry`: runs a failed, timed-out or cancelled task again as a new task with the same
    /// function and arguments; answers as the submit would (202 or the sync result), naming the original.
    func retryTask(_ rawID: String) async -> Response {
        let record: TaskRecord
        switch await components.existingTask(rawID) {
        case .found(let r): record = r
        case .answer(let response): return response
        }
        let id = record.id
        guard [.failed, .timedOut, .cancelled].contains(record.status) else {
            return .taskError(
                .notRetryable, taskID: id, status: record.status,
                message: "task \(id) is \(record.status.rawValue); only failed, timed_out or cancelled tasks can be retried")
        }
        let manifest = components.manifest
        guard let task = manifest.tasks[record.function] else {
            return .error(.notRetryable, "the manifest no longer has a task named '\(record.function)'")
        }
        let args: JSONValue
        do { args = try JSONParser.parse(Array((record.args ?? "{}").utf8)) } catch {
            return .error(.notRetryable, "the stored arguments of \(id) are not valid JSON")
        }
        let conformance = manifest.conform(args: args, for: task)
        if let issue = conformance.issues.items.first {
            return .error(.notRetryable, "the stored arguments no longer match the schema of '\(record.function)': \(issue)")
        }
        var response = await submitter.submit(spec: task.spec, args: conformance.value, retryOf: id)
        response.headers[Self.retryOf] = id
        return response
    }

    // MARK: Live feed

    /// `GET /events`: Server-Sent Events, one per committed lifecycle event (see EventFeed). 503 with Retry-After
    /// when `--max-sse-subscribers` streams are open.
    func eventStream(_ request: Request) async -> Response {
        guard let feed = components.feed else { return .noTaskLog }
        let header = request.headers[Self.lastEventID]
        let query = request.uri.queryParameters.get("last_event_id")
        var lastID: Int64?
        if let text = header ?? query, !text.isEmpty {
            guard let id = Int64(text), id >= 0 else {
                return .error(.badRequest, "Last-Event-ID must be a non-negative integer (an event id)")
            }
            lastID = id
        }
        let subscription: EventFeed.Subscription
        do { subscription = try await feed.subscribe(lastEventID: lastID) } catch {
            switch error {
            case .full(let limit):
                HTTPRejections.count("sse_subscribers")
                return .error(
                    .overloaded, "\(limit) live-feed streams are open (--max-sse-subscribers); retry later",
                    headers: [.retryAfter: "5"])
            case .unavailable(let reason):
                return .error(.taskLogUnavailable, reason, headers: [.retryAfter: "1"])
            }
        }
        return Response(
            status: .ok,
            headers: [.contentType: "text/event-stream", .cacheControl: "no-cache", Self.accelBuffering: "no"],
            body: ResponseBody { writer in
                for await chunk in subscription.cancelOnGracefulShutdown() {
                    try await writer.write(ByteBuffer(bytes: chunk))
                }
                try await writer.finish(nil)
            })
    }
}
