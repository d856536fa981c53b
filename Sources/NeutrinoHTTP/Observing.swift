import HTTPTypes
import Hummingbird
import Metrics
import NIOCore
import NeutrinoObservability

/// Counts requests by matched route and status code (`neutrino_http_requests_total`). The route is the
/// router's pattern (`/tasks/{id}`), never the raw path, so the label set stays bounded.
public struct RequestMetricsMiddleware<Context: RequestContext>: RouterMiddleware {
    public init() {}

    public func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            let response = try await next(request, context)
            HTTPRequestCounter.count(route: context.endpointPath, code: response.status.code)
            return response
        } catch let error as any HTTPResponseError {
            HTTPRequestCounter.count(route: context.endpointPath, code: error.status.code)
            throw error
        } catch {
            HTTPRequestCounter.count(route: context.endpointPath, code: 500)
            throw error
        }
    }
}

/// `neutrino_http_requests_total{route,code}`: counted by `RequestMetricsMiddleware`, and by handlers that answer
/// outside the router (`CallHandler`).
public enum HTTPRequestCounter {
    private struct RouteCode: Hashable, Sendable {
        var route: String
        var code: Int
    }

    private static let counters = HandleCache<RouteCode, Counter> { key in
        Counter(label: NeutrinoMetrics.httpRequests, dimensions: [("route", key.route), ("code", String(key.code))])
    }

    public static func count(route: String?, code: Int) {
        counters.handle(RouteCode(route: route ?? "unmatched", code: code)).increment()
    }
}

extension Router {
    /// `GET /metrics`: the process's registry in the Prometheus text format. `refresh` runs first (gauges that are
    /// read on demand, e.g. a worker's busy threads).
    public func addMetricsRoute(refresh: @escaping @Sendable () -> Void = {}) {
        get("/metrics") { _, _ in
            refresh()
            let bytes = Observability.registry.emitToBuffer()
            return Response(
                status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                body: ResponseBody(byteBuffer: ByteBuffer(bytes: bytes)))
        }
    }
}
