import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import NIOHTTP1
import NeutrinoCore
import NeutrinoHTTP
import NeutrinoObservability

/// The mounted ASGI app (`App.mount`, the manifest's `x-neutrino-asgi`): every request no Neutrino route answers is
/// forwarded to an HTTP worker of the app's pool, and its answer streamed back as it comes.
///
/// Added to the router after every route and the dashboard's files, so only requests that match none of them reach
/// it (Hummingbird runs the middlewares added after the last route for unmatched requests only). A request whose path
/// is a Neutrino route with another method stays Neutrino's (405). Access control has already run: the Host and
/// Origin guards, and with API keys the `read` scope (GET, HEAD, OPTIONS) or the `submit` scope (other methods),
/// rate limits included (`AccessRequirement.forwarded`).
struct ASGIFallback: RouterMiddleware {
    typealias Context = GatewayRequestContext
    let mount: Manifest.ASGIMount
    let pool: WorkerPool?
    let maxBodyBytes: Int
    let headTimeout: Duration
    /// The gateway's own `host:port`, for the scope's `server`.
    let server: String
    /// Whether each request's client is still connected: a request waiting for room leaves the line when it is not.
    let presences: ConnectionPresences
    let logger: Logger

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let path = request.uri.path
        if path == ASGIConflicts.dashboardPrefix {
            // The dashboard's files are referred to relatively (css/style.css): its address ends with a slash.
            return Response(status: .movedPermanently, headers: [.location: ASGIConflicts.dashboardPrefix + "/"])
        }
        // Neutrino's paths with another method (405) and the dashboard's files (FileMiddleware, outside this one).
        guard ASGIForwardingRule(mounted: true).forwards(path, endpoint: nil) else { return try await next(request, context) }
        let start = ContinuousClock.now
        let method = Self.methodLabel(request.method)
        if request.headers[.upgrade]?.lowercased().firstRange(of: "websocket") != nil {
            Self.count(route: "unmatched", method: method, code: 501, since: start)
            return .error(
                .notSupported,
                "WebSocket connections are not forwarded to the mounted ASGI app (\(mount.app)); only HTTP requests are. Serve WebSockets from a separate server, or poll and use GET /events (Server-Sent Events) for task updates"
            )
        }
        guard let pool else {
            return .error(.noWorkerAvailable, "no worker serves the mounted ASGI app's pool '\(mount.pool)'", headers: [.retryAfter: "1"])
        }
        let body: [UInt8]
        do { body = try await request.collectBody(limit: maxBodyBytes) } catch { return error.response }
        var headers = HTTPHeaders()
        for field in request.headers where !ASGIForwarding.hopByHop.contains(field.name.canonicalName.lowercased()) {
            let lower = field.name.canonicalName.lowercased()
            // The body is read already: the worker must not answer `100 Continue` to an `Expect` the client sent.
            if lower.hasPrefix("x-neutrino-") || lower == "content-length" || lower == "expect" { continue }
            headers.add(name: field.name.canonicalName, value: field.value)
        }
        if let authority = request.head.authority { headers.replaceOrAdd(name: "Host", value: authority) }
        if let peer = context.remoteAddress, let ip = peer.ipAddress {
            let host = ip.contains(":" as Character) ? "[\(ip)]" : ip
            headers.add(name: NeutrinoHeader.asgiClient.canonicalName, value: "\(host):\(peer.port ?? 0)")
        }
        headers.add(name: NeutrinoHeader.asgiServer.canonicalName, value: server)
        let target = request.head.path ?? request.uri.path
        let reply: WorkerConnections.StreamedReply
        do {
            (reply, _) = try await pool.forward(
                method: HTTPMethod(rawValue: request.method.rawValue), target: target, headers: headers, body: body,
                headDeadline: .now() + .nanoseconds(Int64(headTimeout.wholeMilliseconds) * 1_000_000),
                caller: presences.presence(of: context.connection))
        } catch {
            let response: Response =
                switch error {
                case .noWorkerAvailable(let why): .error(.noWorkerAvailable, why, headers: [.retryAfter: "1"])
                case .atCapacity(let why): .error(.overloaded, why, headers: [.retryAfter: "1"])
                case .callerLeft(let why): .error(.cancelled, why)  // nobody reads it
                case .timedOut: .error(.timeout, "the ASGI app did not start its answer within \(headTimeout)")
                case .workerCrashed(let why): .error(.workerCrashed, why)
                case .answerTooLarge(let limit): .error(.workerAnswerTooLarge, "the answer is larger than \(limit) bytes")
                }
            var code = response.status.code
            if case .callerLeft(let why) = error {
                code = Self.clientClosedRequest
                logger.info("a request for the mounted app was given up: its client left", metadata: ["reason": "\(why)", "path": "\(path)"])
            }
            Self.count(route: "unmatched", method: method, code: code, since: start)
            return response
        }
        let route = reply.headers.first(name: NeutrinoHeader.asgiRoute.canonicalName) ?? "unmatched"
        var fields = HTTPFields()
        var contentLength: Int?
        for (name, value) in reply.headers {
            let lower = name.lowercased()
            if ASGIForwarding.hopByHop.contains(lower) || lower.hasPrefix("x-neutrino-") || lower == "date" || lower == "server" {
                continue
            }
            if lower == "content-length" {
                contentLength = Int(value)
                continue
            }
            guard let fieldName = HTTPField.Name(name) else { continue }
            fields.append(HTTPField(name: fieldName, value: value))
        }
        let status = reply.status
        let chunks = reply.body.take()
        return Response(
            status: HTTPResponse.Status(code: status), headers: fields,
            body: ResponseBody(contentLength: contentLength) { writer in
                var complete = false
                defer { Self.count(route: route, method: method, code: complete ? status : Self.clientClosedRequest, since: start) }
                if let chunks {
                    for try await chunk in chunks { try await writer.write(chunk) }
                }
                complete = true
                try await writer.finish(nil)
            })
    }

    /// nginx's status for a request whose client closed the connection before the answer.
    static let clientClosedRequest = 499

    /// `neutrino_asgi_requests_total{route,method,code}` and `neutrino_asgi_request_duration_seconds{route,method}`:
    /// the route is the app's pattern (`/items/{item_id}`) the worker reported, `unmatched` when none matched. A
    /// response cut short by the client is counted with code 499.
    static func count(route: String, method: String, code: Int, since start: ContinuousClock.Instant) {
        let elapsed = ContinuousClock.now - start
        MetricHandles.counter(NeutrinoMetrics.asgiRequests, [("route", route), ("method", method), ("code", String(code))]).increment()
        MetricHandles.timer(NeutrinoMetrics.asgiDuration, [("route", route), ("method", method)])
            .recordNanoseconds(elapsed.components.seconds * 1_000_000_000 + elapsed.components.attoseconds / 1_000_000_000)
    }

    /// The method as a bounded label: the standard ones, `other` for anything else.
    static func methodLabel(_ method: HTTPRequest.Method) -> String {
        switch method {
        case .get, .head, .post, .put, .patch, .delete, .options: method.rawValue
        default: "other"
        }
    }
}

