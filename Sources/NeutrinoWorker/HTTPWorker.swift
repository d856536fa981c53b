import FoundationEssentials
import Hummingbird
import Logging
import NeutrinoCore
import NeutrinoHTTP
import NeutrinoNATS
import NeutrinoObservability
import NeutrinoPython
import NeutrinoTracing
import ServiceLifecycle
import Synchronization
import Tracing

/// `neutrino-worker --mode http`: serves `POST /api/<task>` for the sync tasks of its pool on top of a
/// `PythonExecutor`, and records `running` and the outcome of every call in the task log.
struct HTTPWorker: Sendable {
    let configuration: WorkerConfiguration
    let specs: [String: TaskSpec]
    let executor: PythonExecutor
    let taskLog: ObservedSink
    /// Calls forwarded by a gateway that records their lifecycle itself.
    let callerRecorded: CallerRecordedCalls
    let heartbeats: HeartbeatPublisher?
    let connection: NATSConnection?
    let recycler: Recycler
    let logger: Logger
    /// Sync tasks a cancel was heard for (`DELETE /tasks/<id>` on any gateway replica), so a call that arrives after
    /// its cancel does not run.
    private let cancelled = CancelledTasks()
    /// Calls started and not yet answered: shutdown waits for them (the "sync calls" step of `services()`), whether or
    /// not their caller is still connected, so each outcome reaches the task log before it closes.
    private let running = RunningCalls()
    /// The gateways' sync calls without HTTP (nil with `--call-lane-port -1`, or when it cannot listen).
    let lane: CallLane?
    /// `X-Neutrino-Max-Calls` on every answer to a sync call: how many calls a gateway keeps in flight here; and
    /// `X-Neutrino-Max-Thread-Calls`, how many of them may take Python threads, where that is fewer (coroutine slots).
    private let maxCallsText: String
    private let maxThreadCallsText: String?

    init(
        configuration: WorkerConfiguration, runtime: PythonRuntime, taskLog: ObservedSink, connection: NATSConnection?,
        recycler: Recycler, callerRecorded: CallerRecordedCalls, logger: Logger
    ) {
        self.callerRecorded = callerRecorded
        self.recycler = recycler
        self.configuration = configuration
        // Only this pool's sync tasks are served here; a task of another pool is a routing mistake (404).
        self.specs = Dictionary(
            uniqueKeysWithValues: runtime.tasks
                .filter { $0.pool == configuration.pool && $0.mode == .sync }
                .map { ($0.name, $0) })
        let coroutines = runtime.tasks.contains { $0.pool == configuration.pool && runtime.coroutineTasks.contains($0.name) }
        // The mounted ASGI app runs on the same event loop as the async def tasks, in the same coroutine slots.
        let servesASGI = runtime.asgiPool == configuration.pool
        self.executor = PythonExecutor(
            runtime: runtime, threads: configuration.concurrency, maxQueued: configuration.maxQueued,
            maxCoroutines: coroutines || servesASGI ? configuration.maxCoroutines : 0, serveASGI: servesASGI,
            hardLimit: HardTimeoutPolicy(
                grace: configuration.hardTimeoutGrace,
                maxLeakedThreads: configuration.maxLeakedThreads),
            alarm: { [recycler] in recycler.executorAlarm($0) })
        self.maxCallsText = String(executor.callsAtOnce)
        self.maxThreadCallsText = executor.maxCoroutines > 0 ? String(executor.threadCallsAtOnce) : nil
        self.taskLog = taskLog
        self.connection = connection
        self.logger = logger
        if let lanePort = configuration.callLanePort {
            do {
                lane = try CallLane(host: configuration.host, port: lanePort, maxBodyBytes: configuration.maxBodyBytes, logger: logger)
            } catch {
                logger.warning("no call lane; the gateways call this worker over HTTP", metadata: ["error": "\(error)"])
                lane = nil
            }
        } else {
            lane = nil
        }
        let executor = self.executor
        heartbeats = connection.map {
            HeartbeatPublisher(
                connection: $0, configuration: configuration, gpu: false, threads: executor.threadCount,
                coroutines: executor.maxCoroutines, busy: { executor.busyByKind }, logger: logger)
        }
    }

