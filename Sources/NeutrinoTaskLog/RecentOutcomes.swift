import Glibc
import NeutrinoCore

/// One task outcome read from the task log: its pool, whether it failed (`failed`, `timed_out`), how long it ran,
/// and when it ended.
public struct TaskOutcome: Sendable, Hashable {
    public var pool: String
    public var failed: Bool
    public var durationMs: Double?
    public var at: Timestamp

    public init(pool: String, failed: Bool, durationMs: Double?, at: Timestamp) {
        self.pool = pool
        self.failed = failed
        self.durationMs = durationMs
        self.at = at
    }
}

/// Outcomes read from the task log, and the task-event row id to go on reading after.
public struct TaskOutcomes: Sendable {
    public var outcomes: [TaskOutcome]
    /// The event row id this read covered up to: the next read asks for what was committed after it.
    public var cursor: Int64
    /// Whether events committed after `cursor` were left for the next read (the read stopped at its limit).
    public var more: Bool
}

/// The recent window's outcomes per pool, kept in memory (`GET /pools`' `last_minute`): counts and a duration
/// histogram in one bucket per second, fed with the outcomes committed since the previous look, so a refresh reads
/// each outcome once instead of every outcome of the window again (at 5,000 calls a second that was 300,000 rows a
/// refresh). Buckets older than the window are dropped as it moves.
///
/// The percentiles come from a log-scale histogram (64 bins per doubling): each is the middle of the bin that holds
/// the nearest-rank value, within 0.55 % of it. Memory is bounded by the window's seconds × the distinct bins used.
public struct RecentOutcomes: Sendable {
    private struct Bucket: Sendable {
        var completed = 0
        var failed = 0
        /// Histogram bin → outcomes with a duration in it.
        var durations: [Int32: Int] = [:]

        mutating func add(_ outcome: TaskOutcome) {
            if outcome.failed { failed += 1 } else { completed += 1 }
            if let d = outcome.durationMs { durations[RecentOutcomes.bin(d), default: 0] += 1 }
        }
    }

    public let window: Duration
    /// Pool → second (Unix time) → that second's outcomes.
    private var buckets: [String: [Int64: Bucket]] = [:]

    public init(window: Duration) { self.window = window }

    static let binsPerDoubling = 64.0
    /// Durations are clamped to [1 ns, ~11.6 days] before binning; zero and below share one bin.
    static let zeroBin = Int32.min

    static func bin(_ durationMs: Double) -> Int32 {
        guard durationMs > 0, durationMs.isFinite else { return durationMs.isInfinite ? bin(1e9) : zeroBin }
        let clamped = min(max(durationMs, 1e-6), 1e9)
        return Int32((log2(clamped) * binsPerDoubling).rounded(.down))
    }

    /// The middle of a bin (geometric), the value a percentile in it is reported as.
    static func value(ofBin bin: Int32) -> Double {
        bin == zeroBin ? 0 : exp2((Double(bin) + 0.5) / binsPerDoubling)
    }

    private func firstSecond(now: Timestamp) -> Int64 {
        (now.millis - window.wholeMilliseconds) / 1000
    }

    /// Adds an outcome; one that ended before the window is ignored, one stamped later than `now` (another host's
    /// clock) counts as now.
    public mutating func add(_ outcome: TaskOutcome, now: Timestamp) {
        let second = min(outcome.at.millis, now.millis) / 1000
        guard second >= firstSecond(now: now) else { return }
        // In place: a copy of the bucket taken out and put back would copy its histogram on every outcome.
        buckets[outcome.pool, default: [:]][second, default: Bucket()].add(outcome)
    }

    /// Drops the seconds that left the window.
    public mutating func expire(now: Timestamp) {
        let first = firstSecond(now: now)
        for pool in Array(buckets.keys) {
            buckets[pool] = buckets[pool]?.filter { $0.key >= first }
            if buckets[pool]?.isEmpty == true { buckets[pool] = nil }
        }
    }

    /// Sets the outcome fields (completed and failed counts, p50 and p95 of the durations) of every pool with
    /// outcomes in the window; the other fields of `stats` are left as they are.
    public func summarize(now: Timestamp, into stats: inout [String: PoolTaskStats]) {
        let first = firstSecond(now: now)
        for (pool, seconds) in buckets {
            var completed = 0
            var failed = 0
            var histogram: [Int32: Int] = [:]
            for (second, bucket) in seconds where second >= first {
                completed += bucket.completed
                failed += bucket.failed
                histogram.merge(bucket.durations, uniquingKeysWith: +)
            }
            guard completed + failed > 0 else { continue }
            let bins = histogram.sorted { $0.key < $1.key }
            let total = bins.reduce(0) { $0 + $1.value }
            var entry = stats[pool] ?? PoolTaskStats()
            entry.completed = completed
            entry.failed = failed
            entry.p50Ms = total > 0 ? Self.percentile(bins, total: total, 0.50) : nil
            entry.p95Ms = total > 0 ? Self.percentile(bins, total: total, 0.95) : nil
            stats[pool] = entry
        }
    }

    /// Nearest rank over ascending bins holding `total` values.
    private static func percentile(_ bins: [(key: Int32, value: Int)], total: Int, _ p: Double) -> Double? {
        let rank = max(1, Int((p * Double(total)).rounded(.up)))
        var seen = 0
        for (bin, count) in bins {
            seen += count
            if seen >= rank { return value(ofBin: bin) }
        }
        return bins.last.map { value(ofBin: $0.key) }
    }
}
