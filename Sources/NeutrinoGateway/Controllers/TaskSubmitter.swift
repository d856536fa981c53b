import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import NeutrinoCore
import NeutrinoHTTP
import NeutrinoObservability
import NeutrinoTaskLog
import NeutrinoTracing
import Synchronization
import Tracing

/// Runs a validated task: a sync task on its pool's fast workers (the answer carries the result), a queued one
/// published to JetStream (the answer is 202). Used by `POST /api/<task>` and by `POST /tasks/<id>/retry`.
struct TaskSubmitter: Sendable {
    let components: GatewayComponents
    /// Idempotency keys this gateway claimed and is publishing the task of.
    let publishing = PublishingKeys()

    static let idempotencyKey = HTTPField.Name("Idempotency-Key")!
    /// How long an Idempotency-Key keeps naming its task: JetStream's duplicate window.
    static let idempotencyWindow = Duration.seconds(120)

    /// Counts the submit, then runs the task by its mode. With tracing on, the task joins the trace of the request
    /// span (`TracingMiddleware`): its id is stored with the task, its spans are children of that span.
    /// `caller`: the client's connection, for a sync call (a call still waiting for a worker with
    /// room when it closes is not run).
    func submit(
        spec: TaskSpec, args: JSONValue, idempotencyKey: String? = nil, retryOf: String? = nil, caller: CallerPresence? = nil
    ) async -> Response {
        NeutrinoMetrics.submitted(task: spec.name, mode: spec.mode.rawValue, pool: spec.pool)
        let trace = TaskTrace.current()
        guard spec.mode == .sync else {
            return await enqueue(spec: spec, args: args, idempotencyKey: idempotencyKey, retryOf: retryOf, trace: trace)
        }
        return await callSync(spec: spec, args: args, retryOf: retryOf, trace: trace, caller: caller)
    }

    // MARK: Queued (async and gpu)

    /// Async and gpu tasks: recorded `queued` (committed alongside the publish), published with
    /// `Nats-Msg-Id = task_id`, and answered 202 only after both. A failed publish leaves the task `failed` (never
    /// `queued` forever) and answers 503 with Retry-After; a message larger than the NATS server's `max_payload`
    /// answers 413 before anything is recorded (no retry could succeed).
    ///
    /// An `Idempotency-Key` works like Stripe's: the first request claims it with a fingerprint of what it asked
    /// for (task and conformed arguments); a repeat within the window with the same fingerprint is answered with the
    /// task the first created (`Idempotent-Replayed: true`), one with another fingerprint is refused 422
    /// `IdempotencyKeyReused`; a claim whose publish failed is released, so the retry the 503 invites runs the task.
    private func enqueue(
        spec: TaskSpec, args: JSONValue, idempotencyKey: String?, retryOf: String?, trace: TaskTrace?
    ) async -> Response {
        guard let queue = components.queue else {
            return .error(
                .notSupported,
                "'\(spec.name)' is an \(spec.mode.rawValue) task: start the gateway with --nats URL to run queued tasks")
        }
        let body = Self.forwardBody(args)
        if let refusal = queue.refusal(bodyBytes: body.count), case .tooLarge(_, let limit) = refusal {
            HTTPRejections.count("queue_payload")
            return .error(.payloadTooLarge, "\(refusal)") { w in
                w.key("limit"); w.int(limit)
            }
        }
        let taskID = TaskID.make()
        var claimedKey: String?
        if let key = idempotencyKey {
            guard !key.isEmpty, key.utf8.count <= 255, key.utf8.allSatisfy({ $0 >= 0x20 && $0 < 0x7F }) else {
                return .error(.badRequest, "Idempotency-Key must be 1 to 255 printable ASCII characters")
            }
            guard let reader = components.reader else { return .noTaskLog }
            let fullKey = "\(spec.name):\(key)"
            let fingerprint = Self.fingerprint(spec: spec, args: args)
            // A repeat that arrives while the first request is still publishing waits for its outcome (a released
            // key is then claimed again), so it never answers with a task that ends up never queued.
            var rounds = 0
            while claimedKey == nil {
                rounds += 1
                let claim: IdempotencyClaim
                do {
                    claim = try await reader.claimIdempotencyKey(
                        fullKey, taskID: taskID, fingerprint: fingerprint,
                        window: Self.idempotencyWindow)
                } catch {
                    return .error(.taskLogUnavailable, "\(error)", headers: [.retryAfter: "1"])
                }
                switch claim {
                case .claimed:
                    claimedKey = fullKey
                    publishing.begin(fullKey)
                case .existing(let owner, let stored):
                    // A claim from before fingerprints were kept (nil) is taken on trust.
                    if let stored, stored != fingerprint {
                        return .error(
                            .idempotencyKeyReused,
                            "Idempotency-Key '\(key)' was used within the last \(Self.idempotencyWindow.components.seconds) s with other arguments; use a new key for a new request"
                        ) { w in
                            w.key("task_id"); w.string(owner)
                        }
                    }
                    if rounds < 3, await publishing.waitIfPublishing(fullKey) { continue }
                    return await replay(taskID: owner, spec: spec)
                }
            }
        }
        defer { if let claimedKey { publishing.end(claimedKey) } }
        return await publishQueued(
            spec: spec, args: args, body: body, taskID: taskID, queue: queue, retryOf: retryOf,
            claimedKey: claimedKey, trace: trace)
    }

