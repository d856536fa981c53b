import Logging
import NeutrinoCore
import NeutrinoNATS
import NeutrinoObservability
import NeutrinoTaskLog
import Synchronization

/// Keeps the gateway's view of every pool: queue depth from JetStream consumer info, workers from heartbeats,
/// running tasks and the last minute's outcomes from the task log, and the replica count the scaling policy wants.
/// One refresh a second for all pools (the task-log statistics every other second), whatever the request rate:
/// `GET /pools` and `/metrics` read the last snapshot and never query NATS or SQLite themselves.
final class PoolMonitor: Sendable {
    struct QueueState: Sendable {
        var pending: Int
        var inFlight: Int
        var redelivered: Int
        var depth: Int { pending + inFlight }
    }

    private struct State: Sendable {
        var recommenders: [String: ScalingRecommender]
        /// The last consumer info read per pool, and which pools it could be read for in the last refresh.
        var queues: [String: QueueState] = [:]
        var queuesAvailable: Set<String> = []
        var stats: [String: PoolTaskStats] = [:]
        /// The window's outcomes, and the task-event row they were read up to (nil until the first full read).
        var outcomes = RecentOutcomes(window: PoolMonitor.window)
        var outcomeCursor: Int64?
        var dlqMessages: Int?
        var snapshot: [UInt8] = Array(#"{"pools":[]}"#.utf8)
        var tick = 0
    }

    let pools: [String: ExecutionMode]
    let registry: WorkerRegistry
    private let queue: GatewayQueue?
    private let reader: TaskLogReader?
    private let staticPools: [String: WorkerPool]
    private let logger: Logger
    private let state: Mutex<State>
    /// The span of `last_minute` in `/pools`.
    static let window = Duration.seconds(60)

    init(
        pools: [String: ExecutionMode], policies: [String: ScalingPolicy], registry: WorkerRegistry, queue: GatewayQueue?,
        reader: TaskLogReader?, staticPools: [String: WorkerPool], logger: Logger
    ) {
        self.pools = pools
        self.registry = registry
        self.queue = queue
        self.reader = reader
        self.staticPools = staticPools
        self.logger = logger
        var recommenders: [String: ScalingRecommender] = [:]
        for (pool, mode) in pools {
            recommenders[pool] = ScalingRecommender(policy: policies[pool] ?? ScalingPolicy.defaults(for: mode))
        }
        state = Mutex(State(recommenders: recommenders))
    }

    /// The last `GET /pools` body.
    var snapshot: [UInt8] { state.withLock { $0.snapshot } }

    /// Refreshes once a second until the surrounding task is cancelled.
    func refreshLoop() async {
        while !Task.isCancelled {
            await refresh()
            try? await Task.sleep(for: .seconds(1))
        }
    }

    func refresh() async {
        var queues: [String: QueueState] = [:]
        var dlq: Int?
        if let queue, queue.isConnected {
            for (pool, mode) in pools where mode.isQueued {
                if let info = try? await queue.js.consumerInfo(stream: QueueLayout.tasksStream, consumer: QueueLayout.consumer(pool: pool)) {
                    queues[pool] = QueueState(
                        pending: Int(info.numPending), inFlight: max(0, info.numAckPending),
                        redelivered: max(0, info.numRedelivered))
                }
            }
            dlq = (try? await queue.js.streamInfo(stream: QueueLayout.deadLetterStream)).map { Int($0.messages) }
        }
        let tick = state.withLock { s -> Int in
            s.tick += 1; return s.tick
        }
        var stats: [String: PoolTaskStats]?
        if let reader, tick % 2 == 1 {
            do {
                stats = try await readStats(reader)
            } catch {
                logger.warning("pool statistics query failed", metadata: ["error": "\(error)"])
            }
        }
        let workers = registry.alive()
        let now = Timestamp.now()
        state.withLock { s in
            s.queues.merge(queues) { _, new in new }
            s.queuesAvailable = Set(queues.keys)
            if let stats { s.stats = stats }
            if let dlq { s.dlqMessages = dlq }
            s.snapshot = render(&s, workers: workers, now: now)
        }
    }

