import FoundationEssentials
import HTTPTypes
import Hummingbird
import NIOCore
import NeutrinoCore
import NeutrinoHTTP
import Synchronization

/// The dashboard's logins (issue 12): an API key exchanged at `POST /auth/session` for a random session token in an
/// `HttpOnly; SameSite=Strict` cookie. Kept in this gateway's memory, by the token's SHA-256 (the token itself is
/// nowhere but in the browser): a restart logs everyone out, and each replica has its own sessions. A session
/// expires after `lifetime`; it ends with its key, since every request looks the key up again (revoked or gone from
/// a reloaded keys file: the session is dropped and the request answered 401).
public final class SessionStore: Sendable {
    public static let cookieName = "neutrino_session"
    /// Sessions held at most; the one expiring first makes room for a new one.
    static let capacity = 10_000

    struct Session: Sendable {
        var keyID: String
        var expires: Date
    }

    let lifetime: Duration
    private let sessions = Mutex<[String: Session]>([:])

    init(lifetime: Duration) { self.lifetime = lifetime }

    private static func handle(_ token: some StringProtocol) -> String {
        KeyStore.digest(token).map { String($0, radix: 16).leftPadded(2) }.joined()
    }

    /// A new session for `keyID`: its token (32 random bytes, base64url) and when it expires.
    func create(keyID: String, now: Date = Date()) -> (token: String, expires: Date) {
        var generator = SystemRandomNumberGenerator()
        let bytes = (0..<32).map { _ in UInt8.random(in: .min ... .max, using: &generator) }
        let token = Data(bytes).base64EncodedString().replacing("+", with: "-").replacing("/", with: "_")
            .replacing("=", with: "")
        let expires = now.addingTimeInterval(Double(lifetime.components.seconds))
        sessions.withLock { all in
            if all.count >= Self.capacity {
                all = all.filter { $0.value.expires > now }
                if all.count >= Self.capacity, let first = all.min(by: { $0.value.expires < $1.value.expires }) {
                    all[first.key] = nil
                }
            }
            all[Self.handle(token)] = Session(keyID: keyID, expires: expires)
        }
        return (token, expires)
    }

    /// The key id and expiry of a live session; an expired one is dropped.
    func lookup(_ token: some StringProtocol, now: Date = Date()) -> Session? {
        let handle = Self.handle(token)
        return sessions.withLock { all in
            guard let session = all[handle] else { return nil }
            if session.expires <= now {
                all[handle] = nil
                return nil
            }
            return session
        }
    }

    func remove(_ token: some StringProtocol) { sessions.withLock { $0[Self.handle(token)] = nil } }

    var count: Int { sessions.withLock { $0.count } }

    /// The session token in a `Cookie` header, if any.
    static func token(in request: Request) -> Substring? {
        for header in request.headers[values: .cookie] {
            for pair in header.split(separator: ";") {
                let trimmed = pair.drop(while: { $0 == " " })
                guard let eq = trimmed.firstIndex(of: "="), trimmed[..<eq] == cookieName else { continue }
                let value = trimmed[trimmed.index(after: eq)...]
                if !value.isEmpty && value.count <= 128 { return value }
            }
        }
        return nil
    }

    /// Whether the browser says the request comes from the gateway's own pages: `Sec-Fetch-Site: same-origin`, or
    /// an `Origin` equal to the gateway's (scheme and the request's host). A request with neither is not.
    static func isSameOrigin(_ request: Request) -> Bool {
        if let site = request.headers[secFetchSite]?.lowercased() { return site == "same-origin" }
        guard let origin = request.headers[.origin]?.lowercased(),
            let authority = (request.headers[hostField] ?? request.head.authority)?.lowercased()
        else { return false }
        return origin == "http://\(authority)" || origin == "https://\(authority)"
    }

    static let secFetchSite = HTTPField.Name("Sec-Fetch-Site")!
    static let forwardedProto = HTTPField.Name("X-Forwarded-Proto")!
}

extension String {
    fileprivate func leftPadded(_ width: Int) -> String { count >= width ? self : String(repeating: "0", count: width - count) + self }
}

