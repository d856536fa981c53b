import ServiceLifecycle

/// The pool monitor's once-a-second refresh, stopped when the gateway shuts down.
extension PoolMonitor: Service {
    func run() async throws {
        await cancelWhenGracefulShutdown { await self.refreshLoop() }
    }
}

/// The live feed's poll of the task log, stopped when the gateway shuts down (open `GET /events` streams end with
/// the server's own graceful shutdown first).
extension EventFeed: Service {
    func run() async throws {
        await cancelWhenGracefulShutdown { await self.pollLoop() }
    }
}
