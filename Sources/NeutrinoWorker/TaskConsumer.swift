import FoundationEssentials
import Logging
import NeutrinoCore
import NeutrinoHTTP
import NeutrinoNATS
import ServiceLifecycle
import Synchronization

/// The NATS worker's consumer loop, a `Service` in the shape of swift-jobs' `JobQueueProcessor`: a task group holds
/// at most `--concurrency` running messages; a fetch asks only for as many as are free (no prefetch, so a slow task
/// never holds others back), and waiting for a free one is `group.next()`, not a poll.
///
/// Graceful shutdown (SIGTERM/SIGINT) drains: no more fetches; the running tasks get `--drain-grace` (a timer child
/// races them); what still runs then is handed back to the queue (nak) and its Python thread abandoned.
struct TaskConsumer: Service {
    let worker: NATSWorker
    let natsURL: String
    let js: JetStream

    private enum ChildResult: Sendable {
        case settled
        case drainStarted
        case graceExpired
    }

    func run() async throws {
        let (drainSignal, drainStarted) = AsyncStream<Void>.makeStream()
        await withGracefulShutdownHandler {
            guard let subscription = await subscribe() else { return }
            defer { subscription.close() }
            printForSupervisor(
                "consuming \(QueueLayout.consumer(pool: worker.configuration.pool)) from \(NATSServers.redacted(natsURL))")
            await consume(subscription, drainSignal: drainSignal)
        } onGracefulShutdown: {
            worker.beginDrain()
            drainStarted.finish()
        }
        worker.logger.notice("worker stopped taking tasks")
        // A recycle ends the loop before the group's graceful shutdown reaches this service: a service that returns
        // early would end the group with an error, so wait for the shutdown (it returns at once if it has begun).
        try? await gracefulShutdown()
    }

    /// Provisions this pool's consumer and subscribes, retrying every 0.5 s while NATS is unreachable (a pod may
    /// start before the NATS StatefulSet). A worker logged in as a NATS user provisions nothing (its user may not
    /// change streams, see `neutrino.natsauth`): it binds to the consumer the gateway provisioned, waiting for it.
    /// Nil when the worker is told to stop first.
    private func subscribe() async -> PullSubscription? {
        let pool = worker.configuration.pool
        let maxDeliver = QueueLayout.maxDeliver(retries: worker.specs.values.map(\.retries))
        var attempt = 0
        while !worker.isDraining && !Task.isCancelled {
            do {
                if worker.configuration.natsAuth.user == nil {
                    try await TaskQueueProvisioning.ensure(
                        js, pools: [pool: maxDeliver], ackWait: worker.configuration.ackWait,
                        logger: worker.logger)
                }
                return try await js.pullSubscribe(stream: QueueLayout.tasksStream, consumer: QueueLayout.consumer(pool: pool))
            } catch {
                if attempt % 20 == 0 { worker.logger.warning("cannot provision or subscribe yet; retrying", metadata: ["error": "\(error)"]) }
                attempt += 1
                try? await Task.sleep(for: .milliseconds(500))
            }
        }
        worker.logger.notice("stopped before NATS was reachable")
        return nil
    }

    private func consume(_ subscription: PullSubscription, drainSignal: AsyncStream<Void>) async {
        // Threads plus coroutine slots: a pool with async def tasks holds more messages than it has threads.
        let concurrency = worker.executor.slots
        /// Messages being handled; a child lowers it just before it returns, so `concurrency - running` is free.
        let running = RunningCount()
        await withTaskGroup(of: ChildResult.self) { group in
            group.addTask {
                for await _ in drainSignal {}
                return .drainStarted
            }
            while !worker.isDraining && !Task.isCancelled {
                if running.value >= concurrency {
                    // Every thread is busy: wait for one to settle (or for the drain).
                    _ = await group.next()
                    continue
                }
                // No pull requests while disconnected: cnats would buffer them and send them all on reconnect, and the
                // server would deliver messages into requests nobody waits for any more, starting their AckWait while
                // they sit in the client until a later fetch.
                guard worker.connection.isConnected else {
                    try? await Task.sleep(for: .milliseconds(100))
                    continue
                }
                let free = concurrency - running.value
                let messages: [JetStreamMessage]
                do {
                    messages = try await subscription.fetch(batch: free, timeout: .milliseconds(500))
                } catch {
                    worker.logger.warning("fetch failed; retrying", metadata: ["error": "\(error)"])
                    try? await Task.sleep(for: .milliseconds(250))
                    continue
                }
                for message in messages {
                    running.add(1)
                    group.addTask { [worker, js] in
                        await worker.handle(message, js: js)
                        running.add(-1)
                        return .settled
                    }
                }
            }
            // Draining: the running tasks race the grace timer.
            let grace = worker.configuration.drainGrace
            group.addTask {
                try? await Task.sleep(for: grace)
                return .graceExpired
            }
            while running.value > 0 {
                guard let result = await group.next() else { break }
                if case .graceExpired = result { _ = worker.handBackRunning() }
            }
            group.cancelAll()
        }
    }
}

/// How many messages the consumer's children are handling.
private final class RunningCount: Sendable {
    private let count = Atomic<Int>(0)
    var value: Int { count.load(ordering: .relaxed) }
    func add(_ delta: Int) { count.add(delta, ordering: .relaxed) }
}
