import Glibc
import HTTPTypes
import Hummingbird
import HummingbirdCore
import Logging
import NIOCore
import NeutrinoCore
import ServiceLifecycle

/// Headers the gateway and the workers exchange (internal to Neutrino).
public enum NeutrinoHeader {
    /// The task id the gateway assigned; a worker called directly makes its own.
    /// W3C Trace Context: the caller's span, which the worker's execution span continues.
    public static let traceParent = HTTPField.Name("traceparent")!
    public static let taskID = HTTPField.Name("X-Neutrino-Task-Id")!
    /// The attempt number (1 for sync calls).
    public static let attempt = HTTPField.Name("X-Neutrino-Attempt")!
    /// On a call to a worker: the caller (the gateway) records the call's lifecycle itself, what the task printed
    /// included (`outputOffset`), and takes answers up to this many bytes; the worker then writes to the task log only
    /// what the caller cannot (see `CallerRecordedCalls`). (Named anew when the caller began taking the output: a
    /// worker or gateway of an older release ignores the other's header, and the worker records everything itself.)
    public static let callerRecords = HTTPField.Name("X-Neutrino-Caller-Records-Output")!
    /// On a call to a worker: how many milliseconds the caller (the gateway) still waits for the answer; a call still
    /// queued in the worker after that is not run.
    public static let callerWaitsMs = HTTPField.Name("X-Neutrino-Caller-Waits-Ms")!
    /// On a worker's answer: the task's status, worker id and execution time.
    public static let status = HTTPField.Name("X-Neutrino-Status")!
    public static let worker = HTTPField.Name("X-Neutrino-Worker")!
    public static let durationMs = HTTPField.Name("X-Neutrino-Duration-Ms")!
    /// On a worker's answer: when the Python thread started the call (Unix milliseconds).
    public static let startedAt = HTTPField.Name("X-Neutrino-Started-At")!
    /// On a worker's answer: byte offset in the body where the raw `result` (or `error`) JSON starts; it runs to
    /// the body's last byte but one. Lets the gateway log the outcome without parsing the body again.
    public static let outcomeOffset = HTTPField.Name("X-Neutrino-Outcome-Offset")!
    /// On a worker's answer to a caller that records the call: where what the task printed starts in the body (it
    /// runs to the end, after the answer's own JSON). The caller records it with the outcome and relays only the
    /// bytes before it.
    public static let outputOffset = HTTPField.Name("X-Neutrino-Output-Offset")!
    /// On a worker's answer to a sync call: the port of its call lane (`CallFrame`), which its gateways use for the
    /// calls that follow.
    public static let lane = HTTPField.Name("X-Neutrino-Lane")!
    /// On a worker's answer to a sync call: how many calls it takes at once from one gateway
    /// (`PythonExecutor.callsAtOnce`); the gateway keeps no more in flight to it and lines the rest up, as an HTTP/2
    /// client keeps to a server's `SETTINGS_MAX_CONCURRENT_STREAMS`.
    public static let maxCalls = HTTPField.Name("X-Neutrino-Max-Calls")!
    /// On a worker's answer to a sync call, when it has coroutine slots as well as threads: how many of those calls may
    /// be of plain-function tasks (`PythonExecutor.threadCallsAtOnce`), which take its Python threads.
    public static let maxThreadCalls = HTTPField.Name("X-Neutrino-Max-Thread-Calls")!
    /// On a request the gateway forwards to the mounted ASGI app: the client's address (`host:port`) and the
    /// gateway's own (`host:port`), for the ASGI scope's `client` and `server`.
    public static let asgiClient = HTTPField.Name("X-Neutrino-Client")!
    public static let asgiServer = HTTPField.Name("X-Neutrino-Server")!
    /// On an ASGI answer: the pattern of the app's route that matched (`/items/{item_id}`), for the gateway's
    /// metrics; the gateway removes it before relaying.
    public static let asgiRoute = HTTPField.Name("X-Neutrino-Route")!
    /// On an answer the worker made itself instead of the app (no slot free, shutting down): the gateway may try
    /// another worker, since nothing ran.
    public static let rejected = HTTPField.Name("X-Neutrino-Rejected")!
}

/// Where the gateway forwards requests for the mounted ASGI app on a worker: this prefix, then the request target as
/// the client sent it (`GET /_neutrino_asgi/items/3?q=x` is the app's `GET /items/3?q=x`).
public enum ASGIForwarding {
    public static let prefix = "/_neutrino_asgi"

