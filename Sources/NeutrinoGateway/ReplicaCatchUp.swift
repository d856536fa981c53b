import FoundationEssentials
import NeutrinoCore
import NeutrinoHTTP
import Synchronization

/// Read-your-writes across gateway replicas (`--events-via-nats`). Each replica commits the others' events from
/// NEUTRINO_EVENTS a moment after they happen, so a poll that lands on replica B right after replica A accepted a task
/// may find nothing in B's file yet. Task ids are UUIDv7: their first 48 bits say when the task was made. A lookup
/// that finds no task whose id is younger than `lagBound` therefore waits, polling this replica's file, until the
/// task arrives or the id is `lagBound` old, and only then answers 404. An id older than that, an id from the future
/// beyond it (a clock far off), or any lookup on a gateway that is alone answers at once.
///
/// At most `maxWaiting` requests wait at once (each polls the file up to every 50 ms): more get `Full`, answered 503
/// with Retry-After rather than a 404 for a task that may exist.
struct ReplicaCatchUp: Sendable {
    /// How long an event published by one replica may take to be committed by another; zero: no waiting.
    let lagBound: Duration
    /// The longest pause between two lookups while waiting.
    var maxPause = Duration.milliseconds(50)
    let maxWaiting: Int
    private let waiting = WaitingCount()

    struct Full: Error {}

    init(lagBound: Duration, maxWaiting: Int = 1000) {
        self.lagBound = lagBound
        self.maxWaiting = max(1, maxWaiting)
    }

    static let none = ReplicaCatchUp(lagBound: .zero)

    /// How long a lookup of `id` that found nothing may still wait, or nil if it must answer now.
    func budget(for id: String, now: Date = Date()) -> Duration? {
        guard lagBound > .zero, let made = TaskID.millis(id) else { return nil }
        let bound = lagBound.wholeMilliseconds
        let nowMillis = Int64(max(0, now.timeIntervalSince1970 * 1000))
        let (age, overflow) = nowMillis.subtractingReportingOverflow(Int64(clamping: made))
        guard !overflow, age > -bound, age < bound else { return nil }
        return .milliseconds(bound - max(age, 0))
    }

    /// `lookup()`, repeated with growing pauses while it finds nothing and `budget(for: id)` allows (or until the
    /// calling task is cancelled). Errors of `lookup` end the wait; `Full` when `maxWaiting` requests already wait.
    func find<T>(_ id: String, _ lookup: () async throws -> T?) async throws -> T? {
        if let found = try await lookup() { return found }
        guard let budget = budget(for: id) else { return nil }
        guard waiting.enter(limit: maxWaiting) else {
            HTTPRejections.count("replica_catchup")
            throw Full()
        }
        defer { waiting.leave() }
        let clock = ContinuousClock()
        let deadline = clock.now + budget
        var pause = Duration.milliseconds(2)
        while clock.now < deadline, !Task.isCancelled {
            try? await Task.sleep(for: min(pause, deadline - clock.now))
            if let found = try await lookup() { return found }
            pause = min(pause * 2, maxPause)
        }
        return nil
    }
}

/// Requests waiting in `ReplicaCatchUp.find` now.
final class WaitingCount: Sendable {
    private let count = Atomic<Int>(0)

    func enter(limit: Int) -> Bool {
        if count.wrappingAdd(1, ordering: .relaxed).newValue > limit {
            count.wrappingSubtract(1, ordering: .relaxed)
            return false
        }
        return true
    }

    func leave() { count.wrappingSubtract(1, ordering: .relaxed) }
}
