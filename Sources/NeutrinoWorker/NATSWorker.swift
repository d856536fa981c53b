import FoundationEssentials
import Hummingbird
import Logging
import NeutrinoCore
import NeutrinoHTTP
import NeutrinoNATS
import NeutrinoObservability
import NeutrinoPython
import NeutrinoTaskLog
import NeutrinoTracing
import ServiceLifecycle
import Synchronization
import Tracing

/// `neutrino-worker --mode nats`: pulls its pool's tasks from JetStream and runs them on the executor.
///
/// - Fetches only as many messages as it has free Python threads (no prefetch, so a slow task never holds others
///   back), and sends `InProgress` while a task runs so it is not redelivered however long it takes.
/// - Acknowledges only after the terminal event is committed to the task log.
/// - A failed attempt is retried with exponential backoff and jitter (`NakWithDelay`) up to the task's `retries`;
///   the last failure is copied to `neutrino.dlq.<pool>.<task>`, logged `failed`, and terminated.
/// - Timeouts end as `timed_out` (not retried); cancellation (broadcast on `neutrino.control.cancel`) skips a task
///   still queued and interrupts a running one.
/// - SIGTERM/SIGINT drain: stop fetching, let running tasks finish within the grace period, nak the rest at once.
final class NATSWorker: Sendable {
    let configuration: WorkerConfiguration
    let specs: [String: TaskSpec]
    let executor: PythonExecutor
    let taskLog: any TaskEventSink
    let reader: TaskLogReader?
    let connection: NATSConnection
    let logger: Logger
    private let inFlight = Mutex<[String: JetStreamMessage]>([:])
    /// Redeliveries waiting for this worker's attempt of the same task to end (`waitForLocalAttempt`).
    private let redeliveriesWaiting = Mutex<[ObjectIdentifier: JetStreamMessage]>([:])
    /// Tasks whose attempt here has ended in Python but whose outcome is not yet durable and acknowledged.
    private let finishing = Mutex<Set<String>>([])
    private let cancelled = Mutex(CancelledSet())
    private let draining = Atomic<Bool>(false)
    private let recycler: Recycler

    init(
        configuration: WorkerConfiguration, runtime: PythonRuntime, taskLog: any TaskEventSink, connection: NATSConnection,
        recycler: Recycler, logger: Logger
    ) throws {
        self.recycler = recycler
        self.configuration = configuration
        self.specs = Dictionary(
            uniqueKeysWithValues: runtime.tasks
                .filter { $0.pool == configuration.pool && $0.mode.isQueued }
                .map { ($0.name, $0) })
        // A pool with async def tasks takes up to --max-coroutines of them more at once; a thread task fetched while
        // the threads are busy waits in the executor's queue (bounded by the same figure).
        let coroutines =
            runtime.tasks.contains { $0.pool == configuration.pool && $0.mode.isQueued && runtime.coroutineTasks.contains($0.name) }
            ? configuration.maxCoroutines : 0
        self.executor = PythonExecutor(
            runtime: runtime, threads: configuration.concurrency, maxQueued: configuration.concurrency + coroutines,
            maxCoroutines: coroutines,
            hardLimit: HardTimeoutPolicy(
                grace: configuration.hardTimeoutGrace,
                maxLeakedThreads: configuration.maxLeakedThreads),
            alarm: { [recycler] in recycler.executorAlarm($0) })
        self.taskLog = taskLog
        if case .sqlite(let path) = configuration.taskLog { reader = try TaskLogReader(path: path, threads: 1) } else { reader = nil }
        self.connection = connection
        self.logger = logger
    }