    /// Running and queued tasks, and the last minute's outcomes: the whole window read once, then only the outcomes
    /// committed since the previous read (`RecentOutcomes`), so a refresh costs what arrived, not the window's size.
    private func readStats(_ reader: TaskLogReader) async throws -> [String: PoolTaskStats] {
        var (outcomes, cursor) = state.withLock { ($0.outcomes, $0.outcomeCursor) }
        var stats = try await reader.poolQueueStats()
        // A bounded catch-up per refresh; what is left is read at the next one.
        var pages = 0
        while let start = cursor, pages < Self.maxOutcomePages {
            let read = try await reader.outcomes(afterEventID: start)
            pages += 1
            // A cursor that went back: the log was replaced by an older or empty one, and the window is read whole.
            guard read.cursor >= start else {
                cursor = nil
                break
            }
            let now = Timestamp.now()
            for outcome in read.outcomes { outcomes.add(outcome, now: now) }
            cursor = read.cursor
            if !read.more { break }
        }
        let now = Timestamp.now()
        if cursor == nil {
            let read = try await reader.outcomes(since: Timestamp(millis: now.millis - Self.window.wholeMilliseconds))
            outcomes = RecentOutcomes(window: Self.window)
            for outcome in read.outcomes { outcomes.add(outcome, now: now) }
            cursor = read.cursor
        }
        outcomes.expire(now: now)
        outcomes.summarize(now: now, into: &stats)
        state.withLock { s in
            s.outcomes = outcomes
            s.outcomeCursor = cursor
        }
        return stats
    }

    /// The most pages of new task events (`TaskLogReader.outcomes(afterEventID:)`, 50,000 rows each) one refresh reads.
    static let maxOutcomePages = 8