    /// The worker's services, in start order (stopped in reverse): the task log, the Python threads, the cancel
    /// listener (with NATS), the HTTP server, the stop delay and the heartbeats (with NATS). On SIGTERM the last heartbeat says
    /// `stopping` (the gateways stop routing here at once), `--stop-delay` passes while calls are still taken, then
    /// the server drains the calls in flight, then the threads and the task log close.
    func services() -> [any Service] {
        let router = Router(context: WorkerRequestContext.self)
        // Whether each connection's client is still there: for sync calls (`CallHandler`) and the ASGI app's requests.
        let presences = ConnectionPresences()
        if executor.servesASGI {
            router.add(
                middleware: ASGIMiddleware(
                    executor: executor, maxBodyBytes: configuration.maxBodyBytes, headTimeout: configuration.asgiHeadTimeout,
                    presences: presences, logger: logger))
        }
        router.addWorkerMetrics(executor: executor, configuration: configuration)
        router.get("/healthz") { _, _ in self.health() }
        router.get("/readyz") { _, _ in self.health() }
        router.post("/api/:task") { request, context in
            await self.call(request, task: context.parameters.get("task") ?? "")
        }
        let heartbeats = self.heartbeats
        let host = configuration.advertiseHost ?? configuration.host
        var limits = ServerLimits()
        let calls = CallHandler.Calls(
            claim: { [specs] head in CallHandler.apiTaskName(head).flatMap { specs[$0] == nil ? nil : $0 } },
            maxBodyBytes: configuration.maxBodyBytes,
            serverName: Self.serverName, route: Self.callRoute, presences: presences,
            start: { [self] task, head, body, _, caller, answer in
                startCall(task: task, headers: head.headerFields, body: body, caller: caller, answer: answer)
            })
        limits.requestHandlers = { CallHandler.handlers(calls) }
        let app = makeApplication(
            router: router, host: configuration.host, port: configuration.port,
            serverName: Self.serverName, limits: limits, logger: logger,
            onListening: { port in heartbeats?.listening(host: host, port: port) })
        if specs.isEmpty && !executor.servesASGI {
            logger.warning("the app has no sync task in this pool", metadata: ["pool": "\(configuration.pool)"])
        }
        logger.info(
            "worker starting",
            metadata: [
                "worker_id": "\(configuration.workerID)", "pool": "\(configuration.pool)", "mode": "http",
                "concurrency": "\(configuration.concurrency)", "max_coroutines": "\(executor.maxCoroutines)",
                "tasks": "\(specs.keys.sorted().joined(separator: ","))", "asgi": "\(executor.servesASGI)",
            ])
        let executor = self.executor
        let taskLog = self.taskLog
        var services: [any Service] = [
            LifecycleService("task log", stop: { await taskLog.close() }),
            LifecycleService("python threads", stop: { executor.shutdown() }),
            RunningRecorder(calls: callerRecorded, taskLog: taskLog),
        ]
        if executor.servesASGI {
            // Stopped after the server has drained its requests, before the Python threads: the app's shutdown hooks.
            let logger = self.logger
            services.append(
                LifecycleService(
                    "asgi lifespan",
                    stop: {
                        switch await executor.asgiShutdown(timeout: .seconds(30)) {
                        case .some((true, _)): logger.info("the ASGI app's lifespan shutdown is complete")
                        case .some((false, let message)): logger.error("the ASGI app's lifespan shutdown failed:\n\(message)")
                        case .none: logger.error("the ASGI app's lifespan shutdown did not end within 30 s")
                        }
                    }))
        }
        if let connection {
            // Sync cancel: the same broadcast as for queued tasks; the call's caller is answered 409 `cancelled`.
            // Before the server in the list, so it still hears cancels while the server drains.
            services.append(CancelListener(connection: connection, logger: logger) { [self] id in self.noteCancel(id) })
        }
        // Stopped right after the server, before the cancel listener and the Python threads: a call whose client has
        // gone (nothing holds the server's drain open for it) still finishes and is recorded.
        let running = self.running
        let longest = Duration.milliseconds(specs.values.map(\.timeoutMs).max() ?? 0) + configuration.hardTimeoutGrace
        let drainLogger = logger
        services.append(
            LifecycleService(
                "sync calls",
                stop: {
                    let left = await running.drain(within: longest + .seconds(1))
                    if left > 0 { drainLogger.error("sync calls still running at shutdown", metadata: ["calls": "\(left)"]) }
                }))
        services.append(app)
        if let lane {
            // Opened once the server listens, stopped just before it (its calls drain with the server's).
            services.append(
                LifecycleService(
                    "call lane",
                    start: { [self] in
                        lane.open { task, headers, body, answer in self.startCall(task: task, headers: headers, body: body, answer: answer) }
                    },
                    stop: { lane.stop() }))
        }
        if executor.servesASGI {
            // Stopped before the server: the app's requests in flight get --drain-grace to end, then the rest (endless
            // streams) are cut short, so the server's drain ends and the lifespan shutdown can run.
            let grace = configuration.drainGrace
            let logger = self.logger
            services.append(
                LifecycleService(
                    "asgi drain",
                    stop: {
                        let cut = await executor.asgiDrain(grace: grace)
                        if cut > 0 {
                            logger.warning("requests to the ASGI app cut short at shutdown", metadata: ["requests": "\(cut)", "grace": "\(grace)"])
                        }
                    }))
        }
        if let heartbeats {
            // Stopped right after the heartbeats (which send `stopping`): the gateways stop routing here before the
            // server stops taking requests; a call that still arrives meanwhile runs.
            let delay = configuration.stopDelay
            services.append(LifecycleService("stop delay", stop: { try? await Task.sleep(for: delay) }))
            services.append(heartbeats)
        }
        return services
    }

