import NeutrinoCore
import ServiceLifecycle
import Synchronization

/// Sync calls whose lifecycle the caller records: the gateway writes `pending`, `running` and the outcome of every
/// call it forwards (with what the task printed) in one batch when the answer comes back
/// (`X-Neutrino-Caller-Records-Output`), so a short call costs the task log one write from one process instead of two
/// from two (measured in bench/README.md, "one writer per call").
///
/// A call that runs longer than `visibleAfter` still shows up as `running` while it runs: the `RunningRecorder`
/// records it from here, and from then on the worker records the call's outcome too (the task log keeps one copy of
/// each event), so a gateway that dies mid-call cannot leave it `running` forever. A call that reported progress is
/// visible the same way.
final class CallerRecordedCalls: Sendable {
    private struct Entry {
        var running: TaskEvent
        var visible: Bool
    }

    private let calls = Mutex<[String: Entry]>([:])
    /// How long a call runs before the worker records `running` itself.
    let visibleAfter: Duration

    init(visibleAfter: Duration) {
        self.visibleAfter = visibleAfter
    }

    /// The call started (its `running` event, not recorded yet).
    func begin(_ running: TaskEvent) {
        calls.withLock { $0[running.taskID] = Entry(running: running, visible: false) }
    }

    /// The call ended; true if its `running` or progress was recorded here (so its outcome must be too).
    func end(_ taskID: String) -> Bool {
        calls.withLock { $0.removeValue(forKey: taskID)?.visible } ?? false
    }

    /// A progress report of a call: it is visible from now on. Returns its `running` event if that was not recorded
    /// yet (to record before the progress, which needs the task's row); nil otherwise or if no such call runs here.
    func makeVisible(_ taskID: String) -> TaskEvent? {
        calls.withLock { calls -> TaskEvent? in
            guard let entry = calls[taskID], !entry.visible else { return nil }
            calls[taskID]?.visible = true
            return entry.running
        }
    }

    /// The `running` events of calls started before `cutoff` and not recorded yet, marked visible.
    func due(startedBefore cutoff: Timestamp) -> [TaskEvent] {
        calls.withLock { calls -> [TaskEvent] in
            var due: [TaskEvent] = []
            for (id, entry) in calls where !entry.visible && entry.running.at.millis <= cutoff.millis {
                calls[id]?.visible = true
                due.append(entry.running)
            }
            return due
        }
    }
}

/// Records `running` for caller-recorded calls that have run past `visibleAfter` (a tick every half of it).
struct RunningRecorder: Service, CustomStringConvertible {
    let calls: CallerRecordedCalls
    let taskLog: any TaskEventSink
    var description: String { "running recorder" }

    func run() async throws {
        let interval = max(.milliseconds(10), calls.visibleAfter / 2)
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                do { try await Task.sleep(for: interval) } catch { return }
                let cutoff = Timestamp(millis: Timestamp.now().millis - calls.visibleAfter.wholeMilliseconds)
                let due = calls.due(startedBefore: cutoff)
                if !due.isEmpty { taskLog.record(contentsOf: due) }
            }
        }
    }
}
