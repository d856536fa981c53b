import Synchronization

/// Whether the client of a call `CallHandler` serves is still connected. The handler marks it when the connection
/// closes before the call was answered, and runs what waited on that: a gateway call still waiting for a worker with
/// room leaves the line, and is not run for nobody.
public final class CallerPresence: Sendable {
    private struct State {
        var left = false
        var hooks: [@Sendable () -> Void] = []
    }

    private let state = Mutex(State())

    public init() {}

    /// The connection closed before the call was answered.
    public var hasLeft: Bool { state.withLock { $0.left } }

    /// Runs `hook` once the caller leaves: at once if it has (never while the lock is held).
    public func onLeave(_ hook: @escaping @Sendable () -> Void) {
        let now = state.withLock { s -> Bool in
            guard !s.left else { return true }
            s.hooks.append(hook)
            return false
        }
        if now { hook() }
    }

    /// The caller's connection closed: runs the hooks, once.
    public func leave() {
        let hooks = state.withLock { s -> [@Sendable () -> Void] in
            guard !s.left else { return [] }
            s.left = true
            defer { s.hooks.removeAll() }
            return s.hooks
        }
        for hook in hooks { hook() }
    }
}
