import NeutrinoCore
import NeutrinoTaskLog
import Synchronization

/// Long-polling (`GET /tasks/<id>?wait=N`) without a database query per waiter: one watcher checks SQLite's
/// `data_version` while anyone waits (every 1 ms after a change, backing off to `interval` while nothing changes), and only when another connection (a worker, the gateway's
/// own writer) has committed does it look up which of the waited-for tasks are now terminal — one query for all.
final class TaskWaiters: Sendable {
    private struct State {
        var waiters: [String: [Int: CheckedContinuation<Void, Never>]] = [:]
        var nextToken = 0
        var watching = false
    }

    private let state = Mutex(State())
    private let reader: TaskLogReader
    private let interval: Duration

    init(reader: TaskLogReader, interval: Duration = .milliseconds(25)) {
        self.reader = reader
        self.interval = interval
    }

    /// Returns when task `id` reaches a terminal status, or after `timeout`, whichever comes first.
    func waitForTerminal(id: String, timeout: Duration) async {
        let token = state.withLock { s -> Int in
            s.nextToken += 1
            return s.nextToken
        }
        let timer = Task {
            try? await Task.sleep(for: timeout)
            self.resume(id: id, token: token)
        }
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let startWatcher = state.withLock { s -> Bool in
                s.waiters[id, default: [:]][token] = c
                defer { s.watching = true }
                return !s.watching
            }
            if startWatcher { Task { await self.watch() } }
        }
        timer.cancel()
    }

    var waitingCount: Int { state.withLock { $0.waiters.values.reduce(0) { $0 + $1.count } } }

    private func resume(id: String, token: Int) {
        let c = state.withLock { s -> CheckedContinuation<Void, Never>? in
            let c = s.waiters[id]?.removeValue(forKey: token)
            if s.waiters[id]?.isEmpty == true { s.waiters[id] = nil }
            return c
        }
        c?.resume()
    }

    private func watch() async {
        var lastVersion: Int?
        // Start fast and back off while nothing changes: a task that finishes moments after its waiter arrived is
        // seen within a millisecond or two, and an idle wait costs at most one query per `interval`.
        var pause = Duration.milliseconds(1)
        while true {
            let ids = state.withLock { s -> [String]? in
                if s.waiters.isEmpty {
                    s.watching = false
                    return nil
                }
                return Array(s.waiters.keys)
            }
            guard let ids else { return }
            let version = (try? await reader.dataVersion()) ?? -1
            // The first round always looks: a task may have finished between the caller's read and its wait.
            if version != lastVersion || version == -1 {
                lastVersion = version
                pause = .milliseconds(1)
                let done = (try? await reader.terminal(among: ids)) ?? []
                let ready = state.withLock { s -> [CheckedContinuation<Void, Never>] in
                    var out: [CheckedContinuation<Void, Never>] = []
                    for id in done { out += s.waiters.removeValue(forKey: id).map { Array($0.values) } ?? [] }
                    return out
                }
                for c in ready { c.resume() }
            } else {
                pause = min(pause * 2, interval)
            }
            try? await Task.sleep(for: pause)
        }
    }
}
