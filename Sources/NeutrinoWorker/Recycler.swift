import Foundation
import Glibc
import Logging
import NeutrinoCore
import Synchronization

/// Recycles a worker the way Celery's `max_tasks_per_child` / `max_memory_per_child` do: once it has run
/// `--max-tasks-per-worker` tasks, or its resident memory passes `--max-rss-mb` after a task, it drains (the same
/// graceful shutdown as SIGTERM: running tasks finish, nothing is lost or run twice) and exits with status 75
/// (EX_TEMPFAIL), which tells its supervisor to start a fresh one at once.
final class Recycler: Sendable {
    /// The exit status of a recycled worker.
    static let exitStatus: Int32 = 75

    let maxTasks: Int
    let maxRSSBytes: Int
    private let logger: Logger
    private let finished = Atomic<Int>(0)
    private let state = Mutex<State>(State())

    private struct State {
        var reason: String?
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

    /// What recycling does (start the graceful shutdown); set once the service group exists.
    func onRecycle(_ action: @escaping @Sendable () -> Void) {
        state.withLock { $0.action = action }
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

    private func recycle(_ why: String) {
        let action = state.withLock { s -> (@Sendable () -> Void)? in
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
