import Hummingbird
import Logging
import NeutrinoCore
import NeutrinoHTTP
import NeutrinoTaskLog

/// What operators and their tools call: liveness, readiness, the manifest, `/pools`, `/metrics`, and the dashboard's
/// static files.
struct OperationsController: Sendable {
    let components: GatewayComponents

    func addRoutes(to router: Router<GatewayRequestContext>) {
        router.get("/healthz") { _, _ in Response.json(.ok, Array(#"{"status":"ok"}"#.utf8)) }
        router.get("/readyz") { _, _ in await readiness() }
        router.get("/openapi.json") { _, _ in Response.json(.ok, components.manifest.document) }
        router.get("/pools") { _, _ in Response.json(.ok, components.monitor.snapshot) }
        router.addMetricsRoute()
    }

    /// The dashboard's files at `/`, or under `prefix` (`/_neutrino/`) when an ASGI app is mounted and `/` is the app's
    /// (added last: routes take precedence over files).
    func addDashboard(to router: Router<GatewayRequestContext>, under prefix: String? = nil) {
        guard let directory = components.configuration.dashboardDirectory else { return }
        router.add(middleware: FileMiddleware(directory, urlBasePath: prefix, searchForIndexHtml: true, logger: components.logger))
    }

    /// Ready when the task log answers, every static sync pool (`--http-pool`) has a reachable worker and NATS is
    /// connected. An elastic pool (workers from heartbeats) may be empty for a while: at start-up, or scaled to zero.
    func readiness() async -> Response {
        var problems: [String] = []
        if let reader = components.reader {
            do { _ = try await reader.list(TaskListFilter(limit: 1)) } catch { problems.append("task log: \(error)") }
        }
        for (name, pool) in components.pools where pool.hasStaticMembers && pool.healthyCount == 0 {
            problems.append("pool \(name): no reachable worker")
        }
        if let queue = components.queue, !queue.isConnected { problems.append("NATS: not connected") }
        if problems.isEmpty { return .json(.ok, Array(#"{"status":"ready"}"#.utf8)) }
        return .error(.notReady, problems.joined(separator: "; "))
    }
}