    /// The worker's services, in start order (stopped in reverse): the task log, the Python threads, the health
    /// server, the cancel listener, the task consumer, the heartbeats. On SIGTERM the last heartbeat says
    /// `stopping`, the consumer drains (see `TaskConsumer`), then the rest close.
    func services() throws -> [any Service] {
        guard let url = configuration.natsURL else { throw WorkerError(message: "--mode nats needs --nats URL") }
        let pool = configuration.pool
        let gpu = GPUProbe.probe()
        logger.info(
            "worker starting",
            metadata: [
                "worker_id": "\(configuration.workerID)", "pool": "\(pool)", "mode": "nats", "nats": "\(NATSServers.redacted(url))",
                "concurrency": "\(configuration.concurrency)", "max_coroutines": "\(executor.maxCoroutines)",
                "tasks": "\(specs.keys.sorted().joined(separator: ","))",
                "gpu": "\(gpu.description)",
            ])
        if specs.isEmpty { logger.warning("the app has no async or gpu task in this pool", metadata: ["pool": "\(pool)"]) }
        let executor = self.executor
        let heartbeats = HeartbeatPublisher(
            connection: connection, configuration: configuration, gpu: gpu.visible, threads: executor.threadCount,
            coroutines: executor.maxCoroutines, busy: { executor.busyByKind }, logger: logger)
        let taskLog = self.taskLog
        let reader = self.reader
        return [
            LifecycleService(
                "task log",
                stop: {
                    await taskLog.close()
                    await reader?.shutdown()
                }),
            LifecycleService("python threads", stop: { executor.shutdown() }),
            healthServer(heartbeats: heartbeats),
            CancelListener(connection: connection, logger: logger) { [self] id in self.noteCancel(id) },
            // Before the consumer: services stop in reverse order, so it keeps the messages alive through a drain.
            InProgressTicker(interval: configuration.ackWait / 3) { [self] in self.messagesToKeepAlive() },
            TaskConsumer(worker: self, natsURL: url, js: try connection.jetStream()),
            heartbeats,
        ]
    }

    /// Whether the worker has begun to drain (readiness answers 503 from then on).
    var isDraining: Bool { draining.load(ordering: .relaxed) || recycler.isRecycling }

    /// Stops new work: no more fetches; the consumer then waits for the running tasks (see `TaskConsumer`).
    func beginDrain() {
        if !draining.exchange(true, ordering: .relaxed) {
            logger.notice("draining: no new tasks; finishing the running ones")
        }
    }

    /// Hands every task still running back to the queue (nak) and abandons its Python thread: the drain's grace ran
    /// out. Returns how many were handed back.
    func handBackRunning() -> Int {
        let leftover = inFlight.withLock { Array($0.values) }
        for message in leftover {
            try? message.nak()
            logger.notice("handed a running task back to the queue", metadata: ["subject": "\(message.subject)"])
        }
        if !leftover.isEmpty {
            executor.shutdown()
            executor.abandonRunning(reason: "the worker is shutting down")
        }
        return leftover.count
    }

