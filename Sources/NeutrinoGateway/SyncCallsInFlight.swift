import NeutrinoCore
import Synchronization

/// The sync calls this gateway is forwarding now, by task id, with their `pending` event.
///
/// A sync call's lifecycle is recorded in one batch when its answer comes back (one writer per call, see
/// `CallerRecordedCalls` on the worker side), so a short call has no row while it runs. A `GET`, `DELETE` or retry
/// that names such a call here records its `pending` at once (`reveal`), and the lookup then finds the task: a sync
/// call whose id a task handed out early can be read and cancelled as soon as it starts.
final class SyncCallsInFlight: Sendable {
    private struct Entry {
        var pending: TaskEvent
        var revealed: Bool
    }

    private let calls = Mutex<[String: Entry]>([:])

    func begin(_ pending: TaskEvent) {
        calls.withLock { $0[pending.taskID] = Entry(pending: pending, revealed: false) }
    }

    func end(_ taskID: String) {
        _ = calls.withLock { $0.removeValue(forKey: taskID) }
    }

    /// The `pending` event of call `taskID` if it runs here and was not revealed yet (record it), else nil.
    func reveal(_ taskID: String) -> TaskEvent? {
        calls.withLock { calls -> TaskEvent? in
            guard let entry = calls[taskID], !entry.revealed else { return nil }
            calls[taskID]?.revealed = true
            return entry.pending
        }
    }
}

/// The submits `CallHandler` took (`POST /api/<task>` outside the router: sync calls and queued tasks) that have not
/// answered yet: the server's drain does not wait for one whose client hung up, so the gateway's shutdown step does
/// (a queued task published but not yet recorded, or a sync call's outcome, would otherwise meet a closed task log).
final class ClaimedSubmits: Sendable {
    private let running = Atomic<Int>(0)

    func begin() { running.add(1, ordering: .relaxed) }
    func end() { running.subtract(1, ordering: .relaxed) }
    var count: Int { running.load(ordering: .relaxed) }
}
