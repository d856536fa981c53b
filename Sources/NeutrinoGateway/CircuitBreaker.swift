import NeutrinoCore

/// Per-worker circuit breaker. A worker that refuses connections is skipped for a backoff that doubles with
/// each consecutive failure (0.5 s up to 30 s); when the backoff ends one request tries it again (half-open),
/// and a success closes the circuit.
public struct CircuitBreaker: Sendable, Hashable {
    public private(set) var consecutiveFailures = 0
    public private(set) var openUntil: Timestamp?
    public static let baseBackoffMs: Int64 = 500
    public static let maxBackoffMs: Int64 = 30_000

    public init() {}

    public var isOpen: Bool { openUntil != nil }

    /// Whether a request may go to this worker now. Taking the half-open trial pushes the reopening forward,
    /// so concurrent requests do not all pile onto a worker that may still be down.
    public mutating func allowRequest(now: Timestamp) -> Bool {
        guard let until = openUntil else { return true }
        guard now >= until else { return false }
        openUntil = Timestamp(millis: now.millis + backoffMs)
        return true
    }

    public mutating func recordSuccess() {
        consecutiveFailures = 0
        openUntil = nil
    }

    public mutating func recordFailure(now: Timestamp) {
        consecutiveFailures += 1
        openUntil = Timestamp(millis: now.millis + backoffMs)
    }

    var backoffMs: Int64 {
        let shift = min(max(consecutiveFailures - 1, 0), 16)
        return min(CircuitBreaker.maxBackoffMs, CircuitBreaker.baseBackoffMs << Int64(shift))
    }
}