    /// `/healthz`, `/readyz` (503 while draining or disconnected) and `/metrics` on `--host:--port`, for probes and
    /// scrapes.
    private func healthServer(heartbeats: HeartbeatPublisher) -> some Service {
        let router = Router()
        router.addWorkerMetrics(executor: executor, configuration: configuration)
        router.get("/healthz") { _, _ in
            // Liveness: a wedged interpreter fails it, so a kubelet restarts the pod.
            if let wedged = self.executor.wedged { return Response.error(.notReady, "the interpreter is wedged: \(wedged)") }
            return Response.json(.ok, Array(#"{"status":"ok"}"#.utf8))
        }
        router.get("/readyz") { _, _ in
            if self.isDraining { return Response.error(.notReady, "draining") }
            if !self.connection.isConnected { return Response.error(.notReady, "NATS: not connected") }
            return Response.json(.ok, Array(#"{"status":"ready"}"#.utf8))
        }
        let host = configuration.host
        return makeApplication(
            router: router, host: host, port: configuration.port, serverName: "neutrino-worker",
            logger: logger, onListening: { port in heartbeats.listening(host: host, port: port) })
    }

    private func noteCancel(_ id: String) {
        cancelled.withLock { $0.insert(id) }
        if executor.cancel(tag: id) {
            logger.info("cancelling running task", metadata: ["task_id": "\(id)"])
        }
    }

    /// Why `id` must not run: cancelled (broadcast to this worker), or already terminal in the task log
    /// (cancelled while queued, or finished by an earlier delivery).
    private func reasonToSkip(_ id: String, js: JetStream) async -> String? {
        if cancelled.withLock({ $0.contains(id) }) { return "cancelled" }
        guard let reader else {
            // No task log here (--task-log nats): cancellations of queued tasks and finished tasks leave a mark.
            return (try? await js.settledStatus(pool: configuration.pool, taskID: id)) ?? nil
        }
        guard let status = try? await reader.status(id: id), status.isTerminal else { return nil }
        return status.rawValue
    }

    /// A redelivery of a task this worker is still running or finishing (its ack came after AckWait, or was lost in
    /// a reconnect) waits for that attempt to end, keeping the new delivery alive meanwhile, so the check that
    /// follows sees the outcome instead of running the task a second time.
    private func waitForLocalAttempt(_ taskID: String, redelivery: JetStreamMessage, spec: TaskSpec) async {
        func isLocal() -> Bool {
            inFlight.withLock { $0[taskID] != nil } || finishing.withLock { $0.contains(taskID) }
        }
        guard isLocal() else { return }
        logger.notice("a task running here was redelivered; waiting for this worker's attempt", metadata: ["task_id": "\(taskID)"])
        redeliveriesWaiting.withLock { $0[ObjectIdentifier(redelivery)] = redelivery }
        defer { _ = redeliveriesWaiting.withLock { $0.removeValue(forKey: ObjectIdentifier(redelivery)) } }
        let deadline = ContinuousClock.now + .milliseconds(Int64(spec.timeoutMs)) + .seconds(30)
        while isLocal() && ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(20))
        }
    }

    /// What `InProgressTicker` keeps from being redelivered: the messages running here, and the redeliveries waiting
    /// for their attempt here to end.
    func messagesToKeepAlive() -> [JetStreamMessage] {
        inFlight.withLock { Array($0.values) } + redeliveriesWaiting.withLock { Array($0.values) }
    }

    /// Runs one message to its settlement: skip, run, record the outcome durably, then ack, nak or term.
    func handle(_ message: JetStreamMessage, js: JetStream) async {
        let pool = configuration.pool
        guard let name = QueueLayout.task(fromSubject: message.subject, pool: pool), let spec = specs[name],
            let taskID = message.header("Nats-Msg-Id").map({ $0.lowercased() }), TaskID.isValid(taskID)
        else {
            logger.error("unroutable message terminated", metadata: ["subject": "\(message.subject)"])
            try? message.term()
            return
        }
        let attempt = Int(message.numDelivered)
        let workerID = configuration.workerID
        await waitForLocalAttempt(taskID, redelivery: message, spec: spec)
        if let reason = await reasonToSkip(taskID, js: js) {
            try? message.ack()
            logger.info("skipped a task that must not run", metadata: ["task_id": "\(taskID)", "status": "\(reason)"])
            return
        }
        // The gateway's enqueue span, from the message's `traceparent`. With tracing on, the time the message waited
        // in JetStream (from its store time to now) is the first span here, and the execution and the task-log write
        // follow in the same trace; off, the context still reaches Python and the task log unchanged.
        let incoming = message.header("traceparent").flatMap(TraceParent.init)
        let started = NATSWorker.traceStart(message, incoming: incoming, taskID: taskID, spec: spec, attempt: attempt)
        started?.span.end()
        let trace = started?.trace
        let traceID = trace?.traceID ?? incoming?.traceID
        @Sendable func event(
            _ kind: TaskEventKind, result: String? = nil, error: String? = nil, durationMs: Double? = nil,
            output: String? = nil
        ) -> TaskEvent {
            var e = TaskEvent(
                taskID: taskID, kind: kind, function: spec.name, pool: spec.pool, mode: spec.mode,
                workerID: workerID, attempt: attempt, result: result, error: error, durationMs: durationMs, output: output)
            e.traceID = traceID
            return e
        }
        // In flight while Python runs it: kept alive by `InProgressTicker`, and what a drain that runs out of time
        // hands back.
        inFlight.withLock { $0[taskID] = message }
        var stillInFlight = true
        defer { if stillInFlight { _ = inFlight.withLock { $0.removeValue(forKey: taskID) } } }

        let executeSpan = trace?.startSpan(
            NeutrinoTracing.Name.execute, kind: .consumer, taskID: taskID, task: name, pool: pool, attempt: attempt)
        let payload: [UInt8]
        do {
            payload = try TaskPayload.make(
                body: message.data, taskID: taskID, attempt: attempt, pool: pool,
                traceParent: (executeSpan?.traceParent ?? incoming)?.value)
        } catch {
            executeSpan?.fail("the queued message is not a JSON object")
            executeSpan?.end()
            await finish(
                message, js: js,
                event(.failed, error: JSONWriter.taskErrorText(.invalidArguments, message: "the queued message is not a JSON object")), settle: .term,
                trace: trace)
            return
        }
        let taskLog = self.taskLog
        let printed = CapturedOutput()
        let outcome = await executor.run(
            task: name, tag: taskID, payload: payload, timeoutMs: spec.timeoutMs,
            onStart: { [recycler] in
                recycler.taskStarted()
                taskLog.record(event(.running))
            }, onOutput: printed.set)
        if let executeSpan {
            executeSpan.updateAttributes { $0["neutrino.status"] = outcome.statusName }
            if outcome.statusName != "completed" { executeSpan.fail("the attempt ended \(outcome.statusName)") }
            executeSpan.end()
        }
        finishing.withLock { _ = $0.insert(taskID) }
        defer { finishing.withLock { _ = $0.remove(taskID) } }
        _ = inFlight.withLock { $0.removeValue(forKey: taskID) }
        stillInFlight = false
        switch outcome {
        case .completed(let result, let ms):
            await finish(
                message, js: js, event(.completed, result: String(decoding: result, as: UTF8.self), durationMs: ms, output: printed.text),
                settle: .ack, trace: trace)
        case .timedOut(let ms):
            let error = JSONWriter.taskErrorText(.timeout, message: "task '\(name)' exceeded its timeout of \(spec.timeoutMs) ms")
            await finish(message, js: js, event(.timedOut, error: error, durationMs: ms, output: printed.text), settle: .ack, trace: trace)
        case .cancelled(let ms):
            await finish(
                message, js: js,
                event(.cancelled, error: JSONWriter.taskErrorText(.cancelled, message: "task '\(name)' was cancelled"), durationMs: ms), settle: .ack,
                trace: trace)
        case .rejected, .abandoned:
            try? message.nak()
        case .failed(let errorBytes, let ms):
            let error = String(decoding: errorBytes, as: UTF8.self)
            if attempt <= spec.retries {
                let delay = QueueLayout.retryDelay(afterAttempt: attempt)
                logger.info("attempt failed; retrying", metadata: ["task_id": "\(taskID)", "attempt": "\(attempt)", "delay": "\(delay)"])
                await finish(message, js: js, event(.retrying, error: error, durationMs: ms, output: printed.text), settle: .nak(delay), trace: trace)
            } else {
                await deadLetter(message, spec: spec, taskID: taskID, attempt: attempt, error: error, js: js)
                await finish(message, js: js, event(.failed, error: error, durationMs: ms, output: printed.text), settle: .term, trace: trace)
            }
        }
    }

    private enum Settle {
        case ack, nak(Duration), term

        /// Whether the task ends here (a nak hands it back for another attempt).
        var isFinal: Bool { if case .nak = self { false } else { true } }
    }

    /// Records `event`, waits until it is committed, then settles the message: a task is never acknowledged
    /// before its outcome is in the task log.
    private func finish(_ message: JetStreamMessage, js: JetStream, _ event: TaskEvent, settle: Settle, trace: TaskTrace?) async {
        let span = trace?.startSpan(
            NeutrinoTracing.Name.taskLogWrite, taskID: event.taskID, task: event.function, pool: event.pool, attempt: event.attempt)
        taskLog.record(event)
        if settle.isFinal && reader == nil {
            // Without a task log a later redelivery (a lost ack) could not tell that this task is done: leave a marker
            // first, side by side with the event's own publish.
            async let marked: Void = markSettled(event, js: js)
            await taskLog.flush()
            span?.end()
            await marked
        } else {
            await taskLog.flush()
            span?.end()
            // Committed: a long poll waiting for this task (`GET /tasks/<id>?wait=`) can answer now.
            if settle.isFinal { announceFinished(event) }
        }
        do {
            switch settle {
            // A lost ack means a redelivery, which the terminal row makes a no-op (see reasonToSkip).
            case .ack: try message.ack()
            case .nak(let delay): try message.nak(delay: delay)
            case .term: try message.term()
            }
        } catch {
            logger.warning("settling a message failed; it will be redelivered", metadata: ["task_id": "\(event.taskID)", "error": "\(error)"])
        }
    }

    /// The first span of a queued task's trace here: its wait in JetStream, from the message's store time (on the NATS
    /// server's clock) until now; nil when tracing is off.
    private static func traceStart(
        _ message: JetStreamMessage, incoming: TraceParent?, taskID: String, spec: TaskSpec, attempt: Int
    ) -> (trace: TaskTrace, span: any Span)? {
        guard NeutrinoTracing.isEnabled else { return nil }
        let stored = message.timestampNanos > 0 ? EpochInstant(nanosecondsSinceEpoch: UInt64(message.timestampNanos)) : nil
        return TaskTrace.start(
            NeutrinoTracing.Name.queueWait, continuing: incoming, kind: .consumer, at: stored, taskID: taskID, task: spec.name,
            pool: spec.pool, attempt: attempt)
    }

    /// Tells the gateways that `event`'s task is terminal and committed (`QueueLayout.finishedSubject`): a write to
    /// the socket, nothing awaited. Only a worker with a task log of its own sends it: without one, the event is
    /// committed by a gateway later, and the gateway's own watcher sees it.
    private func announceFinished(_ event: TaskEvent) {
        do {
            try connection.publishNow(subject: QueueLayout.finishedSubject(pool: event.pool), data: Array(event.taskID.utf8))
        } catch {
            logger.debug("could not announce a finished task", metadata: ["task_id": "\(event.taskID)", "error": "\(error)"])
        }
    }

    private func markSettled(_ event: TaskEvent, js: JetStream) async {
        do {
            try await js.markSettled(pool: event.pool, taskID: event.taskID, status: event.kind.status)
        } catch {
            logger.warning(
                "could not mark the task settled; a redelivery may run it again", metadata: ["task_id": "\(event.taskID)", "error": "\(error)"])
        }
    }

    /// Copies the last failed attempt to `neutrino.dlq.<pool>.<task>` (before `term` deletes it from the work queue).
    private func deadLetter(_ message: JetStreamMessage, spec: TaskSpec, taskID: String, attempt: Int, error: String, js: JetStream) async {
        do {
            try await js.copyToDeadLetter(data: message.data, pool: spec.pool, task: spec.name, taskID: taskID, attempts: attempt, error: error)
        } catch {
            logger.error("copying a failed task to the dead-letter stream failed", metadata: ["task_id": "\(taskID)", "error": "\(error)"])
        }
    }

}

/// Keeps the messages a worker holds from being redelivered: every third of AckWait it sends `InProgress` for each
/// (`NATSWorker.messagesToKeepAlive`). One loop per worker rather than a task and a timer per message: those cost the
/// cooperative pool and dispatch's timer thread about 30 µs per queued task (two NATS workers draining `echo`, three
/// pairs: 175 / 172 / 161 → 152 / 147 / 153 µs per task on the pool, 10 → 0 on the timer thread). A message taken
/// just after a tick gets its first `InProgress` within one interval, as before.
struct InProgressTicker: Service, CustomStringConvertible {
    let interval: Duration
    let inFlight: @Sendable () -> [JetStreamMessage]
    var description: String { "in-progress ticker" }

    func run() async throws {
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                do { try await Task.sleep(for: interval) } catch { return }
                // A message settled since the snapshot sends nothing (`inProgress` is a no-op once settled).
                for message in inFlight() { try? message.inProgress() }
            }
        }
    }
}
