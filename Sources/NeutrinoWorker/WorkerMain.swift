import Logging
import NeutrinoCore
import NeutrinoPython
import NeutrinoTaskLog

/// Starts a worker: the interpreter and the app first (a broken app fails before any port opens), then the
/// task log, then the server of the chosen mode.
public enum Worker {
    public static func run(_ configuration: WorkerConfiguration, logger: Logger) async throws {
        let runtime = try PythonRuntime.start(app: configuration.app, paths: configuration.pythonPaths)
        let taskLog: TaskLogWriter?
        switch configuration.taskLog {
        case .sqlite(let path): taskLog = try TaskLogWriter(path: path, logger: logger)
        case .none: taskLog = nil
        }
        if let taskLog {
            let specs = Dictionary(runtime.tasks.map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first })
            let workerID = configuration.workerID
            ProgressReporting.install { report in
                guard let spec = specs[report.task] else { return }
                taskLog.record(TaskEvent(taskID: report.taskID, kind: .progress, function: spec.name, pool: spec.pool,
                                         mode: spec.mode, workerID: workerID, attempt: report.attempt,
                                         progress: report.fraction, detail: report.message))
            }
        }
        switch configuration.mode {
        case .http:
            try await HTTPWorker(configuration: configuration, runtime: runtime, taskLog: taskLog, logger: logger).run()
        case .nats:
            try await NATSWorker(configuration: configuration, runtime: runtime, taskLog: taskLog, logger: logger).run()
        }
    }
}

public struct WorkerError: Error, CustomStringConvertible {
    public var message: String
    public init(message: String) { self.message = message }
    public var description: String { message }
}
