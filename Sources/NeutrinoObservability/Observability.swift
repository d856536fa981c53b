import FoundationEssentials
import Logging
import Metrics
import Prometheus
import Synchronization

/// How log lines are written: `text` for people, `json` (one object per line) for log collectors.
public enum LogFormat: String, Sendable, CaseIterable {
    case text
    case json
}

/// Process-wide logging and metrics set-up for both executables: swift-log writes text or JSON lines to stderr,
/// swift-metrics reports into one Prometheus registry that `GET /metrics` renders.
public enum Observability {
    private static let state = BootstrapState()
    private static let bootstrapped = Atomic(false)

    /// Whether `bootstrap` has run (metric handles made before it report nowhere, so none is cached before).
    public static var isBootstrapped: Bool { bootstrapped.load(ordering: .acquiring) }

    /// Bootstraps logging and metrics once per process and returns the registry `/metrics` renders.
    @discardableResult
    public static func bootstrap(logFormat: LogFormat, level: Logger.Level) -> PrometheusCollectorRegistry {
        state.once {
            LoggingSystem.bootstrap { label in
                switch logFormat {
                case .text:
                    return TextLogHandler(label: label, level: level)
                case .json:
                    return JSONLogHandler(label: label, level: level)
                }
            }
            var factory = PrometheusMetricsFactory(registry: state.registry)
            factory.defaultDurationHistogramBuckets = NeutrinoMetrics.durationBuckets
            factory.valueHistogramBuckets = [NeutrinoMetrics.tasklogBatchSize: NeutrinoMetrics.batchSizeBuckets]
            MetricsSystem.bootstrap(factory)
            bootstrapped.store(true, ordering: .releasing)
        }
        return state.registry
    }

    /// Bootstraps (see `bootstrap`) and returns the executable's logger at `level`.
    public static func start(label: String, logFormat: LogFormat, level: Logger.Level) -> Logger {
        bootstrap(logFormat: logFormat, level: level)
        var logger = Logger(label: label)
        logger.logLevel = level
        return logger
    }

    /// The registry metrics land in (also before `bootstrap`, for tests that render it).
    public static var registry: PrometheusCollectorRegistry { state.registry }
}

private final class BootstrapState: Sendable {
    private let done = Mutex(false)
    let registry = PrometheusCollectorRegistry()

    /// Runs `body` the first time only (under the lock, so a second caller waits until the first has finished).
    func once(_ body: () -> Void) {
        done.withLock { done in
            guard !done else { return }
            done = true
            body()
        }
    }
}
