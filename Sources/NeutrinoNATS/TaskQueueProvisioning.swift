import Logging
import NeutrinoCore

/// Creates (idempotently) what the JetStream path needs: the work-queue stream with a subject per queued pool,
/// the dead-letter and settled streams, and each pool's durable pull consumer. The streams get the JetStream
/// context's replica count (`JetStream.replication`, from `--stream-replicas`); the consumers inherit their
/// stream's. The gateway provisions every pool of its manifest
/// and each worker its own, so whichever starts first, the consumer exists before anyone needs it (KEDA needs it
/// to exist with zero workers, too).
public enum TaskQueueProvisioning {
    /// `pools`: pool name → the most attempts any of its tasks allows (`retries + 1`).
    public static func ensure(_ js: JetStream, pools: [String: Int], ackWait: Duration, logger: Logger) async throws {
        let wanted = Set(pools.keys.map { QueueLayout.streamSubject(pool: $0) })
        // Several processes may add pools at once: merge with what the stream has, update, and check again.
        for round in 0..<5 {
            let existing: Set<String>
            do {
                existing = Set(try await js.streamInfo(stream: QueueLayout.tasksStream).subjects)
            } catch let error as NATSError where error.isNotFound {
                existing = []
            }
            if wanted.isSubset(of: existing) && !existing.isEmpty { break }
            try await js.ensureStream(
                name: QueueLayout.tasksStream, subjects: Array(existing.union(wanted)).sorted(),
                retention: .workQueue, duplicateWindow: .seconds(120))
            if round == 4 { logger.warning("the tasks stream's subjects keep changing under concurrent provisioning") }
        }
        try await js.ensureStream(
            name: QueueLayout.deadLetterStream, subjects: [QueueLayout.deadLetterSubjects],
            retention: .limits, duplicateWindow: .seconds(120))
        try await js.ensureStream(
            name: QueueLayout.settledStream, subjects: [QueueLayout.settledSubjects],
            retention: .limits, duplicateWindow: .seconds(120), maxAge: .seconds(24 * 3600))
        for (pool, maxDeliver) in pools.sorted(by: { $0.key < $1.key }) {
            try await js.ensureConsumer(
                stream: QueueLayout.tasksStream, durable: QueueLayout.consumer(pool: pool),
                filterSubject: QueueLayout.filterSubject(pool: pool), ackWait: ackWait,
                maxDeliver: max(1, maxDeliver) + 1)
        }
        logger.info(
            "JetStream provisioned",
            metadata: [
                "pools": "\(pools.keys.sorted().joined(separator: ","))",
                "replicas": "\(js.replication)",
            ])
    }
}