    /// Runs the mounted ASGI app's lifespan startup on the event loop (before the server listens, so a worker that
    /// announces itself is ready); throws with the app's traceback when it fails.
    func startASGI() async throws {
        guard executor.servesASGI else { return }
        let (ok, message) = await executor.asgiStartup()
        guard ok else {
            throw WorkerError(message: "the mounted ASGI app's lifespan startup failed:\n\(message)")
        }
        logger.info("the ASGI app's lifespan startup is complete", metadata: ["pool": "\(configuration.pool)"])
    }

    private func noteCancel(_ id: String) {
        cancelled.insert(id)
        if executor.cancel(tag: id) {
            logger.info("cancelling running sync task", metadata: ["task_id": "\(id)"])
        }
    }

    private func health() -> Response {
        // Liveness: a wedged interpreter fails it, so a kubelet (or any prober) restarts the worker.
        if let wedged = executor.wedged { return .error(.notReady, "the interpreter is wedged: \(wedged)") }
        let load = executor.load
        var w = JSONWriter()
        w.beginObject()
        w.key("status"); w.string("ok")
        w.key("worker_id"); w.string(configuration.workerID)
        w.key("pool"); w.string(configuration.pool)
        w.key("mode"); w.string("http")
        w.key("concurrency"); w.int(executor.threadCount)
        w.key("max_coroutines"); w.int(executor.maxCoroutines)
        w.key("busy"); w.int(load.busy)
        w.key("queued"); w.int(load.queued)
        w.key("stuck"); w.int(load.stuck)
        w.key("tasks"); w.beginArray(); for name in specs.keys.sorted() { w.string(name) }; w.endArray()
        w.key("call_lane")
        if let lane {
            w.beginObject()
            w.key("port"); w.int(lane.port)
            w.key("connections"); w.int(lane.openConnections)
            w.endObject()
        } else {
            w.null()
        }
        w.endObject()
        return .json(.ok, w.bytes)
    }

    static let serverName = "neutrino-worker"
    /// The route its sync calls are counted under in `neutrino_http_requests_total`, over HTTP and the call lane.
    static let callRoute = "/api/{task}"