/// After the API-key authenticator: a request without a bearer key that carries a live session cookie acts as the
/// session's key (re-read from the keys file, so a revoked key's sessions end at once). A state-changing request
/// authenticated only by the cookie must also come from the gateway's own pages (`SessionStore.isSameOrigin`), so a
/// cookie can never be ridden by another site (the cookie is `SameSite=Strict` as well: CSRF-proof twice over).
struct SessionAuthenticator: RouterMiddleware {
    typealias Context = GatewayRequestContext
    let sessions: SessionStore
    let keys: KeyStore

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        guard AccessRequirement.of(method: request.method, endpoint: context.endpointPath) != .open,
            context.identity == nil, request.headers.bearer == nil, let token = SessionStore.token(in: request),
            let session = sessions.lookup(token)
        else { return try await next(request, context) }
        guard let key = keys.key(id: session.keyID), !key.revoked else {
            // The key was revoked (or removed from the keys file): the session ends with it; the policy answers 401.
            sessions.remove(token)
            context.logger.notice("ended the session of a revoked API key", metadata: ["key_id": "\(session.keyID)"])
            return try await next(request, context)
        }
        switch request.method {
        case .get, .head, .options: break
        default:
            guard SessionStore.isSameOrigin(request) else {
                throw AccessRejection.forbidden(
                    "csrf", "a \(request.method.rawValue) authenticated by a session cookie must come from the dashboard's own origin")
            }
        }
        var context = context
        context.identity = key
        return try await next(request, context)
    }
}

/// `POST /auth/session` `{"key": "nk_…"}` → the session cookie and the key's id, name and scopes;
/// `GET /auth/session` → who the request is (a session, a bearer key, or `"auth": "off"` without keys);
/// `DELETE /auth/session` → logs out (the cookie is cleared).
struct SessionController {
    let sessions: SessionStore?
    let keys: KeyStore?

    func addRoutes(to router: Router<GatewayRequestContext>) {
        router.post("/auth/session") { request, context in try await login(request, context) }
        router.get("/auth/session") { request, context in whoami(request, context) }
        router.delete("/auth/session") { request, _ in logout(request) }
    }

    private func login(_ request: Request, _ context: GatewayRequestContext) async throws -> Response {
        guard let sessions, let keys else {
            return .error(.notSupported, "this gateway runs without --api-keys: there is nothing to log in to")
        }
        let body = try await request.body.collect(upTo: 16 * 1024)
        let parsed = try? JSONParser.parse(Array(buffer: body))
        guard let token = parsed?.objectValue?["key"]?.stringValue else {
            return .error(.badRequest, #"the body must be {"key": "<API key>"}"#)
        }
        switch keys.verify(token) {
        case .valid(let key):
            let (sessionToken, expires) = sessions.create(keyID: key.id)
            let secure = request.headers[SessionStore.forwardedProto]?.lowercased() == "https"
            let maxAge = Int(sessions.lifetime.components.seconds)
            var cookie = "\(SessionStore.cookieName)=\(sessionToken); Path=/; Max-Age=\(maxAge); HttpOnly; SameSite=Strict"
            if secure { cookie += "; Secure" }
            context.logger.info("dashboard session opened", metadata: ["key_id": "\(key.id)"])
            return identityResponse(key, expires: expires, headers: [.setCookie: cookie])
        case .unknown: throw AccessRejection.unauthorized("unknown_key", "the API key is not valid")
        case .revoked(let id): throw AccessRejection.unauthorized("revoked_key", "API key \(id) is revoked")
        }
    }

    private func whoami(_ request: Request, _ context: GatewayRequestContext) -> Response {
        guard let keys else {
            return .json(.ok, Array(#"{"auth":"off","scopes":["admin","read","submit"]}"#.utf8))
        }
        if let bearer = request.headers.bearer, case .valid(let key) = keys.verify(bearer.token) {
            return identityResponse(key, expires: nil)
        }
        if let sessions, let token = SessionStore.token(in: request), let session = sessions.lookup(token),
            let key = keys.key(id: session.keyID), !key.revoked
        {
            return identityResponse(key, expires: session.expires)
        }
        return AccessRejection.unauthorized("missing_key", "not logged in").errorResponse
    }

    private func logout(_ request: Request) -> Response {
        if let token = SessionStore.token(in: request) { sessions?.remove(token) }
        var response = Response.json(.ok, Array(#"{"logged_out":true}"#.utf8))
        response.headers[.setCookie] = "\(SessionStore.cookieName)=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict"
        return response
    }

    private func identityResponse(_ key: APIKey, expires: Date?, headers: HTTPFields = [:]) -> Response {
        var w = JSONWriter()
        w.beginObject()
        w.key("auth")
        w.string("key")
        w.key("key_id")
        w.string(key.id)
        w.key("name")
        w.string(key.name)
        w.key("scopes")
        w.beginArray()
        for scope in key.scopes.sorted() { w.string(scope.rawValue) }
        w.endArray()
        if let expires {
            w.key("expires_at")
            w.string(Timestamp(millis: Int64((expires.timeIntervalSince1970 * 1000).rounded(.down))).iso8601)
        }
        w.endObject()
        var response = Response.json(.ok, w.bytes)
        for field in headers { response.headers.append(field) }
        return response
    }
}
