import HummingbirdCore
import Logging
import NIOCore

/// A `TaskExecutor` that runs jobs on one NIO event loop.
///
/// A task that prefers it (`withTaskExecutorPreference`) runs its nonisolated code, and resumes after every `await`,
/// on that loop's thread instead of Swift's cooperative pool. A connection's requests then stay on the thread that
/// reads its socket: the request parts reach the handler, the handler's writes reach the socket, and futures
/// completed on that loop resume the handler, all without a wake-up of another thread.
public final class EventLoopTaskExecutor: TaskExecutor, @unchecked Sendable {
    // @unchecked: `loop` is immutable and event loops are thread-safe.
    let loop: any EventLoop

    public init(_ loop: any EventLoop) { self.loop = loop }

    public func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        let executor = asUnownedTaskExecutor()
        loop.execute { job.runSynchronously(on: executor) }
    }
}

/// Serves each connection with its requests' handlers preferring the connection's event loop as their executor (see
/// `EventLoopTaskExecutor`). Hummingbird otherwise runs each connection's handler on Swift's cooperative pool, so every
/// request crosses between an event-loop thread and a pool thread four times (request in, answer out, and for the
/// gateway the same again towards the worker), each crossing a futex wake-up.
///
/// Handlers must not block: they never did (Python, SQLite and cnats calls run on their own threads), but a blocking
/// call now stalls the other connections of its loop rather than a pool thread.
struct EventLoopBoundChannel<Inner: ServerChildChannel>: ServerChildChannel {
    typealias Value = Inner.Value
    let inner: Inner
    /// Handlers put right behind Hummingbird's `HTTPConnectionStateHandler` (see `ServerLimits.requestHandlers`).
    let requestHandlers: @Sendable () -> [any ChannelHandler]

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        inner.setup(channel: channel, logger: logger).flatMapThrowing { value in
            let handlers = requestHandlers()
            if !handlers.isEmpty {
                let pipeline = channel.pipeline.syncOperations
                let state = try pipeline.handler(type: HTTPConnectionStateHandler.self)
                try pipeline.addHandlers(handlers, position: .after(state))
            }
            return value
        }
    }

    func handle(value: Value, logger: Logger) async {
        await withTaskExecutorPreference(EventLoopTaskExecutor(value.channel.eventLoop)) {
            await inner.handle(value: value, logger: logger)
        }
    }
}

extension HTTPServerBuilder {
    /// HTTP/1.1 with each connection's requests handled on its event loop (`EventLoopBoundChannel`).
    /// `requestHandlers` are put in front of the router, behind the connection state handler.
    static func http1OnEventLoops(
        configuration: HTTP1Channel.Configuration, requestHandlers: @escaping @Sendable () -> [any ChannelHandler] = { [] }
    ) -> HTTPServerBuilder {
        .init { responder in
            EventLoopBoundChannel(
                inner: HTTP1Channel(responder: responder, configuration: configuration), requestHandlers: requestHandlers)
        }
    }
}
