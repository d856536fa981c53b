import Synchronization

/// Per-key limits, in this gateway's memory: a token bucket of requests per second, and the count of tasks this
/// gateway accepted for the key that have not ended yet (`max_in_flight`).
///
/// The in-flight count is per gateway process: replicas each count their own, a restart forgets it, and a task
/// accepted before a reload that lowered the limit still counts. A task leaves the count when its sync answer is
/// sent or when `InFlightReaper` reads a terminal status for it in the task log (within a second).
public final class KeyLimits: Sendable {
    public enum Decision: Sendable, Equatable {
        case allowed
        /// Over the rate: retry after this many whole seconds (when one token will be back).
        case overRate(retryAfter: Int, rate: Double, burst: Double)
        case overInFlight(limit: Int, inFlight: Int)
    }

    private struct Bucket {
        var tokens: Double
        var last: ContinuousClock.Instant
        var rate: Double
        var burst: Double
    }

    private struct State {
        var buckets: [String: Bucket] = [:]
        var inFlight: [String: Int] = [:]
        /// Accepted tasks not yet seen ending → key id.
        var tracked: [String: String] = [:]
    }

    private let state = Mutex(State())
    private let defaultRate: Double?

    public init(defaultRate: Double?) { self.defaultRate = defaultRate }

    /// The rate and burst in force for `key`, nil when unlimited.
    func rate(of key: APIKey) -> (rate: Double, burst: Double)? {
        guard let rate = key.ratePerSecond ?? defaultRate else { return nil }
        return (rate, max(1, key.burst ?? rate.rounded(.up)))
    }

    /// Takes one token from the key's bucket.
    public func take(_ key: APIKey, now: ContinuousClock.Instant = .now) -> Decision {
        guard let (rate, burst) = rate(of: key) else { return .allowed }
        return state.withLock { s in
            var b = s.buckets[key.id] ?? Bucket(tokens: burst, last: now, rate: rate, burst: burst)
            if b.rate != rate || b.burst != burst { b.rate = rate; b.burst = burst }
            let elapsed = now - b.last
            let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) * 1e-18
            b.tokens = min(burst, b.tokens + max(0, seconds) * rate)
            b.last = now
            defer { s.buckets[key.id] = b }
            if b.tokens >= 1 {
                b.tokens -= 1
                return .allowed
            }
            return .overRate(retryAfter: max(1, Int(((1 - b.tokens) / rate).rounded(.up))), rate: rate, burst: burst)
        }
    }

    /// Counts one more task for the key, unless that would pass its `max_in_flight`.
    public func reserve(_ key: APIKey) -> Decision {
        state.withLock { s in
            let current = s.inFlight[key.id, default: 0]
            if let limit = key.maxInFlight, current >= limit { return .overInFlight(limit: limit, inFlight: current) }
            s.inFlight[key.id] = current + 1
            return .allowed
        }
    }

    /// Ends a reservation: `acceptedTaskID` is the id of a task that is still queued (it stays counted until it
    /// ends); nil when the request's answer was final (a sync result, a refusal).
    public func settle(keyID: String, acceptedTaskID: String?) {
        state.withLock { s in
            if let id = acceptedTaskID, s.tracked[id] == nil {
                s.tracked[id] = keyID
            } else {
                s.inFlight[keyID] = max(0, s.inFlight[keyID, default: 0] - 1)
            }
        }
    }

    /// A counted task ended.
    public func finished(taskID: String) {
        state.withLock { s in
            guard let keyID = s.tracked.removeValue(forKey: taskID) else { return }
            s.inFlight[keyID] = max(0, s.inFlight[keyID, default: 0] - 1)
        }
    }

    public var trackedTaskIDs: [String] { state.withLock { Array($0.tracked.keys) } }
    public func inFlight(keyID: String) -> Int { state.withLock { $0.inFlight[keyID, default: 0] } }
}
