import FoundationEssentials
import Glibc
import Logging
import NeutrinoCore
import NeutrinoNATS
import ServiceLifecycle
import Synchronization

/// Announces this worker on `neutrino.heartbeat.<pool>` every `interval`: id, pool, mode, threads, busy threads,
/// GPU visibility, version, start time, and its HTTP address once it listens. A last heartbeat with
/// `stopping: true` tells the gateway at once that the worker drains.
///
/// As a `Service` it is the last of a worker's services, so the first to hear of a graceful shutdown: the gateway
/// stops routing to this worker before the server or the consumer starts draining.
final class HeartbeatPublisher: Service {
    private let connection: NATSConnection
    private let template: WorkerHeartbeat
    private let interval: Duration
    private let busy: @Sendable () -> (threads: Int, coroutines: Int)
    private let url = Mutex<String?>(nil)
    /// Set by `stopping()`: no regular heartbeat may follow the last one (it would put a draining worker back).
    private let stopped = Atomic<Bool>(false)
    private let logger: Logger

    /// `threads` and `coroutines`: what the worker runs at once of each kind; `busy` how many of each are taken.
    init(
        connection: NATSConnection, configuration: WorkerConfiguration, gpu: Bool, threads: Int, coroutines: Int,
        busy: @escaping @Sendable () -> (threads: Int, coroutines: Int), logger: Logger
    ) {
        self.connection = connection
        self.interval = configuration.heartbeatInterval
        self.busy = busy
        self.logger = logger
        var template = WorkerHeartbeat(
            workerID: configuration.workerID, pool: configuration.pool, mode: configuration.mode.rawValue,
            concurrency: threads, busy: 0, gpu: gpu, version: NeutrinoVersion.current, startedAt: .now(),
            host: ProcessInfo.processInfo.hostName, pid: Int(getpid()), url: nil)
        template.restarts = configuration.restarts
        template.coroutines = coroutines
        self.template = template
    }

    /// Records where the worker's HTTP server listens (`http://HOST:PORT`), and announces it at once (one heartbeat,
    /// not waiting for the next interval): gateways route sync calls to an HTTP worker from its first heartbeat
    /// with a URL.
    func listening(host: String, port: Int) {
        url.withLock { $0 = "http://\(host):\(port)" }
        Task { await self.publish(stopping: false) }
    }

    /// How often the loop looks whether the busy counts changed: a change is announced then, not at the next interval.
    static let changeCheck = Duration.milliseconds(100)

    /// Publishes every `interval` until the surrounding task is cancelled, and within `changeCheck` of a change in
    /// the busy counts. A count is a snapshot: with only the interval's, a worker that was busy when it last spoke
    /// stayed busy in the gateway's sum for up to an interval, so one caller whose calls alternate between two workers
    /// read as two busy threads and a pool never scaled in (at most one heartbeat per `changeCheck` this way).
    func beatLoop() async {
        let clock = ContinuousClock()
        var announced: (threads: Int, coroutines: Int)?
        var lastSent = clock.now
        while !Task.isCancelled && !stopped.load(ordering: .relaxed) {
            let taken = busy()
            if clock.now - lastSent >= interval || announced.map({ $0 != taken }) ?? true {
                announced = await publish(stopping: false)
                lastSent = clock.now
            }
            try? await Task.sleep(for: min(interval, Self.changeCheck))
        }
    }

    /// The last heartbeat: the worker is draining and takes no new work. Later calls send nothing.
    func stopping() async {
        guard !stopped.exchange(true, ordering: .relaxed) else { return }
        await publish(stopping: true)
    }

    /// Sends one heartbeat; returns the busy counts it carried.
    @discardableResult
    private func publish(stopping: Bool) async -> (threads: Int, coroutines: Int)? {
        if !stopping && stopped.load(ordering: .relaxed) { return nil }
        var beat = template
        let taken = busy()
        beat.busy = taken.threads
        beat.busyCoroutines = taken.coroutines
        beat.url = url.withLock { $0 }
        beat.stopping = stopping
        do {
            try await connection.publish(subject: WorkerHeartbeat.subject(pool: beat.pool), data: beat.json)
        } catch {
            logger.debug("heartbeat not sent", metadata: ["error": "\(error)"])
        }
        return taken
    }
}

extension HeartbeatPublisher {
    func run() async throws {
        await cancelWhenGracefulShutdown { await self.beatLoop() }
        await stopping()
    }
}
