import HTTPTypes
import Hummingbird

/// Hummingbird's `TracingMiddleware` (a server span per request, continuing the request's W3C `traceparent`), for the
/// requests that act on tasks: `POST /api/…` (submits), `POST /tasks/<id>/retry` and `DELETE /tasks/<id>` (cancels).
/// Reads (polls, long polls, lists), probes, scrapes, the live feed and the dashboard's files are not traced: each
/// would be a trace of its own and bury the tasks' traces. Added only when tracing is on.
struct TracedRoutesMiddleware<Context: RequestContext>: RouterMiddleware {
    let tracing = TracingMiddleware<Context>(recordingHeaders: [.contentType])

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        guard Self.isTraced(method: request.method, path: request.uri.path) else { return try await next(request, context) }
        return try await tracing.handle(request, context: context, next: next)
    }

    static func isTraced(method: HTTPRequest.Method, path: String) -> Bool {
        switch method {
        case .post: path.hasPrefix("/api/") || path.hasPrefix("/tasks/")
        case .delete: path.hasPrefix("/tasks/")
        default: false
        }
    }
}
