import NIOCore
import NIOPosix
import NeutrinoCore
import Synchronization

/// The sync calls of one pool waiting for room: every worker's `--worker-connections` were busy (or every worker
/// answered that it is saturated) when they tried. Instead of an instant 503 a call waits here, in arrival order,
/// until a call of the pool ends and gives its connection back, up to the call's own deadline; at most `limit`
/// calls wait (`--max-waiting-calls`), the next one is refused at once. This is a reverse proxy's server queue
/// (HAProxy's `maxconn` with `timeout queue`): a burst above the pool's capacity costs latency, not errors.
///
/// A call takes a `ticket` before it tries the workers and hands it to `wait`: room made in between (a connection
/// given back since the ticket) sends it to try again at once rather than sleep through the one wake-up meant for
/// it. Each room made wakes the first waiter; a change of members (a worker joined, or came back) wakes them all.
/// Room that makes no event here (a worker saturated by other gateways' calls frees up, a restarted worker accepts
/// again while no call watches for it) is found by the first waiter, woken to look again every `lookAgain` while the
/// line is not empty: the line can be slow to notice such room, never blind to it.
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
        /// Ends the wait at the call's deadline.
        let deadline: Scheduled<Void>

        /// Ends the wait, once the waiter is out of the line (never under its lock).
        func end(_ outcome: Wait) {
            deadline.cancel()
            continuation.resume(returning: outcome)
        }
    }

    private struct State {
        var line = CircularBuffer<Waiter>()
        /// Wakes the first waiter every `lookAgain` while anyone waits.
        var ticker: Scheduled<Void>?
    }

    /// How often the first waiter looks again without a wake-up.
    let lookAgain: TimeAmount

    /// At most this many calls wait (0: none; a call finding no room is refused at once).
    let limit: Int
    private let state = Mutex(State())
    /// Room made so far (connections given back); a call's ticket is this count before it tried the workers.
    private let made = Atomic<UInt64>(0)
    /// How many wait, readable without the lock: the path of a call that finds room pays one atomic load.
    private let count = Atomic<Int>(0)
    private let nextID = Atomic<UInt64>(0)
    private let group: any EventLoopGroup

    init(limit: Int, group: any EventLoopGroup, lookAgain: TimeAmount = .milliseconds(100)) {
        self.limit = max(0, limit)
        self.group = group
        self.lookAgain = lookAgain
    }

    /// Calls waiting now.
    var waiting: Int { count.load(ordering: .sequentiallyConsistent) }

    /// Taken before a call tries the workers.
    func ticket() -> UInt64 { made.load(ordering: .sequentiallyConsistent) }

    /// A call of the pool ended and gave its connection back (or a connection closed): the first waiter tries again.
    func roomMade() {
        made.wrappingAdd(1, ordering: .sequentiallyConsistent)
        guard count.load(ordering: .sequentiallyConsistent) > 0 else { return }
        wakeFirst()
    }

    /// The pool's members changed (a worker joined, or one that refused connections accepts them again): every waiter
    /// tries again.
    func membersChanged() {
        made.wrappingAdd(1, ordering: .sequentiallyConsistent)
        guard count.load(ordering: .sequentiallyConsistent) > 0 else { return }
        let all = state.withLock { s -> [Waiter] in
            defer {
                s.line.removeAll()
                count.store(0, ordering: .sequentiallyConsistent)
            }
            return Array(s.line)
        }
        for waiter in all { waiter.end(.tryAgain) }
    }

    private func wakeFirst() {
        state.withLock { takeFirst(&$0) }?.end(.tryAgain)
    }

    /// The first waiter, out of the line (under the lock).
    private func takeFirst(_ s: inout State) -> Waiter? {
        let first = s.line.popFirst()
        count.store(s.line.count, ordering: .sequentiallyConsistent)
        return first
    }

    /// Waits for room made after `ticket` was taken, until `deadline`. `first`: a call that was woken and still found
    /// no room goes back to the front, not behind the calls that came after it (up to twice `limit` waiting). A
    /// `caller` that leaves takes its call out of the line (`callerLeft`).
    func wait(after ticket: UInt64, until deadline: NIODeadline, first: Bool = false, caller: CallerPresence? = nil) async -> Wait {
        let id = nextID.wrappingAdd(1, ordering: .relaxed).oldValue
        let loop = MultiThreadedEventLoopGroup.currentEventLoop ?? group.next()
        // Before the waiter is in the line, so that either the hook finds it there or the look at `hasLeft` below
        // sees the caller gone (`leave` marks it before it runs the hook); and before this wait ends, so that the
        // next wait's hook replaces this one's, never the other way round.
        caller?.onLeave { [self] in self.leave(id, with: .callerLeft) }
        return await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Wait, Never>) in
                let refusal = state.withLock { s -> Wait? in
                    // The cancellation flag is set before the handler below runs, which takes this lock: a waiter is
                    // either refused here or found there.
                    if Task.isCancelled || deadline <= .now() { return .expired }
                    if caller?.hasLeft == true { return .callerLeft }
                    if made.load(ordering: .sequentiallyConsistent) != ticket { return .tryAgain }
                    let room = first ? limit.multipliedReportingOverflow(by: 2).partialValue : limit
                    if limit == 0 || s.line.count >= room { return .full }
                    // Counted before the last look at `made`, the order `roomMade` uses the other way round (its add,
                    // then its look at `count`): either it sees this waiter and wakes it (after this lock), or this
                    // look sees its room.
                    count.store(s.line.count + 1, ordering: .sequentiallyConsistent)
                    if made.load(ordering: .sequentiallyConsistent) != ticket {
                        count.store(s.line.count, ordering: .sequentiallyConsistent)
                        return .tryAgain
                    }
                    let timer = loop.scheduleTask(deadline: deadline) { [self] in self.leave(id, with: .expired) }
                    let waiter = Waiter(id: id, continuation: continuation, deadline: timer)
                    if first { s.line.prepend(waiter) } else { s.line.append(waiter) }
                    if s.ticker == nil { s.ticker = loop.scheduleTask(in: lookAgain) { [self] in self.tick() } }
                    return nil
                }
                if let refusal { continuation.resume(returning: refusal) }
            }
        } onCancel: {
            leave(id, with: .expired)
        }
    }

    /// Every `lookAgain` while anyone waits: the first waiter looks for room no event announced.
    private func tick() {
        let first = state.withLock { s -> Waiter? in
            let first = takeFirst(&s)
            // Armed again while anyone waits (the one woken now included: it may come back to the front).
            s.ticker = first == nil ? nil : group.next().scheduleTask(in: lookAgain) { [self] in self.tick() }
            return first
        }
        first?.end(.tryAgain)
    }

    /// Takes a waiter out of the line (its deadline came, its task was cancelled, its caller left) and resumes it;
    /// nothing if a wake-up took it first.
    private func leave(_ id: UInt64, with outcome: Wait) {
        let found = state.withLock { s -> Waiter? in
            guard let i = s.line.firstIndex(where: { $0.id == id }) else { return nil }
            let waiter = s.line.remove(at: i)
            count.store(s.line.count, ordering: .sequentiallyConsistent)
            return waiter
        }
        found?.end(outcome)
    }
}