    private func render(_ s: inout State, workers: [String: [WorkerRegistry.Entry]], now: Timestamp) -> [UInt8] {
        var w = JSONWriter(capacity: 2048)
        w.beginObject()
        w.key("updated_at"); w.string(now.iso8601)
        w.key("pools")
        w.beginArray()
        for pool in pools.keys.sorted() {
            guard let mode = pools[pool], var recommender = s.recommenders[pool] else { continue }
            let live = workers[pool] ?? []
            let stats = s.stats[pool] ?? PoolTaskStats()
            let queue = s.queues[pool]
            // Workers that send no heartbeat (an HTTP worker started without --nats) still count when reachable.
            let replicas = live.isEmpty ? (staticPools[pool]?.healthyCount ?? 0) : live.count
            // Threads and coroutine slots are separate capacities: the pool scales on whichever is busier.
            let threadsBusy = live.reduce(0) { $0 + $1.heartbeat.busy }
            let threads = live.reduce(0) { $0 + $1.heartbeat.concurrency }
            let coroutinesBusy = live.reduce(0) { $0 + $1.heartbeat.busyCoroutines }
            let coroutines = live.reduce(0) { $0 + $1.heartbeat.coroutines }
            let coroutinesBusier =
                coroutines > 0 && Double(coroutinesBusy) * Double(max(1, threads)) > Double(threadsBusy) * Double(coroutines)
            let busy = coroutinesBusier ? coroutinesBusy : threadsBusy
            let slots = coroutinesBusier ? coroutines : threads
            let waiting = staticPools[pool]?.waitingCalls
            let inputs = ScalingPolicy.Inputs(
                pending: queue?.pending ?? 0, inFlight: queue?.inFlight ?? 0, replicas: replicas,
                busySlots: busy, totalSlots: slots, waiting: waiting ?? 0)
            let (recommended, reason) = recommender.policy.recommend(inputs)
            let lastBefore = recommender.decisions.last
            let desired = recommender.observe(recommended, reason: reason, now: now)
            if let d = recommender.decisions.last, d != lastBefore {
                logger.notice("scaling decision", metadata: ["pool": "\(pool)", "from": "\(d.from)", "to": "\(d.to)", "reason": "\(d.reason)"])
            }
            s.recommenders[pool] = recommender
            let oldestAge = stats.oldestQueued.map { max(0, Double(now.millis - $0.millis) / 1000) }

            let labels = [("pool", pool)]
            NeutrinoMetrics.gauge(NeutrinoMetrics.workersAlive, labels, Double(replicas))
            if let waiting { NeutrinoMetrics.gauge(NeutrinoMetrics.poolWaitingCalls, labels, Double(waiting)) }
            NeutrinoMetrics.gauge(NeutrinoMetrics.desiredReplicas, labels, Double(desired))
            if let queue {
                NeutrinoMetrics.gauge(NeutrinoMetrics.queuePending, labels, Double(queue.pending))
                NeutrinoMetrics.gauge(NeutrinoMetrics.queueInFlight, labels, Double(queue.inFlight))
                NeutrinoMetrics.gauge(NeutrinoMetrics.queueRedelivered, labels, Double(queue.redelivered))
                NeutrinoMetrics.gauge(NeutrinoMetrics.queueDepth, labels, Double(queue.depth))
                NeutrinoMetrics.gauge(NeutrinoMetrics.queueOldestAge, labels, oldestAge ?? 0)
            }

            w.beginObject()
            w.key("name"); w.string(pool)
            w.key("mode"); w.string(mode.rawValue)
            w.key("queue")
            if mode.isQueued {
                w.beginObject()
                w.key("pending"); w.int(queue?.pending ?? 0)
                w.key("in_flight"); w.int(queue?.inFlight ?? 0)
                w.key("redelivered"); w.int(queue?.redelivered ?? 0)
                w.key("depth"); w.int(queue?.depth ?? 0)
                w.key("oldest_queued_age_seconds"); if let oldestAge { w.double(oldestAge) } else { w.null() }
                w.key("consumer"); w.string(QueueLayout.consumer(pool: pool))
                w.key("stream"); w.string(QueueLayout.tasksStream)
                w.key("available"); w.bool(s.queuesAvailable.contains(pool))
                w.endObject()
            } else {
                w.null()
            }
            w.key("running"); w.int(stats.running)
            w.key("workers_alive"); w.int(replicas)
            w.key("waiting_calls"); if let waiting { w.int(waiting) } else { w.null() }
            w.key("restarts"); w.int(live.reduce(0) { $0.addingReportingOverflow($1.heartbeat.restarts).partialValue })
            w.key("workers")
            w.beginArray()
            for entry in live {
                let hb = entry.heartbeat
                w.beginObject()
                w.key("worker_id"); w.string(hb.workerID)
                w.key("mode"); w.string(hb.mode)
                w.key("concurrency"); w.int(hb.concurrency)
                w.key("busy"); w.int(hb.busy)
                w.key("coroutines"); w.int(hb.coroutines)
                w.key("busy_coroutines"); w.int(hb.busyCoroutines)
                w.key("gpu"); w.bool(hb.gpu)
                w.key("version"); w.string(hb.version)
                w.key("started_at"); w.string(hb.startedAt.iso8601)
                w.key("last_seen"); w.string(entry.lastSeen.iso8601)
                w.key("host"); w.string(hb.host)
                w.key("pid"); w.int(hb.pid)
                w.key("url"); w.stringOrNull(hb.url)
                w.key("restarts"); w.int(hb.restarts)
                w.endObject()
            }
            w.endArray()
            w.key("last_minute")
            w.beginObject()
            w.key("completed"); w.int(stats.completed)
            w.key("failed"); w.int(stats.failed)
            w.key("p50_ms"); if let v = stats.p50Ms { w.double(v) } else { w.null() }
            w.key("p95_ms"); if let v = stats.p95Ms { w.double(v) } else { w.null() }
            w.key("per_second"); w.double(Double(stats.completed + stats.failed) * 1000 / Double(Self.window.wholeMilliseconds))
            w.endObject()
            let policy = recommender.policy
            w.key("scaling")
            w.beginObject()
            w.key("signal"); w.string(policy.signal.rawValue)
            w.key("min"); w.int(policy.min)
            w.key("max"); w.int(policy.max)
            w.key("target"); w.double(policy.target)
            w.key("down_window_seconds"); w.double(Double(policy.downWindow.wholeMilliseconds) / 1000)
            w.key("scale_to_zero"); w.bool(policy.scaleToZero)
            w.key("current"); w.int(replicas)
            w.key("recommended"); w.int(recommended)
            w.key("desired"); w.int(desired)
            w.key("reason"); w.string(reason)
            w.key("decisions")
            w.beginArray()
            for d in recommender.decisions.reversed() {
                w.beginObject()
                w.key("at"); w.string(d.at.iso8601)
                w.key("from"); w.int(d.from)
                w.key("to"); w.int(d.to)
                w.key("reason"); w.string(d.reason)
                w.endObject()
            }
            w.endArray()
            w.endObject()
            w.endObject()
        }
        w.endArray()
        w.key("dlq")
        w.beginObject()
        w.key("messages"); if let d = s.dlqMessages { w.int(d) } else { w.null() }
        w.endObject()
        w.endObject()
        if let d = s.dlqMessages { NeutrinoMetrics.gauge(NeutrinoMetrics.dlqDepth, [], Double(d)) }
        return w.bytes
    }
}
