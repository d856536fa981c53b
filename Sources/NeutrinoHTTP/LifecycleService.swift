import ServiceLifecycle

/// A component with a start and a stop but no loop of its own (a task-log writer to close, an events consumer to
/// start and stop, a connection to close), as a swift-service-lifecycle `Service`: `start` runs when the service
/// group starts it, `stop` once the group shuts it down (graceful shutdown or cancellation), in the group's order.
public struct LifecycleService: Service, CustomStringConvertible {
    public let description: String
    private let start: @Sendable () async throws -> Void
    private let stop: @Sendable () async -> Void

    public init(
        _ name: String, start: @escaping @Sendable () async throws -> Void = {},
        stop: @escaping @Sendable () async -> Void
    ) {
        self.description = name
        self.start = start
        self.stop = stop
    }

    public func run() async throws {
        try await start()
        // Returns on graceful shutdown or when the group is cancelled; either way the component is stopped.
        try? await gracefulShutdown()
        await stop()
    }
}

/// Waits until `done()` holds, checking every 10 ms, for at most `limit` (or until the task is cancelled); returns
/// whether it holds. For shutdown steps that wait for work without a handle to await (calls answered outside the
/// router, whose connections no longer hold the server's drain open).
public func waitUntil(within limit: Duration, _ done: @Sendable () -> Bool) async -> Bool {
    let deadline = ContinuousClock.now + limit
    while !done() {
        if ContinuousClock.now >= deadline || Task.isCancelled { return false }
        try? await Task.sleep(for: .milliseconds(10))
    }
    return true
}
