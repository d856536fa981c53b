import Logging
import NeutrinoCore
import NeutrinoEvents
import NeutrinoNATS
import NeutrinoPython
import NeutrinoTaskLog
import ServiceLifecycle

/// Starts a worker: the interpreter and the app first (a broken app fails before any port opens), then NATS (when
/// given: the queue, heartbeats, events), then the task log, then the services of the chosen mode in one
/// `ServiceGroup` that owns the process's lifecycle.
public enum Worker {
    /// How a worker ended when it was not told to stop by a signal.
    public enum Exit: Sendable {
        /// Stopped by SIGTERM/SIGINT (drained).
        case stopped
        /// Recycled itself (`--max-tasks-per-worker`, `--max-rss-mb`): its supervisor should start a fresh one.
        case recycled(String)

        /// Its interpreter wedged past a hard timeout.
        case wedged(String)

        /// The process exit status: 0, 75 (EX_TEMPFAIL) for a recycle, 70 (EX_SOFTWARE) for a wedged interpreter.
        public var status: Int32 {
            switch self {
            case .stopped: 0
            case .recycled: Recycler.exitStatus
            case .wedged: Recycler.wedgedExitStatus
            }
        }
    }

    /// `tracing`: the OTLP exporter `NeutrinoTracing.bootstrap` returned, if tracing is on; it runs first in the group
    /// so it stops last and exports the spans of the drain.
    @discardableResult
    public static func run(_ configuration: WorkerConfiguration, logger: Logger, tracing: (any Service)? = nil) async throws -> Exit {
        // Before the app is imported: its code may use SQLite (Python's `sqlite3`) on threads of its own.
        TaskLogWriter.configureSQLite()
        let runtime = try PythonRuntime.start(app: configuration.app, paths: configuration.pythonPaths)
        var connection: NATSConnection?
        if let url = configuration.natsURL {
            var options = NATSConnection.Options()
            options.replication = .forServers(NATSConnection.serverList(url).count, explicit: configuration.streamReplicas)
            options.auth = configuration.natsAuth
            connection = try await NATSConnection.connect(
                url: url, name: configuration.workerID, logger: logger,
                options: options)
        }
        let taskLog: (any TaskEventSink)?
        switch configuration.taskLog {
        case .sqlite(let path): taskLog = try TaskLogWriter(path: path, logger: logger)
        case .nats:
            guard let connection else { throw WorkerError(message: "--task-log nats needs --nats URL") }
            // The publisher provisions NEUTRINO_EVENTS itself and keeps events while NATS is not reachable yet.
            taskLog = NATSEventPublisher(
                jetStream: try connection.jetStream(), origin: .worker(configuration.workerID), logger: logger)
        case .none: taskLog = nil
        }
        let recycler = Recycler(maxTasks: configuration.maxTasksPerWorker, maxRSSMB: configuration.maxRSSMB, logger: logger)
        let sink = ObservedSink(taskLog, logger: logger, recycler: recycler)
        let specs = Dictionary(runtime.tasks.map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first })
        let workerID = configuration.workerID
        let callerRecorded = CallerRecordedCalls(visibleAfter: configuration.runningVisibleAfter)
        ProgressReporting.install { report in
            guard let spec = specs[report.task] else { return }
            // A call whose progress shows in the task log is recorded running first, and its outcome by the worker too.
            if let running = callerRecorded.makeVisible(report.taskID) { sink.record(running) }
            sink.record(
                TaskEvent(
                    taskID: report.taskID, kind: .progress, function: spec.name, pool: spec.pool,
                    mode: spec.mode, workerID: workerID, attempt: report.attempt,
                    progress: report.fraction, detail: report.message))
        }
        var services: [any Service] = tracing.map { [$0] } ?? []
        switch configuration.mode {
        case .http:
            let worker = HTTPWorker(
                configuration: configuration, runtime: runtime, taskLog: sink, connection: connection,
                recycler: recycler, callerRecorded: callerRecorded, logger: logger)
            do { try await worker.startASGI() } catch {
                await connection?.close()
                throw error
            }
            services += worker.services()
        case .nats:
            guard let connection else { throw WorkerError(message: "--mode nats needs --nats URL") }
            services += try NATSWorker(
                configuration: configuration, runtime: runtime, taskLog: sink, connection: connection,
                recycler: recycler, logger: logger
            ).services()
        }
        // One service group per worker process: SIGTERM/SIGINT shut its services down in reverse order of the list.
        let group = ServiceGroup(configuration: .init(services: services, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        recycler.onRecycle { Task { await group.triggerGracefulShutdown() } }
        do {
            try await group.run()
        } catch {
            await connection?.close()
            throw error
        }
        await connection?.close()
        logger.notice("worker stopped")
        guard let reason = recycler.reason else { return .stopped }
        return recycler.exitStatus == Recycler.wedgedExitStatus ? .wedged(reason) : .recycled(reason)
    }
}

public struct WorkerError: Error, CustomStringConvertible {
    public var message: String
    public init(message: String) { self.message = message }
    public var description: String { message }
}
