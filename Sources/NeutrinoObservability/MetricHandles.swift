import Metrics
import Synchronization

/// Counters and timers by label and dimension values, made once and reused.
///
/// `Counter(label:dimensions:)` asks the metrics factory every time, and the Prometheus registry answers under its
/// lock after hashing the whole label set: on the sync path that was about 2 % of a request's CPU per process
/// (`perf`, bench/README.md). The label sets here are bounded (task names from the manifest, statuses, routes,
/// status codes); past `capacity` handles the cache stops growing and falls back to the factory.
public enum MetricHandles {
    private struct Key: Hashable {
        var label: String
        var values: [String]
    }

    private static let counters = Mutex<[Key: Counter]>([:])
    private static let timers = Mutex<[Key: Metrics.Timer]>([:])
    static let capacity = 4096

    /// The counter `label` with `dimensions` (made on first use).
    public static func counter(_ label: String, _ dimensions: [(String, String)]) -> Counter {
        guard Observability.isBootstrapped else { return Counter(label: label, dimensions: dimensions) }
        let key = Key(label: label, values: dimensions.map(\.1))
        if let cached = counters.withLock({ $0[key] }) { return cached }
        let made = Counter(label: label, dimensions: dimensions)
        counters.withLock { if $0.count < capacity { $0[key] = made } }
        return made
    }

    /// The timer `label` with `dimensions` (made on first use).
    public static func timer(_ label: String, _ dimensions: [(String, String)]) -> Metrics.Timer {
        guard Observability.isBootstrapped else { return Metrics.Timer(label: label, dimensions: dimensions) }
        let key = Key(label: label, values: dimensions.map(\.1))
        if let cached = timers.withLock({ $0[key] }) { return cached }
        let made = Metrics.Timer(label: label, dimensions: dimensions)
        timers.withLock { if $0.count < capacity { $0[key] = made } }
        return made
    }
}

/// Handles by a key the caller makes without allocating (a struct of the label values), for the metrics every call
/// touches (requests by route and code, tasks by name, pool and status): `MetricHandles` builds two arrays and hashes
/// the metric's name with its values on each lookup, which with four lookups a sync call was about 1 % of the
/// gateway's CPU. Bounded like `MetricHandles` (past `capacity` keys, handles are made and not kept).
public final class HandleCache<Key: Hashable & Sendable, Handle: Sendable>: Sendable {
    private let handles = Mutex<[Key: Handle]>([:])
    private let make: @Sendable (Key) -> Handle

    public init(make: @escaping @Sendable (Key) -> Handle) { self.make = make }

    public func handle(_ key: Key) -> Handle {
        // Before bootstrapping, a handle would come from the factory in place then: not worth keeping.
        guard Observability.isBootstrapped else { return make(key) }
        if let cached = handles.withLock({ $0[key] }) { return cached }
        let made = make(key)
        handles.withLock { if $0.count < MetricHandles.capacity { $0[key] = made } }
        return made
    }
}