    /// Hop-by-hop headers (RFC 9110 7.6.1), never forwarded in either direction.
    public static let hopByHop: Set<String> = [
        "connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade",
        "proxy-authenticate", "proxy-authorization",
    ]
}

extension Response {
    /// A JSON response from bytes the JSON writer built.
    public static func json(_ status: HTTPResponse.Status, _ bytes: [UInt8], headers: HTTPFields = [:]) -> Response {
        var fields = headers
        fields[.contentType] = "application/json"
        return Response(status: status, headers: fields, body: ResponseBody(byteBuffer: ByteBuffer(bytes: bytes)))
    }

    /// `{"error":{"type","message",…}}` with the error's own status.
    public static func error(
        _ error: APIError, _ message: String, headers: HTTPFields = [:],
        extra: (inout JSONWriter) -> Void = { _ in }
    ) -> Response {
        CallAnswer.error(error, message, headers: headers, extra: extra).response
    }

    /// `{"error":{"type","message",…}}` with `status` (for a status other than the error's own).
    public static func error(
        _ status: HTTPResponse.Status, type: String, message: String, headers: HTTPFields = [:],
        extra: (inout JSONWriter) -> Void = { _ in }
    ) -> Response {
        .json(status, JSONWriter.errorBody(type: type, message: message, extra: extra), headers: headers)
    }
}

/// An answer made outside the router (`CallHandler`): status, headers (Content-Type is always JSON, added where it
/// is written) and body.
public struct CallAnswer: Sendable {
    public var status: HTTPResponse.Status
    public var headers: HTTPFields
    public var body: [UInt8]

    public init(status: HTTPResponse.Status, headers: HTTPFields, body: [UInt8]) {
        self.status = status
        self.headers = headers
        self.body = body
    }

    /// `{"error":{"type","message",…}}` with the error's own status.
    public static func error(
        _ error: APIError, _ message: String, headers: HTTPFields = [:], extra: (inout JSONWriter) -> Void = { _ in }
    ) -> CallAnswer {
        CallAnswer(
            status: HTTPResponse.Status(code: error.statusCode), headers: headers,
            body: JSONWriter.errorBody(type: error.type, message: message, extra: extra))
    }

    /// The same answer through the router.
    public var response: Response { .json(status, body, headers: headers) }
}

/// Thrown into a request's body stream when the body does not arrive within the server's body timeout.
public struct RequestBodyTimedOut: Error, Sendable {
    public init() {}
}

/// Why a request body could not be read.
public enum BodyReadError: Error, Sendable {
    case tooLarge(limit: Int)
    case timedOut
    case unreadable(String)

    /// The answer, through the router (`response`) or from `CallHandler` (`answer`).
    public var answer: CallAnswer {
        switch self {
        case .tooLarge(let limit):
            .error(.payloadTooLarge, "request body is larger than \(limit) bytes")
        case .timedOut:
            .error(.requestTimeout, "the request body did not arrive in time (--body-timeout)", headers: [.connection: "close"])
        case .unreadable(let reason):
            .error(.badRequest, "cannot read the request body: \(reason)")
        }
    }

    public var response: Response { answer.response }

    /// 413 for a call whose body is past `limit`, counted in `neutrino_http_rejected_total{reason="body_too_large"}`:
    /// the one refusal of `CallHandler` and the worker's call lane.
    public static func refuseTooLarge(limit: Int) -> CallAnswer {
        HTTPRejections.count("body_too_large")
        return BodyReadError.tooLarge(limit: limit).answer
    }
}

extension Request {
    /// The whole body, refused past `limit` bytes (413) without reading the rest into memory.
    public func collectBody(limit: Int) async throws(BodyReadError) -> [UInt8] {
        if let declared = headers[.contentLength], let length = Int(declared), length > limit {
            HTTPRejections.count("body_too_large")
            throw .tooLarge(limit: limit)
        }
        do {
            var buffer = try await body.collect(upTo: limit)
            return buffer.readBytes(length: buffer.readableBytes) ?? []
        } catch is NIOTooManyBytesError {
            HTTPRejections.count("body_too_large")
            throw .tooLarge(limit: limit)
        } catch is RequestBodyTimedOut {
            throw .timedOut
        } catch {
            throw .unreadable("\(error)")
        }
    }
}