    /// Whether `POST /api/<name>` runs here: its task, or the answer that refuses it before its body is read (no such
    /// task here, the worker is recycling).
    func admit(task name: String) -> Admission {
        guard let spec = specs[name] else {
            return .refuse(.error(.unknownTask, "no sync task '\(name)' in pool '\(configuration.pool)' of this worker"))
        }
        if recycler.isRecycling {
            // Nothing runs here any more: the gateway sends the call to another worker.
            return .refuse(.error(.workerUnavailable, "this worker is recycling", headers: [.retryAfter: "1"]))
        }
        return .run(spec)
    }

    enum Admission {
        case run(TaskSpec)
        case refuse(CallAnswer)
    }

    /// `POST /api/<task>` through the router: for the calls `CallHandler` leaves to it (a pipelined request, a
    /// request that expects `100-continue`).
    private func call(_ request: Request, task name: String) async -> Response {
        if case .refuse(let refusal) = admit(task: name) { return refusal.response }
        let body: [UInt8]
        do { body = try await request.collectBody(limit: configuration.maxBodyBytes) } catch { return error.response }
        let answer = await withCheckedContinuation { continuation in
            startCall(task: name, headers: request.headers, body: body) { continuation.resume(returning: $0) }
        }
        return answer.response
    }

    /// Runs a sync call whose body has been read, without a Swift task: `answer` is called once, on the thread that
    /// ended the call (a Python thread, the watchdog, or this one when it is refused at once). With `caller`, a call
    /// still queued for a Python thread when its client closes the connection is not run.
    func startCall(
        task name: String, headers: HTTPFields, body: [UInt8], caller: CallerPresence? = nil,
        answer: @escaping @Sendable (CallAnswer) -> Void
    ) {
        let spec: TaskSpec
        switch admit(task: name) {
        case .refuse(let refusal): return answer(refusal)
        case .run(let admitted): spec = admitted
        }
        let taskID = headers[NeutrinoHeader.taskID].flatMap { TaskID.isValid($0) ? $0 : nil } ?? TaskID.make()
        let attempt = headers[NeutrinoHeader.attempt].flatMap(Int.init).map { max(1, $0) } ?? 1
        // The caller's trace context: with tracing on, the execution span continues it (a new trace without one);
        // off, it is still handed to Python and stored, unchanged.
        let incoming = headers[NeutrinoHeader.traceParent].flatMap(TraceParent.init)
        let span = NeutrinoTracing.startTaskSpan(
            NeutrinoTracing.Name.execute, continuing: incoming, kind: .server, taskID: taskID, task: name, pool: spec.pool,
            attempt: attempt)
        let traceParent = span?.traceParent ?? incoming
        let payload: [UInt8]
        do {
            payload = try TaskPayload.make(body: body, taskID: taskID, attempt: attempt, pool: spec.pool, traceParent: traceParent?.value)
        } catch {
            span?.fail("the body is not a JSON object")
            span?.end()
            return answer(.error(.malformedJSON, "the body must be a JSON object {\"args\": {...}}"))
        }
        // The gateway says it records this call's lifecycle, for answers up to this many bytes (it cannot relay a
        // larger one, so the worker records that outcome itself).
        let call = SyncCall(
            spec: spec, taskID: taskID, attempt: attempt, span: span, traceID: traceParent?.traceID,
            callerRelays: headers[NeutrinoHeader.callerRecords].flatMap(Int.init).map { max(0, $0) })
        if cancelled.contains(taskID) {
            return answer(finish(call, outcome: .cancelled(durationMs: 0)).answer)
        }
        let workerID = configuration.workerID
        let taskLog = self.taskLog
        let callerRecorded = self.callerRecorded
        let running = self.running
        let recycler = self.recycler
        running.begin()
        executor.submit(
            task: spec.name, tag: taskID, payload: payload, timeoutMs: spec.timeoutMs,
            callerWaitsMs: headers[NeutrinoHeader.callerWaitsMs].flatMap(Int.init), caller: caller,
            onStart: {
                recycler.taskStarted()
                // `running` is recorded the moment the Python thread starts the call.
                let now = Timestamp.now()
                call.started.set(now)
                var running = TaskEvent(
                    taskID: taskID, kind: .running, at: now, function: spec.name, pool: spec.pool,
                    mode: spec.mode, workerID: workerID, attempt: attempt)
                running.traceID = call.traceID
                // Noted, not written, when the gateway records the call (see `CallerRecordedCalls`).
                if call.callerRelays != nil { callerRecorded.begin(running) } else { taskLog.record(running) }
            }, onOutput: call.printed.set,
            completion: { outcome in
                let finished = self.finish(call, outcome: outcome)
                guard finished.awaitsTaskLog else {
                    answer(finished.answer)
                    running.end()
                    return
                }
                // The gateway records the outcome it relays the moment it has the answer, and a reader who polls
                // for the terminal record stops there: what only this worker recorded (what the task printed, when
                // it did not fit behind the answer) must be committed first, or that reader gets the record without.
                Task {
                    await taskLog.flush()
                    answer(finished.answer)
                    running.end()
                }
            })
    }