/// Where the app's routes and Neutrino's meet: a route of the app that a Neutrino route (or the dashboard's prefix)
/// shadows is reported at start-up, since requests to it never reach the app.
enum ASGIConflicts {
    /// The dashboard's files when an ASGI app is mounted (`/` is the app's).
    static let dashboardPrefix = "/_neutrino"

    /// One line per shadowed route of the app, empty when none is.
    static func find(_ mount: Manifest.ASGIMount, routes: RouteTable) -> [String] {
        var out: [String] = []
        for route in mount.routes {
            let app = segments(route.path)
            let methods = route.methods.filter { $0 != "HEAD" }
            var shadowedBy: [String] = []
            for neutrino in routes.routes {
                if !methods.isEmpty && route.kind == "route" && !methods.contains(neutrino.method.rawValue) { continue }
                if overlap(app: app, neutrino: neutrino.segments, mount: route.kind == "mount") {
                    shadowedBy.append("\(neutrino.method.rawValue) /\(neutrino.segments.joined(separator: "/"))")
                }
            }
            if overlap(app: app, neutrino: [Substring(dashboardPrefix.dropFirst()), "*"], mount: route.kind == "mount") {
                shadowedBy.append("the dashboard under \(dashboardPrefix)/")
            }
            if !shadowedBy.isEmpty {
                let what = route.kind == "mount" ? "mount \(route.path)" : "\(methods.isEmpty ? "*" : methods.joined(separator: ",")) \(route.path)"
                out.append("\(what) is shadowed by Neutrino's \(shadowedBy.joined(separator: ", "))")
            }
        }
        return out
    }

    /// A route's segments; `{name}` and `{name:type}` become `{}` (one segment), `{name:path}` becomes `**` (the rest).
    static func segments(_ path: String) -> [Substring] {
        path.split(separator: "/").map { part in
            if part.hasPrefix("{") && part.hasSuffix("}") { return part.hasSuffix(":path}") ? "**" : "{}" }
            return part
        }
    }

    /// Whether some path matches both the app's pattern and Neutrino's (`:name` one segment, `*` the rest).
    static func overlap(app: [Substring], neutrino: [Substring], mount: Bool) -> Bool {
        var i = 0
        while i < app.count && i < neutrino.count {
            let a = app[i]
            let n = neutrino[i]
            if a == "**" || n == "*" { return true }
            if !(a == "{}" || n.hasPrefix(":") || a == n) { return false }
            i += 1
        }
        if mount && i == app.count { return true }  // everything under the mount's prefix
        if i < neutrino.count && neutrino[i] == "*" { return true }
        return app.count == neutrino.count
    }
}
