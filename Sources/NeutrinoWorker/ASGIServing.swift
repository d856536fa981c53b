import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import NeutrinoCore
import NeutrinoHTTP
import NeutrinoPython

/// Serves the app's mounted ASGI app (`App.mount`) on an HTTP worker of its pool: every request under
/// `ASGIForwarding.prefix` (what the gateway forwards) becomes one `app(scope, receive, send)` on the worker's event
/// loop (`PythonExecutor.serveASGI`), and what the app sends is streamed back as it comes: the head as soon as the app
/// starts its response, each body chunk when it is sent (chunked when the app gave no Content-Length). Added first to
/// the router, so it sees these requests before any route.
struct ASGIMiddleware: RouterMiddleware {
    typealias Context = WorkerRequestContext
    let executor: PythonExecutor
    let maxBodyBytes: Int
    let headTimeout: Duration
    let presences: ConnectionPresences
    let logger: Logger

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let target = request.head.path ?? ""
        guard target.hasPrefix(ASGIForwarding.prefix) else { return try await next(request, context) }
        var rest = target.dropFirst(ASGIForwarding.prefix.count)
        if rest.isEmpty || rest.first == "?" { rest = "/" + rest }
        guard rest.first == "/" else { return try await next(request, context) }
        return await serve(request, target: String(rest), caller: presences.presence(of: context.connection))
    }

    /// With `caller`: a request whose client (the gateway, or whoever called directly) goes away while it waits for a
    /// coroutine slot is not started, and one that runs is told (`http.disconnect` from `receive()`), as uvicorn
    /// tells it; a streamed answer learns it from its failed write as well.
    private func serve(_ request: Request, target: String, caller: CallerPresence?) async -> Response {
        let body: [UInt8]
        do { body = try await request.collectBody(limit: maxBodyBytes) } catch { return error.response }
        let (path, query) = Self.split(target)
        let client = Self.hostPort(request.headers[NeutrinoHeader.asgiClient])
        let server = Self.hostPort(request.headers[NeutrinoHeader.asgiServer] ?? request.head.authority)
        var headers: [([UInt8], [UInt8])] = []
        // HTTPTypes keeps Host as the request's authority, not among its fields.
        if let authority = request.head.authority { headers.append((Array("host".utf8), Array(authority.utf8))) }
        for field in request.headers {
            let name = field.name.canonicalName.lowercased()
            if name == NeutrinoHeader.asgiClient.canonicalName.lowercased() || name == NeutrinoHeader.asgiServer.canonicalName.lowercased()
                || ASGIForwarding.hopByHop.contains(name)
            {
                continue
            }
            headers.append((Array(name.utf8), Array(field.value.utf8)))
        }
        let head = ASGIRequestHead.encode(
            fields: [
                Array(request.method.rawValue.utf8), Array(path.utf8), Array(query.utf8), Array("1.1".utf8),
                Array(client.host.utf8), Array(client.port.utf8), Array(server.host.utf8), Array(server.port.utf8),
                Array("http".utf8),
            ], headers: headers)
        let exchange = executor.serveASGI(head: head, body: body)
        // Weak: the presence outlives the request on a keep-alive connection; the next request's hook replaces this.
        caller?.onLeave { [weak exchange] in exchange?.disconnect() }
        // An app that does not start its answer in time is cancelled (CancelledError in it): its slot comes back.
        let timer = Task { [headTimeout] in
            try await Task.sleep(for: headTimeout)
            exchange.abandon("no answer within \(headTimeout)")
        }
        let first = await exchange.next()
        timer.cancel()
        if exchange.abandoned {
            logger.warning(
                "a request to the ASGI app was cancelled: it did not start its answer in time",
                metadata: ["path": "\(path)", "asgi_head_timeout": "\(headTimeout)"])
            return .error(.timeout, "the ASGI app did not start its answer within \(headTimeout); the request was cancelled")
        }
        switch first {
        case .head(let status, let appHeaders, let route):
            var fields = HTTPFields()
            for h in appHeaders {
                let nameText = String(decoding: h.name, as: UTF8.self)
                guard !ASGIForwarding.hopByHop.contains(nameText.lowercased()), let name = HTTPField.Name(nameText) else { continue }
                fields.append(HTTPField(name: name, value: String(decoding: h.value, as: UTF8.self)))
            }
            fields[NeutrinoHeader.asgiRoute] = route.isEmpty ? "unmatched" : route
            return Response(
                status: HTTPResponse.Status(code: status), headers: fields,
                body: ResponseBody { writer in try await Self.stream(exchange, to: &writer) })
        case .body, .end(error: nil), nil:
            exchange.disconnect()
            return .error(.internalError, "the ASGI app ended without starting a response")
        case .end(error: .some):
            // The traceback is in the worker's log (neutrino._asgi), not in the answer.
            return .error(.internalError, "the ASGI app raised before it answered; see the worker's log")
        case .rejected(let reason):
            if caller?.hasLeft == true {
                logger.info("a request to the ASGI app was not started: its client left while it waited for a slot", metadata: ["path": "\(path)"])
            }
            return .error(.workerUnavailable, reason, headers: [.retryAfter: "1", NeutrinoHeader.rejected: "1"])
        }
    }

    /// Writes the body chunks as they come; the client going away (a failed write) is passed on to the app.
    private static func stream(_ exchange: ASGIExchange, to writer: inout any ResponseBodyWriter) async throws {
        var complete = false
        defer { if !complete { exchange.disconnect() } }
        loop: while let event = await exchange.next() {
            switch event {
            case .body(let bytes, let more):
                if !bytes.isEmpty { try await writer.write(ByteBuffer(bytes: bytes)) }
                if !more { break loop }
            case .end(let error):
                // Ended without its last chunk: cut the response short (the client sees it incomplete).
                if error != nil { throw ASGIAbort() }
                break loop
            case .head, .rejected:
                throw ASGIAbort()
            }
        }
        complete = true
        try await writer.finish(nil)
    }

    struct ASGIAbort: Error {}

    static func split(_ target: String) -> (path: String, query: String) {
        guard let q = target.firstIndex(of: "?") else { return (target, "") }
        return (String(target[..<q]), String(target[target.index(after: q)...]))
    }

    /// `host:port` (or `[v6]:port`) split; empty when absent.
    static func hostPort(_ text: String?) -> (host: String, port: String) {
        guard let text, !text.isEmpty else { return ("", "") }
        guard let colon = text.lastIndex(of: ":"), !text.hasSuffix("]") else { return (text, "80") }
        var host = String(text[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        let port = String(text[text.index(after: colon)...])
        return (host, port.allSatisfy(\.isNumber) ? port : "80")
    }
}
