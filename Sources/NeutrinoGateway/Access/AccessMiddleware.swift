import HTTPTypes
import Hummingbird
import HummingbirdAuth
import Metrics
import NIOCore
import NeutrinoCore
import NeutrinoHTTP
import NeutrinoObservability

/// The gateway's request context: Hummingbird's core storage plus the API key the request authenticated with
/// (hummingbird-auth's `AuthRequestContext`).
public struct GatewayRequestContext: AuthRequestContext, RequestContext {
    public var coreContext: CoreRequestContextStorage
    public var identity: APIKey?
    /// The client's address (the ASGI scope's `client` for a request forwarded to a mounted app).
    public var remoteAddress: SocketAddress?
    /// The client's connection, to look up whether its client is still there (`ConnectionPresences`).
    public var connection: ObjectIdentifier

    public init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        identity = nil
        remoteAddress = source.channel.remoteAddress
        connection = ObjectIdentifier(source.channel)
    }
}

/// The key id of the request being served, for the task log's `submitted_by` (see `SubmitterTaggingSink`).
public enum RequestIdentity {
    @TaskLocal public static var keyID: String?
}

/// What a route needs, by method and matched pattern.
enum AccessRequirement: Equatable {
    case open
    case scope(APIScope)
    /// `GET /metrics`: the `--metrics-token` or an admin key (open when neither keys nor a token are configured).
    case metrics

    static func of(method: HTTPRequest.Method, endpoint: String?, forwarded: Bool = false) -> AccessRequirement {
        guard let endpoint else {
            // No route matched: static dashboard files and 404s are open; a request forwarded to the mounted ASGI
            // app needs what the same method needs on Neutrino's routes (reading, or submitting work).
            guard forwarded else { return .open }
            return [.get, .head, .options].contains(method) ? .scope(.read) : .scope(.submit)
        }
        switch (method, endpoint) {
        case (_, "/healthz"), (_, "/readyz"): return .open
        // The login exchange authenticates by itself (a key in the body, or the session it ends).
        case (_, "/auth/session"): return .open
        case (_, "/metrics"): return .metrics
        case (.post, let p) where p.hasPrefix("/api/"): return .scope(.submit)
        case (.delete, "/tasks/{id}"), (.post, "/tasks/{id}/retry"): return .scope(.admin)
        case (.get, _), (.head, _): return .scope(.read)
        // A state-changing route this table does not name yet needs the strongest scope.
        default: return .scope(.admin)
        }
    }

    /// Routes that create a task (they count against `max_in_flight`).
    static func createsTask(method: HTTPRequest.Method, endpoint: String?) -> Bool {
        guard method == .post, let endpoint else { return false }
        return endpoint.hasPrefix("/api/") || endpoint == "/tasks/{id}/retry"
    }
}

/// Which unmatched requests go to a mounted ASGI app (and so need a key like Neutrino's routes): all but the
/// dashboard's files (under `/_neutrino/`) and Neutrino's own paths with another method (answered 405).
struct ASGIForwardingRule: Sendable {
    var mounted: Bool
    static let none = ASGIForwardingRule(mounted: false)

    func forwards(_ path: String, endpoint: String?) -> Bool {
        guard mounted, endpoint == nil else { return false }
        if path == ASGIConflicts.dashboardPrefix || path.hasPrefix(ASGIConflicts.dashboardPrefix + "/") { return false }
        return gatewayRoutes.methods(at: path).isEmpty
    }
}

/// A refusal before the route runs: the usual JSON error body, counted in `neutrino_auth_rejections_total{reason}`.
struct AccessRejection: HTTPResponseError {
    var error: APIError
    var reason: String
    var message: String
    var headers: HTTPFields = [:]
    var limit: [(String, Double)] = []

    var status: HTTPResponse.Status { .init(code: error.statusCode) }

