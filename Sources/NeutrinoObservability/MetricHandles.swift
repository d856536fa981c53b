import Metrics
import Synchronization

/// Metric handles by key, made once and reused.
///
/// `Counter(label:dimensions:)` asks the metrics factory every time, and the Prometheus registry answers under its
/// lock after hashing the whole label set: on the sync path that was about 2 % of a request's CPU per process
/// (`perf`, bench/README.md). The label sets are bounded (task names from the manifest, statuses, routes, status
/// codes, API key ids); past `capacity` keys the cache stops growing and handles are made and not kept.
///
/// The metrics every sync call touches (requests by route and code, tasks by name, pool and status) have a cache of
/// their own keyed by a struct of their label values, which a lookup makes without allocating; `MetricHandles`
/// serves the rest by name and label set.
public final class HandleCache<Key: Hashable & Sendable, Handle: Sendable>: Sendable {
    static var capacity: Int { 4096 }
    private let handles = Mutex<[Key: Handle]>([:])
    private let make: @Sendable (Key) -> Handle

    public init(make: @escaping @Sendable (Key) -> Handle) { self.make = make }

    public func handle(_ key: Key) -> Handle {
        // Before bootstrapping, a handle would come from the factory in place then: not worth keeping.
        guard Observability.isBootstrapped else { return make(key) }
        if let cached = handles.withLock({ $0[key] }) { return cached }
        let made = make(key)
        handles.withLock { if $0.count < Self.capacity { $0[key] = made } }
        return made
    }
}

/// Counters and timers by metric name and label set (a `HandleCache` for each kind).
public enum MetricHandles {
    /// A metric's name and its labels, flattened (name, value, name, value, …).
    private struct Key: Hashable, Sendable {
        var label: String
        var flat: [String]

        init(_ label: String, _ dimensions: [(String, String)]) {
            self.label = label
            flat = []
            flat.reserveCapacity(dimensions.count * 2)
            for (name, value) in dimensions {
                flat.append(name)
                flat.append(value)
            }
        }

        var dimensions: [(String, String)] { stride(from: 0, to: flat.count - 1, by: 2).map { (flat[$0], flat[$0 + 1]) } }
    }

    private static let counters = HandleCache<Key, Counter> { Counter(label: $0.label, dimensions: $0.dimensions) }
    private static let timers = HandleCache<Key, Metrics.Timer> { Metrics.Timer(label: $0.label, dimensions: $0.dimensions) }

    /// The counter `label` with `dimensions` (made on first use).
    public static func counter(_ label: String, _ dimensions: [(String, String)]) -> Counter {
        counters.handle(Key(label, dimensions))
    }

    /// The timer `label` with `dimensions` (made on first use).
    public static func timer(_ label: String, _ dimensions: [(String, String)]) -> Metrics.Timer {
        timers.handle(Key(label, dimensions))
    }
}