    /// Records how `call` ended (or leaves it to the gateway) and makes its answer; `awaitsTaskLog` when the worker
    /// recorded something the gateway's own copy of the outcome lacks, so the answer waits for that write to commit.
    private func finish(_ call: SyncCall, outcome: PythonOutcome) -> (answer: CallAnswer, awaitsTaskLog: Bool) {
        let spec = call.spec
        let taskID = call.taskID
        let workerID = configuration.workerID
        let madeVisible = call.callerRelays != nil && callerRecorded.end(taskID)
        let reply = TaskReply(taskID: taskID, spec: spec, workerID: workerID, attempt: call.attempt, outcome: outcome)
        if case .rejected(let reason) = outcome {
            // Nothing ran: the caller may send it elsewhere; nothing is logged here.
            if reason == PythonExecutor.callerGone {
                logger.warning(
                    "a queued call was not run: its caller had stopped waiting (the worker is behind)",
                    metadata: ["task_id": "\(taskID)", "task": "\(spec.name)"])
            } else if reason == PythonExecutor.callerLeft {
                logger.info(
                    "a queued call was not run: its caller closed the connection first",
                    metadata: ["task_id": "\(taskID)", "task": "\(spec.name)"])
            }
            call.span?.fail(reason)
            call.span?.end()
            return (.error(.workerUnavailable, reason, headers: [.retryAfter: "1"]), false)
        }
        if let span = call.span {
            span.updateAttributes { $0["neutrino.status"] = reply.status.rawValue }
            if reply.status != .completed { span.fail("the task ended \(reply.status.rawValue)") }
            span.end()
        }
        let printed = call.printed.bytes
        var outcomeEvent = Self.outcomeEvent(taskID: taskID, spec: spec, workerID: workerID, attempt: call.attempt, reply: reply)
        outcomeEvent.output = printed.map { String(decoding: $0, as: UTF8.self) }
        outcomeEvent.traceID = call.traceID
        // One writer per call: the gateway records the outcome it relays, with what the task printed, which rides
        // behind the answer's body (`X-Neutrino-Output-Offset`). The worker records the outcome too when the task log
        // already shows the call (running past `runningVisibleAfter`, progress), or when the answer, or the answer
        // and what was printed, are too large for the gateway to take.
        var body = reply.body
        var outputOffset: Int?
        let relayed = call.callerRelays.map { reply.body.count <= $0 } ?? false
        if let printed, let limit = call.callerRelays, printed.count <= limit - body.count {
            outputOffset = body.count
            body.append(contentsOf: printed)
        }
        let gatewayHasAll = relayed && (printed == nil || outputOffset != nil)
        if gatewayHasAll, !madeVisible {
            taskLog.observeOnly(outcomeEvent)
        } else {
            taskLog.record(outcomeEvent)
        }
        if reply.status == .timedOut {
            logger.warning("task timed out", metadata: ["task_id": "\(taskID)", "task": "\(spec.name)", "timeout_ms": "\(spec.timeoutMs)"])
        }
        let status: HTTPResponse.Status =
            if case .abandoned = outcome { .badGateway } else {
                switch reply.status {
                case .completed: .ok
                case .timedOut: .gatewayTimeout
                // Interrupted by `DELETE /tasks/<id>`: the request conflicted with a cancel (docs/architecture.md).
                case .cancelled: .conflict
                default: .internalServerError
                }
            }
        var headers: HTTPFields = [
            NeutrinoHeader.status: reply.status.rawValue,
            NeutrinoHeader.worker: workerID,
            NeutrinoHeader.durationMs: JSONWriter.format(reply.durationMs),
            NeutrinoHeader.startedAt: String(call.started.value?.millis ?? Timestamp.now().millis),
            NeutrinoHeader.outcomeOffset: String(reply.outcomeOffset),
            NeutrinoHeader.maxCalls: maxCallsText,
        ]
        if let lane { headers[NeutrinoHeader.lane] = lane.portText }
        if let maxThreadCallsText { headers[NeutrinoHeader.maxThreadCalls] = maxThreadCallsText }
        if let outputOffset { headers[NeutrinoHeader.outputOffset] = String(outputOffset) }
        return (CallAnswer(status: status, headers: headers, body: body), relayed && !gatewayHasAll)
    }