    static func unauthorized(_ reason: String, _ message: String) -> AccessRejection {
        AccessRejection(
            error: .unauthorized, reason: reason, message: message,
            headers: [.wwwAuthenticate: #"Bearer realm="neutrino""#])
    }

    /// 401 for a request without a key on a route that needs `scope`.
    static func missingKey(_ scope: APIScope) -> AccessRejection {
        .unauthorized("missing_key", "this route needs an API key (Authorization: Bearer <key>) with the \(scope.rawValue) scope")
    }

    static func forbidden(_ reason: String, _ message: String, scope: APIScope? = nil) -> AccessRejection {
        var challenge = #"Bearer realm="neutrino""#
        if let scope { challenge += #", error="insufficient_scope", scope="\#(scope.rawValue)""# }
        return AccessRejection(error: .forbidden, reason: reason, message: message, headers: [.wwwAuthenticate: challenge])
    }

    func response(from request: Request, context: some RequestContext) throws -> Response { errorResponse }

    var errorResponse: Response {
        Counter(label: AccessMetrics.rejections, dimensions: [("reason", reason)]).increment()
        return .error(error, message, headers: headers) { [limit] w in
            guard !limit.isEmpty else { return }
            w.key("limit")
            w.beginObject()
            for (k, v) in limit {
                w.key(k)
                if v == v.rounded() { w.int(Int(v)) } else { w.double(v) }
            }
            w.endObject()
        }
    }
}

enum AccessMetrics {
    static let rejections = "neutrino_auth_rejections_total"
    static let requestsByKey = "neutrino_http_requests_by_key_total"
    static let limited = "neutrino_rate_limited_total"
}

/// `Authorization: Bearer nk_…` → the key's entry in `context.identity` (hummingbird-auth's authenticator
/// middleware). No header: no identity (the policy decides). An unknown or revoked key: 401, except on open routes.
struct APIKeyAuthenticator: AuthenticatorMiddleware {
    typealias Context = GatewayRequestContext
    let store: KeyStore
    let metricsToken: String?
    /// Requests no route matches go to a mounted ASGI app (not the dashboard's files).
    var forwarding: ASGIForwardingRule = .none

    func authenticate(request: Request, context: Context) async throws -> APIKey? {
        guard let bearer = request.headers.bearer else { return nil }
        let requirement = AccessRequirement.of(
            method: request.method, endpoint: context.endpointPath,
            forwarded: forwarding.forwards(request.uri.path, endpoint: context.endpointPath))
        if requirement == .open { return nil }
        if requirement == .metrics, let metricsToken,
            KeyStore.constantTimeEqual(KeyStore.digest(bearer.token), KeyStore.digest(metricsToken))
        {
            return nil
        }
        let verdict = store.verify(bearer.token)
        if case .revoked(let id) = verdict {
            context.logger.notice("refused a revoked API key", metadata: ["key_id": "\(id)", "path": "\(request.uri.path)"])
        }
        return try KeyStore.admitted(verdict).get()
    }
}

/// Scopes, task/pool restrictions, the per-key rate and in-flight quota; then the route, with the key id in
/// `RequestIdentity.keyID`, counted per key. With no keys configured every route is open (`/metrics` then takes
/// the `--metrics-token` if one is set).
struct AccessPolicyMiddleware: RouterMiddleware {
    typealias Context = GatewayRequestContext
    let keysEnabled: Bool
    let metricsToken: String?
    let policy: KeyPolicy
    var forwarding: ASGIForwardingRule = .none

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let endpoint = context.endpointPath
        let forwarded = forwarding.forwards(request.uri.path, endpoint: endpoint)
        switch AccessRequirement.of(method: request.method, endpoint: endpoint, forwarded: forwarded) {
        case .open:
            return try await next(request, context)
        case .metrics:
            if let metricsToken, let bearer = request.headers.bearer,
                KeyStore.constantTimeEqual(KeyStore.digest(bearer.token), KeyStore.digest(metricsToken))
            {
                return try await next(request, context)
            }
            if !keysEnabled && metricsToken == nil { return try await next(request, context) }
            guard let key = context.identity else {
                throw AccessRejection.unauthorized("missing_key", "GET /metrics needs the metrics token or an admin API key")
            }
            guard key.allows(.admin) else {
                throw AccessRejection.forbidden("scope", "API key \(key.id) lacks the admin scope GET /metrics needs", scope: .admin)
            }
            return try await serve(request, context, key: key, createsTask: false, next: next)
        case .scope(let scope):
            guard keysEnabled else { return try await next(request, context) }
            guard let key = context.identity else {
                throw AccessRejection.missingKey(scope)
            }
            let task = request.method == .post && endpoint?.hasPrefix("/api/") == true ? context.parameters.get("task") : nil
            if let refusal = policy.refusal(of: key, scope: scope, task: task) {
                if refusal.reason == "scope" {
                    context.logger.info(
                        "API key lacks a scope",
                        metadata: ["key_id": "\(key.id)", "scope": "\(scope.rawValue)", "path": "\(request.uri.path)"])
                }
                throw refusal
            }
            return try await serve(
                request, context, key: key,
                createsTask: AccessRequirement.createsTask(method: request.method, endpoint: endpoint), next: next)
        }
    }

    private func serve(
        _ request: Request, _ context: Context, key: APIKey, createsTask: Bool,
        next: (Request, Context) async throws -> Response
    ) async throws -> Response {
        var context = context
        context.logger[metadataKey: "key_id"] = "\(key.id)"  // the id, never the key, in what the route logs
        return try await policy.serve(key: key, createsTask: createsTask) { try await next(request, context) }
    }
}
