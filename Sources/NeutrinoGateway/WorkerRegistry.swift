import Logging
import Metrics
import NeutrinoCore
import NeutrinoObservability
import Synchronization

/// The live set of workers, from their heartbeats: a worker is alive while it has been heard from within
/// `timeout`, and leaves at once when it says it is stopping (a draining worker takes no new work).
final class WorkerRegistry: Sendable {
    struct Entry: Sendable {
        var heartbeat: WorkerHeartbeat
        var lastSeen: Timestamp
        var lastSeenAt: ContinuousClock.Instant
    }

    let timeout: Duration
    private let logger: Logger
    private let entries = Mutex<[String: Entry]>([:])
    /// The highest restart count heard per worker slot, kept after the worker leaves (its supervisor restarts it under
    /// the same id), so `neutrino_worker_restarts_total` counts each restart once. Bounded against forged ids.
    private let restartsSeen = Mutex<[String: Int]>([:])
    static let maxRememberedSlots = 10_000

    init(timeout: Duration, logger: Logger) {
        self.timeout = timeout
        self.logger = logger
    }

    func apply(_ heartbeat: WorkerHeartbeat) {
        let key = "\(heartbeat.pool)/\(heartbeat.workerID)"
        let newRestarts = restartsSeen.withLock { seen -> Int in
            guard let before = seen[key] else {
                // First heard of since this gateway started: a baseline, not restarts to count.
                if seen.count < Self.maxRememberedSlots { seen[key] = heartbeat.restarts }
                return 0
            }
            guard heartbeat.restarts > before else { return 0 }
            seen[key] = heartbeat.restarts
            return heartbeat.restarts - before
        }
        if newRestarts > 0 {
            Counter(label: NeutrinoMetrics.workerRestarts, dimensions: [("pool", heartbeat.pool)]).increment(by: newRestarts)
            logger.notice(
                "worker restarted by its supervisor",
                metadata: [
                    "worker_id": "\(heartbeat.workerID)", "pool": "\(heartbeat.pool)",
                    "restarts": "\(heartbeat.restarts)",
                ])
        }
        let change: String? = entries.withLock { all in
            if heartbeat.stopping {
                return all.removeValue(forKey: key) == nil ? nil : "stopping"
            }
            let isNew = all[key] == nil
            all[key] = Entry(heartbeat: heartbeat, lastSeen: .now(), lastSeenAt: .now)
            return isNew ? "joined" : nil
        }
        if let change {
            logger.info(
                "worker \(change)",
                metadata: [
                    "worker_id": "\(heartbeat.workerID)", "pool": "\(heartbeat.pool)",
                    "mode": "\(heartbeat.mode)", "concurrency": "\(heartbeat.concurrency)",
                ])
        }
    }

    /// The workers alive now, by pool; forgets (and logs) those whose heartbeats stopped.
    func alive() -> [String: [Entry]] {
        let now = ContinuousClock.now
        let (live, expired) = entries.withLock { all -> ([String: [Entry]], [Entry]) in
            var expired: [Entry] = []
            for (key, entry) in all where now - entry.lastSeenAt > timeout {
                expired.append(entry)
                all.removeValue(forKey: key)
            }
            var live: [String: [Entry]] = [:]
            for entry in all.values { live[entry.heartbeat.pool, default: []].append(entry) }
            for pool in live.keys { live[pool]?.sort { $0.heartbeat.workerID < $1.heartbeat.workerID } }
            return (live, expired)
        }
        for entry in expired {
            logger.warning(
                "worker lost: no heartbeat",
                metadata: [
                    "worker_id": "\(entry.heartbeat.workerID)",
                    "pool": "\(entry.heartbeat.pool)", "timeout": "\(timeout)",
                ])
        }
        return live
    }
}
