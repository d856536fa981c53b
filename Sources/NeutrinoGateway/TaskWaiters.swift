import NeutrinoCore
import NeutrinoTaskLog
import Synchronization

/// Long-polling (`GET /tasks/<id>?wait=N`) without a database query per waiter: one watcher checks SQLite's
/// `data_version` while anyone waits (every 1 ms after a change, backing off to `interval` while nothing changes), and only when another connection (a worker, the gateway's
/// own writer) has committed does it look up which of the waited-for tasks are now terminal — one query for all.
///
/// A worker that records into the task log itself announces each task it finished, right after the commit, on
/// `neutrino.control.finished.<pool>` (`FinishedNoticeListener`): `taskFinished` resumes that task's waiters at once,
/// without waiting for the watcher's next look. The notice is a hint: a waiter reads the record again and waits on
/// while it is not terminal yet (a notice that raced ahead of this gateway's copy of the event), and a lost notice
/// costs only the watcher's pace.
///
/// The deadline timer of a waiter starts only once the waiter is registered, and a wake-up that arrives before the
/// registration (a deadline of microseconds, or the client going away) is remembered and honoured by it: a `?wait=`
/// never outlives its deadline. At most `maxWaiters` requests wait at once; more are refused (`.full`).
final class TaskWaiters: Sendable {
    private struct State {
        var waiters: [String: [Int: CheckedContinuation<Void, Never>]] = [:]
        var count = 0
        /// Tokens woken before their continuation was registered.
        var woken: Set<Int> = []
        var nextToken = 0
        var watching = false
    }

    enum Outcome: Sendable, Equatable {
        /// The task is terminal, the deadline passed, or the caller was cancelled: read the record again.
        case done
        /// `maxWaiters` requests are waiting; this one did not.
        case full(limit: Int)
    }

    private let state = Mutex(State())
    private let reader: TaskLogReader
    private let interval: Duration
    let maxWaiters: Int

    init(reader: TaskLogReader, interval: Duration = .milliseconds(25), maxWaiters: Int = 10_000) {
        self.reader = reader
        self.interval = interval
        self.maxWaiters = max(1, maxWaiters)
    }

    /// Returns when task `id` reaches a terminal status, after `timeout`, or when the calling task is cancelled,
    /// whichever comes first; `.full` at once when `maxWaiters` requests already wait.
    func waitForTerminal(id: String, timeout: Duration) async -> Outcome {
        let token = state.withLock { s -> Int? in
            guard s.count < maxWaiters else { return nil }
            s.count += 1
            s.nextToken += 1
            return s.nextToken
        }
        guard let token else { return .full(limit: maxWaiters) }
        var timer: Task<Void, Never>?
        await withTaskCancellationHandler {
            await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
                let (registered, startWatcher) = state.withLock { s -> (Bool, Bool) in
                    if s.woken.remove(token) != nil { return (false, false) }
                    s.waiters[id, default: [:]][token] = c
                    defer { s.watching = true }
                    return (true, !s.watching)
                }
                guard registered else {
                    c.resume()
                    return
                }
                // Started after the registration, so its wake-up always finds the waiter.
                timer = Task {
                    do { try await Task.sleep(for: timeout) } catch { return }
                    self.wake(id: id, token: token)
                }
                if startWatcher { Task { await self.watch() } }
            }
        } onCancel: {
            self.wake(id: id, token: token)
        }
        timer?.cancel()
        await timer?.value  // a timer that fired after the watcher resumed us leaves a mark: removed below
        state.withLock { s in
            s.count -= 1
            s.woken.remove(token)
        }
        return .done
    }

    var waitingCount: Int { state.withLock { $0.count } }

    /// Task `id` reached a terminal status (a worker's notice): resumes its waiters now. Cheap when nobody waits for
    /// it (one dictionary lookup); called on the NATS subscription's thread.
    func taskFinished(_ id: String) {
        let ready = state.withLock { s in s.waiters.removeValue(forKey: id).map { Array($0.values) } ?? [] }
        for c in ready { c.resume() }
    }

    /// Resumes waiter `token` of task `id`; if it is not registered yet, it resumes itself on registration.
    private func wake(id: String, token: Int) {
        let c = state.withLock { s -> CheckedContinuation<Void, Never>? in
            guard let c = s.waiters[id]?.removeValue(forKey: token) else {
                // Not registered yet (or already resumed by the watcher: then the mark is removed on the way out).
                s.woken.insert(token)
                return nil
            }
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
