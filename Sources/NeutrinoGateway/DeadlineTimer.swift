import NIOCore

/// One timer for deadlines that move forward with each request on a connection: armed for the earliest deadline
/// asked for, and left as it is when a later one is asked for. Its owner, when it fires, acts on the deadlines that
/// passed and asks again for the ones still ahead. A keep-alive connection's requests then only move their deadlines,
/// instead of scheduling and cancelling a timer each (a heap insertion, a promise and a closure on the event loop).
///
/// Confined to its channel's event loop, like the handler that owns it.
struct DeadlineTimer {
    private var scheduled: Scheduled<Void>?
    private var armedFor: NIODeadline?

    /// Makes sure `fire` runs by `deadline`. A timer already armed for that time or sooner serves (its own `fire`
    /// then runs, and asks again); one armed for later is replaced.
    mutating func fire(by deadline: NIODeadline, on loop: NIOIsolatedEventLoop, _ fire: @escaping () -> Void) {
        if let armedFor, armedFor <= deadline { return }
        scheduled?.cancel()
        armedFor = deadline
        scheduled = loop.scheduleTask(deadline: deadline, fire)
    }

    /// The timer fired: nothing is armed any more (call first in `fire`).
    mutating func fired() {
        scheduled = nil
        armedFor = nil
    }

    mutating func cancel() {
        scheduled?.cancel()
        fired()
    }
}

/// A channel handler with one call at a time in flight to a worker (over HTTP or the call lane), whose deadline one
/// `DeadlineTimer` enforces for all the calls of its connection.
protocol CallDeadlineHandler: AnyObject {
    /// The deadline of the latest call; it applies while `callInFlight`.
    var callDeadline: NIODeadline { get set }
    var deadlineTimer: DeadlineTimer { get set }
    var callInFlight: Bool { get }
    /// The call in flight passed its deadline.
    func callTimedOut(context: ChannelHandlerContext)
}

extension CallDeadlineHandler {
    /// Sets the deadline of the call just sent, and makes sure the timer fires by then.
    func callStarted(deadline: NIODeadline, context: ChannelHandlerContext) {
        callDeadline = deadline
        wake(context, at: deadline)
    }

    private func wake(_ context: ChannelHandlerContext, at: NIODeadline) {
        deadlineTimer.fire(by: at, on: context.eventLoop.assumeIsolated()) { [self] in
            deadlineTimer.fired()
            guard callInFlight else { return }
            guard callDeadline <= .now() else { return wake(context, at: callDeadline) }
            callTimedOut(context: context)
        }
    }
}
