import HTTPTypes
import Hummingbird
import Metrics
import NeutrinoCore

/// Requests refused before or instead of a route, by reason, in `neutrino_http_rejected_total{reason}`: the limits
/// (`header_timeout`, `body_timeout`, `body_too_large`, `connections`, `long_poll_waiters`, `sse_subscribers`, …)
/// and malformed requests (`bad_target`, `bad_request`, `headers_too_large`).
public enum HTTPRejections {
    public static let metric = "neutrino_http_rejected_total"

    public static func count(_ reason: String) {
        Counter(label: metric, dimensions: [("reason", reason)]).increment()
    }
}

/// The routes an application serves, as `(method, pattern)` with `:name` for one path segment: lets a request whose
/// path exists but whose method does not be answered 405 with `Allow`, instead of 404.
public struct RouteTable: Sendable {
    public struct Route: Sendable {
        public var method: HTTPRequest.Method
        public var segments: [Substring]
    }

    public private(set) var routes: [Route] = []

    public init(_ routes: [(HTTPRequest.Method, String)] = []) {
        for (method, pattern) in routes { add(method, pattern) }
    }

    public mutating func add(_ method: HTTPRequest.Method, _ pattern: String) {
        routes.append(Route(method: method, segments: pattern.split(separator: "/")))
    }

    /// The methods served at `path` (empty when no route has this path).
    public func methods(at path: String) -> [HTTPRequest.Method] {
        let parts = path.split(separator: "/")
        var out: [HTTPRequest.Method] = []
        for route in routes where route.segments.count == parts.count {
            let fits = zip(route.segments, parts).allSatisfy { pattern, part in pattern.hasPrefix(":") || pattern == part }
            if fits && !out.contains(route.method) { out.append(route.method) }
        }
        return out
    }
}

/// Gives every answer the server makes outside a handler the one error shape, `{"error":{"type","message"}}`:
/// an unknown route is 404 `NotFound`, a known path with another method 405 `MethodNotAllowed` (with `Allow`), and
/// a request target that cannot be read — a malformed `%` escape, an escaped NUL (`%00`), bytes that are not UTF-8
/// once unescaped — is 400 `BadRequest` before any route sees it (such values cannot be stored or matched faithfully:
/// SQLite would stop a filter value at its NUL).
///
/// Add it to the router first, so it wraps every other middleware and the not-found responder.
public struct ErrorBodyMiddleware<Context: RequestContext>: RouterMiddleware {
    let routes: RouteTable

    public init(routes: RouteTable) { self.routes = routes }

    public func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        if let problem = RequestTarget.problem(path: request.uri.path, query: request.uri.query) {
            HTTPRejections.count("bad_target")
            return .error(.badRequest, problem)
        }
        do {
            return try await next(request, context)
        } catch let error as any HTTPResponseError {
            // An error that renders its own JSON body (the access checks' 401/403/429) is answered as it is.
            guard error is HTTPError else { throw error }
            let path = request.uri.path
            switch error.status {
            case .notFound:
                let allowed = routes.methods(at: path)
                if !allowed.isEmpty && !allowed.contains(request.method) {
                    let list = allowed.map(\.rawValue).joined(separator: ", ")
                    return .error(
                        .methodNotAllowed,
                        "\(request.method.rawValue) is not allowed on \(ArgumentSchema.abbreviate(path, limit: 200)); allowed: \(list)",
                        headers: [.allow: list])
                }
                return .error(.routeNotFound, "no route for \(request.method.rawValue) \(ArgumentSchema.abbreviate(path, limit: 200))")
            case .contentTooLarge:
                return .error(.payloadTooLarge, "the request body is too large")
            default:
                let type: APIError = error.status.code < 500 ? .badRequest : .internalError
                let message = (error as? HTTPError)?.body ?? error.status.reasonPhrase
                return .error(HTTPResponse.Status(code: error.status.code), type: type.type, message: message)
            }
        } catch {
            // A handler that threw something else: still the one error shape, never an empty 500.
            return .error(.internalError, "the request failed: \(error)")
        }
    }
}

/// Checks of the request target (path and query) before routing.
public enum RequestTarget {
    /// Why `path` and `query` cannot be served, or nil when they can.
    public static func problem(path: String, query: String?) -> String? {
        if let why = check(path) { return "the path \(why)" }
        if let query, let why = check(query) { return "the query \(why)" }
        return nil
    }

    /// Unescapes `%XX` and checks the bytes: no NUL, well-formed escapes, UTF-8.
    static func check(_ text: String) -> String? {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(text.utf8.count)
        var it = text.utf8.makeIterator()
        while let b = it.next() {
            if b == 0 { return "contains a NUL byte" }
            guard b == UInt8(ascii: "%") else { bytes.append(b); continue }
            guard let h = it.next().flatMap(hex), let l = it.next().flatMap(hex) else { return "has a malformed %-escape" }
            let v = h << 4 | l
            if v == 0 { return "contains an escaped NUL byte (%00)" }
            bytes.append(v)
        }
        if String(validating: bytes, as: UTF8.self) == nil { return "is not UTF-8 once %-escapes are decoded" }
        return nil
    }

    private static func hex(_ c: UInt8) -> UInt8? {
        switch c {
        case 48...57: c - 48
        case 65...70: c - 55
        case 97...102: c - 87
        default: nil
        }
    }
}
