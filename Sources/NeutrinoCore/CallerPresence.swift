import Synchronization

/// Whether the client of a call is still connected. The HTTP servers mark it (`ConnectionPresences`, one per
/// connection) when the connection closes, or the client's sending side does, and run what waited on that: a gateway
/// call still waiting for a worker with room leaves the line, and a worker's call still queued for a Python thread
/// is not started; neither runs for nobody.
///
/// One presence serves a connection's calls one after another, but waits on one thing at a time: `onLeave` holds one
/// hook, and a new one replaces it, so a call that waits again and again (woken to look for room every 100 ms) or a
/// long-lived connection does not pile them up.
public final class CallerPresence: Sendable {
    private struct State {
        var left = false
        var hook: (@Sendable () -> Void)?
    }

    private let state = Mutex(State())

    public init() {}

    /// The connection closed before the call was answered.
    public var hasLeft: Bool { state.withLock { $0.left } }

    /// Runs `hook` once the caller leaves: at once if it has (never while the lock is held). Replaces the hook set
    /// before, which will not run.
    public func onLeave(_ hook: @escaping @Sendable () -> Void) {
        let now = state.withLock { s -> Bool in
            guard !s.left else { return true }
            s.hook = hook
            return false
        }
        if now { hook() }
    }

    /// The caller's connection closed: runs the hook, once.
    public func leave() {
        let hook = state.withLock { s -> (@Sendable () -> Void)? in
            guard !s.left else { return nil }
            s.left = true
            defer { s.hook = nil }
            return s.hook
        }
        hook?()
    }
}
