import NIOCore
import NIOPosix
import NeutrinoHTTP
import Synchronization

/// The sync calls of one pool waiting for room: every worker's `--worker-connections` were busy (or every worker
/// answered that it is saturated) when they tried. Instead of an instant 503 a call waits here, in arrival order,
/// until a call of the pool ends and gives its connection back, up to the call's own deadline; at most `limit`
/// calls wait (`--max-waiting-calls`), the next one is refused at once. This is a reverse proxy's server queue
/// (HAProxy's `maxconn` with `timeout queue`): a burst above the pool's capacity costs latency, not errors.
///
/// A call takes a `ticket` before it tries the workers and hands it to `wait`: room made in between (a connection
/// given back since the ticket) sends it to try again at once rather than sleep through the one wake-up meant for
/// it. Each room made wakes the first waiter; a change of members wakes them all. Room that this gateway cannot
/// see (a worker saturated by other callers answers 503) is looked for again every `recheck`.
final class PoolCapacityQueue: Sendable {
    enum Wait: Equatable {
        /// Room was made (or it is time to look again): try the workers.
        case tryAgain
        /// `limit` calls are waiting already.
        case full
        /// The deadline passed, or the waiting task was cancelled.
        case expired
        /// The caller closed its connection.
        case callerLeft
    }

    private struct Waiter {
        let id: UInt64
        let continuation: CheckedContinuation<Wait, Never>
        let timer: Scheduled<Void>
        /// What the timer means when it fires: `tryAgain` at a recheck, `expired` at the deadline.
        let onTimer: Wait
    }

    /// How often a call that met a worker answering "saturated" looks again without a wake-up.
    static let recheck = TimeAmount.milliseconds(100)

    /// At most this many calls wait (0: none; a call finding no room is refused at once).
    let limit: Int
    private let waiters = Mutex(CircularBuffer<Waiter>())
    /// Room made so far (connections given back); a call's ticket is this count before it tried the workers.
    private let made = Atomic<UInt64>(0)
    /// `waiters.count`, readable without the lock: the path of a call that finds room pays one atomic load.
    private let count = Atomic<Int>(0)
    private let nextID = Atomic<UInt64>(0)
    private let group: any EventLoopGroup

    init(limit: Int, group: any EventLoopGroup) {
        self.limit = max(0, limit)
        self.group = group
    }

    /// Calls waiting now.
    var waiting: Int { count.load(ordering: .sequentiallyConsistent) }

    /// Taken before a call tries the workers.
    func ticket() -> UInt64 { made.load(ordering: .sequentiallyConsistent) }

    /// A call of the pool ended and gave its connection back (or a connection closed): the first waiter tries again.
    func roomMade() {
        made.wrappingAdd(1, ordering: .sequentiallyConsistent)
        guard count.load(ordering: .sequentiallyConsistent) > 0 else { return }
        let first = waiters.withLock { w -> Waiter? in
            let first = w.popFirst()
            count.store(w.count, ordering: .sequentiallyConsistent)
            return first
        }
        guard let first else { return }
        first.timer.cancel()
        first.continuation.resume(returning: .tryAgain)
    }

    /// The pool's members changed (a worker joined): every waiter tries again.
    func membersChanged() {
        made.wrappingAdd(1, ordering: .sequentiallyConsistent)
        guard count.load(ordering: .sequentiallyConsistent) > 0 else { return }
        let all = waiters.withLock { w -> [Waiter] in
            defer {
                w.removeAll()
                count.store(0, ordering: .sequentiallyConsistent)
            }
            return Array(w)
        }
        for waiter in all {
            waiter.timer.cancel()
            waiter.continuation.resume(returning: .tryAgain)
        }
    }

    /// Waits for room made after `ticket` was taken, until `deadline`. `first`: a call that was woken and still found
    /// no room goes back to the front, not behind the calls that came after it. `recheck`: it met a worker saturated by
    /// calls this gateway does not see, so it also looks again every `PoolCapacityQueue.recheck`. A `caller` that
    /// leaves takes its call out of the line (`callerLeft`).
    func wait(
        after ticket: UInt64, until deadline: NIODeadline, first: Bool = false, recheck: Bool = false, caller: CallerPresence? = nil
    ) async -> Wait {
        let id = nextID.wrappingAdd(1, ordering: .relaxed).oldValue
        let wake = recheck ? min(deadline, .now() + Self.recheck) : deadline
        let onTimer: Wait = wake < deadline ? .tryAgain : .expired
        let loop = MultiThreadedEventLoopGroup.currentEventLoop ?? group.next()
        return await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Wait, Never>) in
                let refusal = waiters.withLock { w -> Wait? in
                    // The cancellation flag is set before the handler below runs, which takes this lock: a waiter is
                    // either refused here or found there.
                    if Task.isCancelled { return .expired }
                    if caller?.hasLeft == true { return .callerLeft }
                    if wake <= .now() { return onTimer }
                    if made.load(ordering: .sequentiallyConsistent) != ticket { return .tryAgain }
                    if w.count >= limit && !(first && limit > 0) { return .full }
                    // Counted before the last look at `made`, the order `roomMade` uses the other way round (its add,
                    // then its look at `count`): either it sees this waiter and wakes it (after this lock), or this
                    // look sees its room.
                    count.store(w.count + 1, ordering: .sequentiallyConsistent)
                    if made.load(ordering: .sequentiallyConsistent) != ticket {
                        count.store(w.count, ordering: .sequentiallyConsistent)
                        return .tryAgain
                    }
                    let timer = loop.scheduleTask(deadline: wake) { [self] in self.leave(id, with: nil) }
                    let waiter = Waiter(id: id, continuation: continuation, timer: timer, onTimer: onTimer)
                    if first { w.prepend(waiter) } else { w.append(waiter) }
                    return nil
                }
                if let refusal {
                    continuation.resume(returning: refusal)
                } else {
                    caller?.onLeave { [self] in self.leave(id, with: .callerLeft) }
                }
            }
        } onCancel: {
            leave(id, with: .expired)
        }
    }

    /// Takes a waiter out of the line (its timer fired, or its task was cancelled) and resumes it; nothing if a wake-up
    /// took it first.
    private func leave(_ id: UInt64, with outcome: Wait?) {
        let found = waiters.withLock { w -> Waiter? in
            guard let i = w.firstIndex(where: { $0.id == id }) else { return nil }
            let waiter = w.remove(at: i)
            count.store(w.count, ordering: .sequentiallyConsistent)
            return waiter
        }
        guard let found else { return }
        found.timer.cancel()
        found.continuation.resume(returning: outcome ?? found.onTimer)
    }
}
