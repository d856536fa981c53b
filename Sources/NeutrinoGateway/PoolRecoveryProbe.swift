import NIOCore
import NIOPosix
import Synchronization

/// The wait of the sync calls that found every worker of their pool refusing connections: the workers are restarting
/// after a crash (`neutrino up` brings one back within a fraction of a second), being replaced in a rolling update,
/// or gone for good. One probe per pool, not every waiting call, tries to connect to the pool's workers, at most every
/// `interval`; the first worker that accepts ends the wait of every call, which then tries the pool again. The probe
/// runs inside a waiting call (the first to find it due), so nothing probes once no call waits.
final class PoolRecoveryProbe: Sendable {
    private struct State {
        /// A waiting call is connecting to the workers now.
        var probing = false
        /// When the next probe may start.
        var nextProbe = NIODeadline.uptimeNanoseconds(0)
        /// Bumped each time a probe finds a worker that accepts connections.
        var recoveries: UInt64 = 0
    }

    /// The least time between two probes of the pool; also how often a waiting call looks again.
    static let interval = TimeAmount.milliseconds(20)
    /// The longest one connection attempt of a probe may take (a worker on another host that drops SYNs).
    static let connectTimeout = TimeAmount.milliseconds(250)

    private let state = Mutex(State())
    private let group: any EventLoopGroup

    init(group: any EventLoopGroup) {
        self.group = group
    }

    /// Waits until a probe finds one of `endpoints()` accepting a connection (it is handed to `back`, and true is
    /// returned) or `deadline` passes (false). Concurrent waits share the probes.
    func waitForWorker(
        until deadline: NIODeadline, endpoints: () -> [WorkerPool.Endpoint], back: (WorkerPool.Endpoint) -> Void
    ) async -> Bool {
        let seen = state.withLock { $0.recoveries }
        while !Task.isCancelled {
            let now = NIODeadline.now()
            let due = state.withLock { s -> Bool? in
                if s.recoveries != seen { return nil }
                guard !s.probing, s.nextProbe <= now else { return false }
                s.probing = true
                return true
            }
            guard let due else { return true }
            if due {
                let found = await probe(endpoints(), until: deadline)
                state.withLock { s in
                    s.probing = false
                    s.nextProbe = NIODeadline.now() + Self.interval
                    if found != nil { s.recoveries &+= 1 }
                }
                if let found {
                    back(found)
                    return true
                }
            }
            guard NIODeadline.now() + Self.interval < deadline else { return false }
            try? await Task.sleep(for: .nanoseconds(Self.interval.nanoseconds))
        }
        return false
    }

    /// The first of `endpoints` that accepts a TCP connection (closed at once), trying them in order.
    private func probe(_ endpoints: [WorkerPool.Endpoint], until deadline: NIODeadline) async -> WorkerPool.Endpoint? {
        for endpoint in endpoints {
            let left = deadline - NIODeadline.now()
            guard left > .zero else { return nil }
            do {
                let channel = try await ClientBootstrap(group: group)
                    .connectTimeout(min(Self.connectTimeout, left))
                    .connect(host: endpoint.host, port: endpoint.port)
                    .get()
                channel.close(promise: nil)
                return endpoint
            } catch {
                continue
            }
        }
        return nil
    }
}