    /// What an Idempotency-Key remembers of the request that claimed it: the task and its conformed arguments.
    static func fingerprint(spec: TaskSpec, args: JSONValue) -> String {
        var bytes = Array(spec.name.utf8)
        bytes.append(0x0A)
        bytes.append(contentsOf: args.jsonText.utf8)
        return SHA256.hex(bytes)
    }

    /// The answer for a repeated Idempotency-Key: the task the first request created, as it stands now.
    private func replay(taskID: String, spec: TaskSpec) async -> Response {
        await components.taskLog?.flush()
        let status = (try? await components.reader?.status(id: taskID)) ?? nil ?? .queued
        return queuedAnswer(taskID: taskID, spec: spec, status: status, extra: ["Idempotent-Replayed": "true"])
    }

    private func queuedAnswer(
        taskID: String, spec: TaskSpec, status: TaskStatus, extra: [String: String] = [:],
        retryOf: String? = nil
    ) -> Response {
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

    private func publishQueued(
        spec: TaskSpec, args: JSONValue, body: [UInt8], taskID: String, queue: GatewayQueue,
        retryOf: String?, claimedKey: String?, trace: TaskTrace?
    ) async -> Response {
        let taskHeader: HTTPFields = [NeutrinoHeader.taskID: taskID]
        let taskLog = components.taskLog
        var queued = TaskEvent(
            taskID: taskID, kind: .queued, function: spec.name, pool: spec.pool, mode: spec.mode,
            attempt: 0, args: args.jsonText, detail: retryOf.map { "retry of \($0)" })
        queued.traceID = trace?.traceID
        taskLog?.record(queued)
        // The commit of the queued row and the publish run side by side; the 202 waits for both, so an id that was
        // answered always exists. (A worker may record `running` before the `queued` row commits: events apply in
        // any order.)
        let writeSpan = taskLog == nil ? nil : trace?.startSpan(NeutrinoTracing.Name.taskLogWrite, taskID: taskID, task: spec.name, pool: spec.pool)
        async let committed: Void = {
            await taskLog?.flush()
            writeSpan?.end()
        }()
        // The message carries the enqueue span as its parent: the worker's spans join this trace.
        let enqueueSpan = trace?.startSpan(NeutrinoTracing.Name.enqueue, kind: .producer, taskID: taskID, task: spec.name, pool: spec.pool)
        enqueueSpan?.updateAttributes { a in
            a["messaging.system"] = "nats"
            a["messaging.destination.name"] = QueueLayout.taskSubject(pool: spec.pool, task: spec.name)
        }
        let headers = enqueueSpan?.traceParent.map { ["traceparent": $0.value] } ?? [:]
        do {
            try await queue.publish(spec: spec, taskID: taskID, body: body, headers: headers)
            enqueueSpan?.end()
            await committed
        } catch {
            enqueueSpan?.fail("\(error)")
            enqueueSpan?.end()
            await committed
            // The key named a task that was never queued: free it, so the retry the answer invites runs the task.
            if let claimedKey { _ = try? await components.reader?.releaseIdempotencyKey(claimedKey, taskID: taskID) }
            let apiError: APIError
            let message: String
            var headers = taskHeader
            if case .tooLarge = error {
                apiError = .payloadTooLarge
                message = "\(error)"
            } else {
                apiError = .queueUnavailable
                message = "the task queue is unavailable: \(error)"
                headers[.retryAfter] = "2"
            }
            var failed = TaskEvent(
                taskID: taskID, kind: .failed, function: spec.name, pool: spec.pool, mode: spec.mode,
                error: JSONWriter.taskErrorText(apiError, message: message))
            failed.traceID = trace?.traceID
            taskLog?.record(failed)
            var metadata: Logger.Metadata = ["task_id": "\(taskID)", "error": "\(error)"]
            if let trace { metadata["trace_id"] = "\(trace.traceID)" }
            components.logger.warning("publish failed", metadata: metadata)
            NeutrinoMetrics.finished(task: spec.name, mode: spec.mode.rawValue, pool: spec.pool, status: TaskStatus.failed.rawValue)
            return .taskError(apiError, taskID: taskID, status: .failed, message: message, headers: headers)
        }
        return queuedAnswer(taskID: taskID, spec: spec, status: .queued, retryOf: retryOf)
    }

    // MARK: Sync

    private func callSync(spec: TaskSpec, args: JSONValue, retryOf: String?, trace: TaskTrace?, caller: CallerPresence?) async -> Response {
        let taskID = TaskID.make()
        let taskLog = components.taskLog
        func event(
            _ kind: TaskEventKind, workerID: String? = nil, result: String? = nil, error: String? = nil,
            durationMs: Double? = nil
        ) -> TaskEvent {
            var e = TaskEvent(
                taskID: taskID, kind: kind, function: spec.name, pool: spec.pool, mode: spec.mode, workerID: workerID,
                attempt: kind == .pending ? 0 : 1, args: kind == .pending ? args.jsonText : nil, result: result,
                error: error, durationMs: durationMs, detail: kind == .pending ? retryOf.map { "retry of \($0)" } : nil)
            e.traceID = trace?.traceID
            return e
        }
        // `pending` is recorded together with the outcome, in one batch (one writer per call, one queued write): a
        // call that runs long is visible meanwhile from its worker's `running`, and one that is looked up here
        // while it runs from `SyncCallsInFlight`.
        let pending = event(.pending)
        components.syncCalls.begin(pending)
        defer { components.syncCalls.end(taskID) }
        let started = ContinuousClock.now
        func record(_ outcome: TaskEvent?, running: TaskEvent? = nil) {
            taskLog?.record(contentsOf: [pending] + (running.map { [$0] } ?? []) + (outcome.map { [$0] } ?? []))
            if let taskLog, let span = trace?.startSpan(NeutrinoTracing.Name.taskLogWrite, taskID: taskID, task: spec.name, pool: spec.pool) {
                // The answer does not wait for the commit (one writer per call, batched): the span does, off the
                // request's path. Only with tracing on.
                Task {
                    await taskLog.flush()
                    span.end()
                }
            }
            let elapsed = ContinuousClock.now - started
            if let final = outcome.flatMap({ TaskStatus(rawValue: $0.kind.rawValue) }) {
                NeutrinoMetrics.finished(task: spec.name, mode: spec.mode.rawValue, pool: spec.pool, status: final.rawValue)
            }
            NeutrinoMetrics.recordDuration(
                NeutrinoMetrics.taskDuration, task: spec.name, mode: spec.mode.rawValue, pool: spec.pool,
                milliseconds: elapsed.milliseconds)
        }
        func fail(_ error: APIError, _ kind: TaskEventKind, _ message: String, headers: HTTPFields = [:]) -> Response {
            record(event(kind, error: JSONWriter.taskErrorText(error, message: message)))
            let status: TaskStatus = kind == .timedOut ? .timedOut : kind == .cancelled ? .cancelled : .failed
            return .taskError(
                error, taskID: taskID, status: status, message: message,
                headers: [NeutrinoHeader.taskID: taskID] + headers)
        }
        guard let pool = components.pools[spec.pool] else {
            return fail(.noWorkerAvailable, .failed, "no worker is configured for pool '\(spec.pool)'", headers: [.retryAfter: "1"])
        }
        // The worker enforces the timeout and answers 504 itself; the grace covers queueing and transport.
        let timeout = TimeAmount.milliseconds(Int64(spec.timeoutMs + components.configuration.timeoutGraceMs))
        let answer: WorkerPool.Answer
        // The worker's execution span is a child of this one (`traceparent` on the forwarded request).
        let callSpan = trace?.startSpan(NeutrinoTracing.Name.call, kind: .client, taskID: taskID, task: spec.name, pool: spec.pool)
        do {
            answer = try await pool.call(
                task: spec.name, taskID: taskID, body: Self.forwardBody(args), timeout: timeout,
                reruns: spec.retries, traceParent: callSpan?.traceParent?.value, caller: caller,
                threadCall: spec.coroutine == false)
            if let callSpan {
                callSpan.updateAttributes { a in
                    a["http.response.status_code"] = answer.status
                    a["server.address"] = answer.endpoint
                }
                if answer.status >= 500 { callSpan.fail("the worker answered \(answer.status)") }
                callSpan.end()
            }
        } catch {
            callSpan?.fail("\(error)")
            callSpan?.end()
            switch error {
            case .timedOut:
                return fail(
                    .timeout, .timedOut,
                    "no answer from the worker within \(spec.timeoutMs) ms + \(components.configuration.timeoutGraceMs) ms grace")
            case .workerCrashed(let reason):
                // Not re-run elsewhere unless the task opted in (`retries` on a sync task): it may have had effects.
                return fail(.workerCrashed, .failed, reason)
            case .noWorkerAvailable(let reason):
                return fail(
                    .noWorkerAvailable, .failed, "no worker of pool '\(spec.pool)' is reachable (\(reason))",
                    headers: [.retryAfter: "1"])
            case .atCapacity(let reason):
                // Nothing ran: every worker was busy for as long as the call could wait.
                return fail(.overloaded, .failed, reason, headers: [.retryAfter: "1"])
            case .callerLeft(let reason):
                // Nothing ran, and nobody reads this answer: recorded as the caller's cancel.
                return fail(.cancelled, .cancelled, reason)
            case .answerTooLarge(let limit):
                // The task ran and its worker recorded the outcome; only the answer is too big to relay.
                record(nil)
                return .error(
                    .workerAnswerTooLarge,
                    "the worker's answer is larger than \(limit) bytes (--max-worker-answer-bytes); the outcome is at GET /tasks/\(taskID)",
                    headers: [NeutrinoHeader.taskID: taskID]
                ) { w in
                    w.key("task_id"); w.string(taskID)
                }
            }
        }
        // What the task printed rides behind the answer's own JSON (`X-Neutrino-Output-Offset`): recorded with the
        // outcome, not relayed.
        var body = answer.body
        var output: String?
        if let offsetText = answer.headers[NeutrinoHeader.outputOffset], let offset = Int(offsetText), offset >= 0, offset <= body.count {
            output = String(decoding: body[offset...], as: UTF8.self)
            body.removeSubrange(offset...)
        }
        // Record the outcome the caller is about to see, so GET /tasks/<id> right after this answer shows it.
        var outcome: TaskEvent?
        if let statusText = answer.headers[NeutrinoHeader.status], let status = TaskStatus(rawValue: statusText), status.isTerminal,
            let offsetText = answer.headers[NeutrinoHeader.outcomeOffset], let offset = Int(offsetText),
            offset >= 0, offset < body.count
        {
            let raw = String(decoding: body[offset..<(body.count - 1)], as: UTF8.self)
            let kind: TaskEventKind =
                switch status {
                case .completed: .completed
                case .timedOut: .timedOut
                case .cancelled: .cancelled  // DELETE /tasks/<id> interrupted it (the worker answers 409)
                default: .failed
                }
            outcome = event(
                kind, workerID: answer.headers[NeutrinoHeader.worker],
                result: kind == .completed ? raw : nil, error: kind == .completed ? nil : raw,
                durationMs: answer.headers[NeutrinoHeader.durationMs].flatMap(Double.init))
            outcome?.output = output
        }
        // The worker's own `running` may still sit in its writer's queue: record the start it reported too (the unique
        // (task, event, attempt) index keeps one), so the record read right after this answer is complete.
        var running: TaskEvent?
        if outcome != nil, let startedText = answer.headers[NeutrinoHeader.startedAt], let millis = Int64(startedText) {
            var e = event(.running, workerID: answer.headers[NeutrinoHeader.worker])
            e.at = Timestamp(millis: millis)
            running = e
        }
        record(outcome, running: running)
        return .json(HTTPResponse.Status(code: answer.status), body, headers: [NeutrinoHeader.taskID: taskID])
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
}

/// The Idempotency-Keys whose first request is publishing its task right now, so a repeat can wait for the outcome
/// (the publish ends within its own timeout).
final class PublishingKeys: Sendable {
    private let state = Mutex([String: [CheckedContinuation<Bool, Never>]]())

    func begin(_ key: String) {
        state.withLock { s in if s[key] == nil { s[key] = [] } }
    }

    func end(_ key: String) {
        let waiting = state.withLock { $0.removeValue(forKey: key) } ?? []
        for c in waiting { c.resume(returning: true) }
    }

    /// Waits until `key`'s publish has ended, if one is in progress here; true if it waited.
    func waitIfPublishing(_ key: String) async -> Bool {
        await withCheckedContinuation { (c: CheckedContinuation<Bool, Never>) in
            let parked = state.withLock { s -> Bool in
                guard s[key] != nil else { return false }
                s[key]?.append(c)
                return true
            }
            if !parked { c.resume(returning: false) }
        }
    }
}
