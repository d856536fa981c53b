import FoundationEssentials
import Glibc
import Logging
import NeutrinoCore
import NeutrinoHTTP
import NeutrinoPython
import NeutrinoThreads
import Synchronization

/// Recycles a worker the way Celery's `max_tasks_per_child` / `max_memory_per_child` do: once it has run
/// `--max-tasks-per-worker` tasks, or its resident memory passes `--max-rss-mb` after a task, it drains (the same
/// graceful shutdown as SIGTERM: running tasks finish, nothing is lost or run twice) and exits with status 75
/// (EX_TEMPFAIL), which tells its supervisor to start a fresh one at once.
///
/// It is also where the executor's alarms land: too many threads lost past their hard limit recycle the worker the
/// same way; a wedged interpreter (a thread holding the GIL past its hard limit) ends it with status 70
/// (EX_SOFTWARE) — through the same graceful shutdown, with a hard exit if that cannot finish in 10 s.
final class Recycler: Sendable {
    /// The exit status of a recycled worker.
    static let exitStatus: Int32 = 75
    /// The exit status of a worker whose interpreter wedged.
    static let wedgedExitStatus: Int32 = 70

    let maxTasks: Int
    let maxRSSBytes: Int
    private let logger: Logger
    private let finished = Atomic<Int>(0)
    private let state = Mutex<State>(State())

    private struct State {
        var reason: String?
        var wedged = false
        var action: (@Sendable () -> Void)?
    }

    /// `maxTasks` and `maxRSSMB` of 0 mean no limit.
    init(maxTasks: Int, maxRSSMB: Int, logger: Logger) {
        self.maxTasks = max(0, maxTasks)
        self.maxRSSBytes = max(0, maxRSSMB).multipliedReportingOverflow(by: 1 << 20).partialValue
        self.logger = logger
    }

    var isEnabled: Bool { maxTasks > 0 || maxRSSBytes > 0 }

    /// Why the worker recycled itself, once it has.
    var reason: String? { state.withLock { $0.reason } }

    /// Whether the worker has reached a limit: it takes no new task from then on.
    var isRecycling: Bool { reason != nil }

    /// The status the process should exit with: 0 when it was not recycled.
    var exitStatus: Int32 { state.withLock { $0.reason == nil ? 0 : $0.wedged ? Self.wedgedExitStatus : Self.exitStatus } }

    /// The executor's alarms (see `PythonExecutor`).
    func executorAlarm(_ alarm: ExecutorAlarm) {
        switch alarm {
        case .tooManyLeakedThreads(let n):
            recycle("\(n) Python threads are blocked past their hard timeout")
        case .eventLoop(let why):
            logger.error("the event loop of the async def tasks is lost; recycling", metadata: ["reason": "\(why)"])
            recycle(why)
        case .wedged(let why):
            logger.critical("the interpreter is wedged; the worker exits for a fresh one", metadata: ["reason": "\(why)"])
            recycle(why, wedged: true)
            // The graceful shutdown answers every caller without Python; if anything still waits on the GIL, end anyway.
            _ = startThread(name: "neutrino-wedge-exit") {
                sleep(10)
                _exit(Self.wedgedExitStatus)
            }
        }
    }

    /// What recycling does (start the graceful shutdown); set once the service group exists.
    func onRecycle(_ action: @escaping @Sendable () -> Void) {
        state.withLock { $0.action = action }
    }

    /// Printed on stdout once, when a Python thread starts the first task this process runs. Its supervisor
    /// (`neutrino up`) then knows the worker got through its start-up: a later crash is a task's doing (say one that
    /// calls `os._exit`), and the worker is restarted at once instead of backing off as a worker that cannot start
    /// would be. (At a task's start, not its end: a restarted worker is handed the calls that waited for it at once,
    /// and a crashing one among them could end the process before any other finished.)
    static let startedLine = "started its first task"
    private let startedOne = Atomic<Bool>(false)

    /// Called as a Python thread starts each task.
    func taskStarted() {
        guard !startedOne.load(ordering: .relaxed),
            startedOne.compareExchange(expected: false, desired: true, ordering: .relaxed).exchanged
        else { return }
        printForSupervisor(Self.startedLine)
    }

    /// Called after each task this worker ran reached its outcome.
    func taskFinished() {
        guard isEnabled else { return }
        let count = finished.add(1, ordering: .relaxed).newValue
        if maxTasks > 0 && count >= maxTasks {
            recycle("ran \(count) tasks (--max-tasks-per-worker \(maxTasks))")
        } else if maxRSSBytes > 0, let rss = Self.residentBytes(), rss > maxRSSBytes {
            recycle("resident memory \(rss >> 20) MB is over --max-rss-mb \(maxRSSBytes >> 20)")
        }
    }

    private func recycle(_ why: String, wedged: Bool = false) {
        let action = state.withLock { s -> (@Sendable () -> Void)? in
            if wedged { s.wedged = true }
            guard s.reason == nil else { return nil }
            s.reason = why
            return s.action
        }
        guard let action else { return }
        logger.notice("recycling: draining, then exiting for a fresh worker", metadata: ["reason": "\(why)"])
        action()
    }

    /// This process's resident set size, from `/proc/self/statm` (resident pages × page size).
    static func residentBytes() -> Int? {
        guard let text = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8) else { return nil }
        let fields = text.split(whereSeparator: { $0 == " " || $0 == "\n" })
        guard fields.count >= 2, let pages = Int(fields[1]) else { return nil }
        return pages.multipliedReportingOverflow(by: Int(sysconf(Int32(_SC_PAGESIZE)))).partialValue
    }
}