    static func outcomeEvent(taskID: String, spec: TaskSpec, workerID: String, attempt: Int, reply: TaskReply) -> TaskEvent {
        let kind: TaskEventKind =
            switch reply.status {
            case .completed: .completed
            case .timedOut: .timedOut
            case .cancelled: .cancelled
            default: .failed
            }
        return TaskEvent(
            taskID: taskID, kind: kind, function: spec.name, pool: spec.pool, mode: spec.mode, workerID: workerID,
            attempt: attempt, result: reply.status == .completed ? reply.outcome : nil,
            error: reply.status == .completed ? nil : reply.outcome, durationMs: reply.durationMs)
    }
}

extension Router {
    /// The request counter for every route added after this call, and `/metrics` of a worker (either mode) with its
    /// busy and total Python threads (and coroutine slots), and what waits for them, read at each scrape.
    func addWorkerMetrics(executor: PythonExecutor, configuration: WorkerConfiguration) {
        add(middleware: RequestMetricsMiddleware())
        let labels = [("pool", configuration.pool), ("worker", configuration.workerID)]
        addMetricsRoute {
            let load = executor.load
            NeutrinoMetrics.gauge(NeutrinoMetrics.workerInFlight, labels, Double(load.busy))
            NeutrinoMetrics.gauge(NeutrinoMetrics.workerQueued, labels, Double(load.queued))
            NeutrinoMetrics.gauge(NeutrinoMetrics.workerSlots, labels, Double(executor.slots))
        }
    }
}

/// How many sync calls are running, and a bounded wait for none.
final class RunningCalls: Sendable {
    private let count = Mutex(0)

    func begin() { count.withLock { $0 += 1 } }
    func end() { count.withLock { $0 -= 1 } }

    /// Waits until no call runs, or `limit` has passed; returns how many still run.
    func drain(within limit: Duration) async -> Int {
        _ = await waitUntil(within: limit) { self.count.withLock { $0 } == 0 }
        return count.withLock { $0 }
    }
}

/// One sync call between `startCall` and `finish`: what the answer and the task log need of it.
struct SyncCall: Sendable {
    let spec: TaskSpec
    let taskID: String
    let attempt: Int
    let span: (any Span)?
    let traceID: String?
    /// The answer size up to which the caller (the gateway) records the call itself; nil when it does not.
    let callerRelays: Int?
    let started = StartTime()
    let printed = CapturedOutput()
}

/// What a call printed (set on its Python thread, read after the call returns).
final class CapturedOutput: Sendable {
    private let stored = Mutex<[UInt8]?>(nil)
    @Sendable func set(_ bytes: [UInt8]) { stored.withLock { $0 = bytes } }
    var bytes: [UInt8]? { stored.withLock { $0 } }
    var text: String? { bytes.map { String(decoding: $0, as: UTF8.self) } }
}

/// When the Python thread started a call (set on that thread, read after the call returns).
final class StartTime: Sendable {
    private let stored = Mutex<Timestamp?>(nil)
    func set(_ t: Timestamp) { stored.withLock { $0 = t } }
    var value: Timestamp? { stored.withLock { $0 } }
}