/// Limits of an HTTP server's connections (Hummingbird's HTTP/1.1 channel and accept loop).
public struct ServerLimits: Sendable {
    /// A kept-alive connection with no request for this long is closed.
    public var idleTimeout: Duration? = .seconds(60)
    /// The largest request head (request line and headers).
    public var maxHeaderBytes = 32 * 1024
    /// The most header fields of one request.
    public var maxHeaderCount = 100
    /// Connections accepted at once; beyond it the server stops accepting (they wait in the listen backlog).
    public var maxAcceptedConnections: Int?
    /// The listen backlog: connections the kernel completes before the server accepts them (capped by
    /// `net.core.somaxconn`, 4096 on current kernels). Hummingbird's 256 turned a burst of 1,024 new connections into
    /// SYNs dropped and retried a second later; 2048 is uvicorn's and gunicorn's default.
    public var backlog = 2048
    /// Connections accepted each time the listening socket wakes the event loop. NIO's default, 4, let a burst of
    /// 1,024 new connections trickle in while the loop served the ones it had: the last first requests waited up to
    /// 2 s (p99 of `/healthz` at 1,024 connections: 0.98–1.05 s, against 59–66 ms at 256; bench/README.md,
    /// "twenty-ninth round"). asyncio accepts up to its backlog per wake-up. The accept pause
    /// (`maxAcceptedConnections`) is checked between wake-ups, so it may be passed by up to this many less one.
    public var acceptsPerWakeup: UInt = 256
    /// Channel handlers added to every connection after the HTTP codec (a connection guard).
    public var channelHandlers: @Sendable () -> [any RemovableChannelHandler] = { [] }
    /// Channel handlers added to every connection right in front of the router, behind Hummingbird's connection state
    /// handler (which then sees every request and answer): handlers that answer some requests themselves.
    public var requestHandlers: @Sendable () -> [any ChannelHandler] = { [] }

    public init() {}
}

/// A Hummingbird application on `host:port` that announces its bound address (see `announceListening`), counts
/// every request in `neutrino_http_requests_total{route,code}`, and tells `onListening` the bound port. `limits`
/// bound its connections (idle time, header size, how many are accepted, a guard per connection).
///
/// `services` run beside the server in its service group; on graceful shutdown the server stops first (it drains its
/// requests), then the services in reverse order of the list.
public func makeApplication<Context: RequestContext>(
    router: Router<Context>, host: String, port: Int, serverName: String,
    services: [any Service] = [], limits: ServerLimits = ServerLimits(),
    logger: Logger, onListening: @escaping @Sendable (Int) -> Void = { _ in }
) -> some ApplicationProtocol
where Context.Source == ApplicationRequestContextSource {
    let decoder = HTTP1Channel.Configuration.DecoderConfiguration(
        maxHeaderFieldSize: limits.maxHeaderBytes, maxHeaderListSize: limits.maxHeaderBytes, maxHeaderFieldCount: limits.maxHeaderCount)
    let handlers = limits.channelHandlers
    let http1 = HTTP1Channel.Configuration(
        additionalChannelHandlers: handlers(), idleTimeout: limits.idleTimeout.map(TimeAmount.init),
        httpDecoderConfiguration: decoder)
    return Application(
        router: router,
        server: .http1OnEventLoops(configuration: http1, requestHandlers: limits.requestHandlers),
        configuration: .init(
            address: .hostname(host, port: port), serverName: serverName, backlog: limits.backlog,
            availableConnectionsDelegate: limits.maxAcceptedConnections.map { MaximumAvailableConnections($0, logger: logger) }),
        services: services,
        onServerRunning: { channel in
            // Set on the listening channel once it is bound: Hummingbird's bootstrap takes no server channel options.
            try? await channel.setOption(ChannelOptions.maxMessagesPerRead, value: limits.acceptsPerWakeup).get()
            announceListening(channel, host: host)
            onListening(channel.localAddress?.port ?? 0)
        },
        logger: logger)
}

/// Prints `listening on http://HOST:PORT` on stdout once the server is bound, so a supervisor or test that
/// asked for port 0 learns the real one.
public func announceListening(_ channel: any Channel, host: String) {
    let port = channel.localAddress?.port ?? 0
    printForSupervisor("listening on http://\(host):\(port)")
}

/// Prints `line` on stdout and flushes it at once: the lines a supervisor (`neutrino up`, a test) waits for in a
/// process's output (`listening on …`, `consuming … from …`, `started its first task`), which must not sit in a buffer
/// while the process runs on.
public func printForSupervisor(_ line: String) {
    print(line)
    fflush(nil)  // flushes every output stream, stdout included
}
