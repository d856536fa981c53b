import Hummingbird

/// Hummingbird's `TracingMiddleware` (a server span per request, continuing the request's W3C `traceparent`), for
/// the task routes only: `/api/…` (submits) and `/tasks…` (polls, cancels, retries). Probes, scrapes, the live feed
/// and the dashboard's files are not traced: they would bury the tasks' traces. Added only when tracing is on.
struct TracedRoutesMiddleware<Context: RequestContext>: RouterMiddleware {
    let tracing = TracingMiddleware<Context>(recordingHeaders: [.contentType])

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let path = request.uri.path
        guard path.hasPrefix("/api/") || path.hasPrefix("/tasks") else { return try await next(request, context) }
        return try await tracing.handle(request, context: context, next: next)
    }
}
