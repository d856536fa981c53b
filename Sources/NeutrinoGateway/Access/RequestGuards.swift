import FoundationEssentials
import HTTPTypes
import Hummingbird
import Metrics
import NeutrinoCore

/// DNS-rebinding protection: the `Host` (HTTP/1) or `:authority` (HTTP/2) must name this gateway — localhost,
/// 127.0.0.1, [::1], its `--host`, or an `--allowed-host` — else 421. A request without one (no browser sends
/// such a request) passes.
struct HostGuardMiddleware<Context: RequestContext>: RouterMiddleware {
    let check: HostGuard

    init(_ check: HostGuard) { self.check = check }

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let authority = request.headers[hostField] ?? request.head.authority
        guard check.admits(authority) else {
            throw AccessRejection(
                error: .misdirectedRequest, reason: "host",
                message: "this gateway does not answer to the host '\(authority ?? "")' (add it with --allowed-host)")
        }
        return try await next(request, context)
    }
}

/// The names a `Host` may give (see `HostGuardMiddleware`).
struct HostGuard: Sendable {
    let allowed: Set<String>

    init(host: String, extra: [String]) {
        var names: Set<String> = ["localhost", "127.0.0.1", "[::1]"]
        let h = host.lowercased()
        if h != "0.0.0.0" && h != "::" && !h.isEmpty { names.insert(h.contains(":" as Character) && !h.hasPrefix("[") ? "[\(h)]" : h) }
        for e in extra { names.insert(Self.hostName(e.lowercased())) }
        allowed = names
    }

    /// The name part of `host[:port]` / `[v6][:port]`.
    static func hostName(_ authority: String) -> String {
        if authority.hasPrefix("[") {
            return authority.firstIndex(of: "]").map { String(authority[...$0]) } ?? authority
        }
        let colons = authority.filter { $0 == ":" }.count
        if colons == 1, let i = authority.firstIndex(of: ":") { return String(authority[..<i]) }
        return colons > 1 ? "[\(authority)]" : authority
    }

    /// Whether a request with this `Host` (or authority) is for this gateway; one without is.
    func admits(_ authority: String?) -> Bool {
        guard let authority else { return true }
        let name = Self.hostName(authority.lowercased())
        return allowed.contains(name) || allowed.contains(name.hasSuffix(".") ? String(name.dropLast()) : name)
    }
}

/// Cross-origin and CSRF protection. A request whose `Origin` is not the gateway's own (scheme + the request's
/// host) is refused with 403 unless `--cors-origin` lists it (`*` = any). A state-changing request (POST, PUT,
/// PATCH, DELETE) without `Authorization: Bearer` must be `application/json` or carry no `Content-Type`: the types
/// an HTML form or a no-preflight fetch can send (form encodings, text/plain) are refused; a browser request without
/// a type (a no-cors fetch of an untyped blob) always carries `Origin`, which the check above refuses.
struct OriginGuardMiddleware<Context: RequestContext>: RouterMiddleware {
    let corsOrigins: Set<String>

    init(corsOrigins: [String]) {
        self.corsOrigins = Set(corsOrigins.map { $0.lowercased().trimmingSuffix("/") })
    }

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        if let origin = request.headers[.origin]?.lowercased() {
            let authority = (request.headers[hostField] ?? request.head.authority)?.lowercased()
            let own = authority.map { a in ["http://\(a)", "https://\(a)"].contains(origin) } ?? false
            guard own || corsOrigins.contains("*") || corsOrigins.contains(origin) else {
                throw AccessRejection.forbidden("origin", "cross-origin requests from \(origin) are not allowed (see --cors-origin)")
            }
        }
        switch request.method {
        case .post, .put, .patch, .delete:
            if request.headers[.authorization]?.hasPrefix("Bearer ") == true { break }
            if let type = request.headers[.contentType] {
                guard isJSONMediaType(type) else {
                    throw AccessRejection.forbidden("csrf", "a \(request.method.rawValue) without an API key must be application/json")
                }
            }
        default: break
        }
        return try await next(request, context)
    }
}

/// `Host` as a header field: HTTP/1 requests carry it as the request's authority, a request built in process may
/// carry it as a field.
let hostField = HTTPField.Name("Host")!

extension String {
    fileprivate func trimmingSuffix(_ suffix: String) -> String { hasSuffix(suffix) ? String(dropLast(suffix.count)) : self }
}

/// Marks the `queued` / `pending` events recorded while an authenticated request is served with the key's id:
/// `TaskEvent.submittedBy` (the task's `submitted_by` column) and `submitted_by=<key id>` in the event's `detail`.
final class SubmitterTaggingSink: TaskEventSink {
    private let inner: any TaskEventSink

    init(_ inner: any TaskEventSink) { self.inner = inner }

    private func tagged(_ event: TaskEvent) -> TaskEvent {
        guard let keyID = RequestIdentity.keyID, event.kind == .queued || event.kind == .pending else { return event }
        var e = event
        e.detail = [e.detail, "submitted_by=\(keyID)"].compactMap { $0 }.joined(separator: "; ")
        e.submittedBy = keyID
        return e
    }

    func record(_ event: TaskEvent) { inner.record(tagged(event)) }
    func record(contentsOf events: [TaskEvent]) { inner.record(contentsOf: events.map(tagged)) }
    func flush() async { await inner.flush() }
    func close() async { await inner.close() }
}

/// Whether a Content-Type names `application/json` (any case, parameters and surrounding blanks ignored), without
/// Foundation's string bridging: this runs on every POST.
func isJSONMediaType(_ contentType: String) -> Bool {
    var bytes = contentType.utf8[...]
    if let semicolon = bytes.firstIndex(of: UInt8(ascii: ";")) { bytes = bytes[..<semicolon] }
    while let first = bytes.first, first == 0x20 || first == 0x09 { bytes = bytes.dropFirst() }
    while let last = bytes.last, last == 0x20 || last == 0x09 { bytes = bytes.dropLast() }
    let expected = "application/json".utf8
    guard bytes.count == expected.count else { return false }
    return zip(bytes, expected).allSatisfy { byte, want in
        let lower = (0x41...0x5A).contains(byte) ? byte | 0x20 : byte
        return lower == want
    }
}
