import NIOCore
import NIOHTTP1
import NeutrinoCore
import NeutrinoHTTP
import Synchronization

/// The gateway's per-connection limits, enforced on the event loop before Hummingbird sees a request:
///
/// - **header timeout**: a request's head must arrive within `headerTimeout` of the connection opening, or of its
///   first byte on a kept-alive connection; else `408 RequestTimeout` and the connection is closed (slowloris);
/// - **body timeout**: its body within `bodyTimeout` of the head; else the handler reading it gets
///   `RequestBodyTimeout` (answered 408) and the connection is closed shortly after;
/// - **connections**: beyond `maxConnections` open connections, a new connection's first request is answered
///   `503 Overloaded` with Retry-After and the connection closed (Hummingbird's accept pause, set a little higher,
///   bounds the file descriptors even against clients that never send a byte);
/// - **malformed requests** the HTTP decoder refuses before a request began (headers larger than the limit, a
///   Content-Length together with Transfer-Encoding, bad syntax) are answered with the JSON error body, `431
///   HeadersTooLarge` or `400 BadRequest`, instead of Hummingbird's empty 400.
///
/// Every refusal is counted in `neutrino_http_rejected_total{reason}`. Keep-alive idleness is Hummingbird's
/// `idleTimeout`.
struct ConnectionGuardSettings: Sendable {
    var headerTimeout: TimeAmount
    var bodyTimeout: TimeAmount
    let counter: ConnectionCounter

    /// What Hummingbird adds after its HTTP codec: the installer, which puts the guard where it belongs.
    func handlers() -> [any RemovableChannelHandler] {
        [ConnectionGuardInstaller(settings: self)]
    }
}

/// Open connections of one server, against the limit.
final class ConnectionCounter: Sendable {
    let limit: Int
    private let open = Atomic<Int>(0)

    init(limit: Int) { self.limit = max(1, limit) }

    /// Counts a new connection; false when it is over the limit (it is counted all the same until it leaves).
    func enter() -> Bool { open.wrappingAdd(1, ordering: .relaxed).newValue <= limit }
    func leave() { open.wrappingSubtract(1, ordering: .relaxed) }
    var current: Int { open.load(ordering: .relaxed) }
}

/// Added after Hummingbird's codec (where HTTPTypes parts flow); inserts the guard right after NIO's request decoder,
/// where it sees NIOHTTP1's parts and the decoder's errors, and a byte sniffer at the front of the pipeline. Then it
/// only passes data through.
final class ConnectionGuardInstaller: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny
    let settings: ConnectionGuardSettings

    init(settings: ConnectionGuardSettings) { self.settings = settings }

    func handlerAdded(context: ChannelHandlerContext) {
        let ops = context.pipeline.syncOperations
        guard let decoder = try? ops.handler(type: ByteToMessageHandler<HTTPRequestDecoder>.self) else { return }
        let guardHandler = ConnectionGuard(settings: settings)
        do {
            try ops.addHandler(guardHandler, position: .after(decoder))
            try ops.addHandler(RequestStartSniffer(guardHandler: guardHandler), position: .first)
        } catch {
            context.close(promise: nil)
        }
    }
}

/// Tells the guard when bytes arrive, before the decoder has made anything of them: the start of a request.
final class RequestStartSniffer: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    private let guardHandler: ConnectionGuard

    init(guardHandler: ConnectionGuard) { self.guardHandler = guardHandler }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guardHandler.bytesArrived()
        context.fireChannelRead(data)
    }
}

final class ConnectionGuard: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    private let settings: ConnectionGuardSettings
    private var context: ChannelHandlerContext?
    private var counted = false
    private var overCapacity = false
    /// Heads received whose response has not ended.
    private var responsesOwed = 0
    /// Between a request's head and its end.
    private var readingBody = false
    /// Refused or timed out: drop what else arrives and close.
    private var closing = false
    /// An HTTP/1.0 request without keep-alive: the connection ends with its response.
    private var closeAfterResponse = false
    /// When the head being awaited is late (nil: none awaited).
    private var headerDeadline: NIODeadline?
    /// When the body being read is late (nil: none being read).
    private var bodyDeadline: NIODeadline?
    /// One timer for both deadlines (a timer scheduled and cancelled twice per request cost about 1 % of the
    /// gateway's CPU at c=32).
    private var timer = DeadlineTimer()

    init(settings: ConnectionGuardSettings) { self.settings = settings }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        counted = true
        overCapacity = !settings.counter.enter()
        armHeaderTimer()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        leave()
        self.context = nil
    }

    func channelInactive(context: ChannelHandlerContext) {
        leave()
        context.fireChannelInactive()
    }

    private func leave() {
        timer.cancel()
        headerDeadline = nil
        bodyDeadline = nil
        if counted {
            counted = false
            settings.counter.leave()
        }
    }

    /// Bytes arrived: if no request is being read, one is starting and its head is now timed.
    func bytesArrived() {
        if !readingBody && headerDeadline == nil && !closing { armHeaderTimer() }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if closing { return }
        switch unwrapInboundIn(data) {
        case .head(let head):
            headerDeadline = nil
            if overCapacity {
                HTTPRejections.count("connections")
                refuse(
                    context, status: .serviceUnavailable, error: .overloaded,
                    message: "the server has \(settings.counter.limit) open connections (--max-connections); retry later",
                    retryAfter: "1")
                return
            }
            responsesOwed += 1
            readingBody = true
            if head.version.major == 1 && head.version.minor == 0,
                head.headers[canonicalForm: "connection"].contains(where: { $0.lowercased() == "keep-alive" }) == false
            {
                closeAfterResponse = true
            }
            armBodyTimer()
        case .body:
            break
        case .end:
            readingBody = false
            bodyDeadline = nil
        }
        context.fireChannelRead(data)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        guard case .end = unwrapOutboundIn(data) else {
            context.write(data, promise: promise)
            return
        }
        responsesOwed = max(0, responsesOwed - 1)
        guard closeAfterResponse && responsesOwed == 0 else {
            context.write(data, promise: promise)
            return
        }
        // HTTP/1.0 without keep-alive: the response ends the connection (Hummingbird would keep it open).
        let loopContext = NIOLoopBound(context, eventLoop: context.eventLoop)
        let written = context.eventLoop.makePromise(of: Void.self)
        written.futureResult.whenComplete { _ in loopContext.value.close(promise: nil) }
        written.futureResult.cascade(to: promise)
        context.writeAndFlush(data, promise: written)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if closing { return }  // what arrives after a refusal is drained, errors included
        // A request the decoder refused before its head was delivered, with nothing else in progress, is answered
        // here with the JSON error body; otherwise the error goes on to Hummingbird (and the handler reading a body).
        if let parserError = error as? HTTPParserError, responsesOwed == 0, !readingBody {
            headerDeadline = nil
            if case .headerOverflow = parserError {
                HTTPRejections.count("headers_too_large")
                refuse(
                    context, status: .requestHeaderFieldsTooLarge, error: .headersTooLarge,
                    message: "the request's header section is larger than the server accepts (--max-header-bytes)")
            } else {
                HTTPRejections.count("bad_request")
                refuse(context, status: .badRequest, error: .badRequest, message: "malformed HTTP request: \(parserError)")
            }
            return
        }
        context.fireErrorCaught(error)
    }

    private func armHeaderTimer() {
        let deadline = NIODeadline.now() + settings.headerTimeout
        headerDeadline = deadline
        wake(at: deadline)
    }

    private func armBodyTimer() {
        let deadline = NIODeadline.now() + settings.bodyTimeout
        bodyDeadline = deadline
        wake(at: deadline)
    }

    private func wake(at deadline: NIODeadline) {
        guard let context else { return }
        timer.fire(by: deadline, on: context.eventLoop.assumeIsolated()) { [self] in
            timer.fired()
            deadlinesReached()
        }
    }

    /// The timer fired: act on the deadlines that passed, re-arm for the ones still ahead.
    private func deadlinesReached() {
        let now = NIODeadline.now()
        if let deadline = headerDeadline, deadline <= now {
            headerDeadline = nil
            headerTimedOut()
        }
        if let deadline = bodyDeadline, deadline <= now {
            bodyDeadline = nil
            bodyTimedOut()
        }
        if let next = [headerDeadline, bodyDeadline].compactMap({ $0 }).min() { wake(at: next) }
    }

    private func headerTimedOut() {
        guard let context, !closing else { return }
        HTTPRejections.count("header_timeout")
        if responsesOwed == 0 {
            refuse(
                context, status: .requestTimeout, error: .requestTimeout,
                message: "the request head did not arrive within \(Self.seconds(settings.headerTimeout)) (--header-timeout)")
        } else {
            closing = true
            context.close(promise: nil)
        }
    }

    private func bodyTimedOut() {
        guard let context, readingBody, !closing else { return }
        HTTPRejections.count("body_timeout")
        // The handler reading the body answers 408; the rest of the body is dropped and the connection closed
        // once that answer had time to leave.
        closing = true
        readingBody = false
        context.fireErrorCaught(RequestBodyTimedOut())
        context.eventLoop.assumeIsolated().scheduleTask(in: .seconds(2)) { self.context?.close(promise: nil) }
    }

    /// Answers with the JSON error body and `Connection: close`, then ends the connection the way that lets the
    /// client read the answer: our side is shut once it is written, what the client still sends is drained, and the
    /// socket is closed after a short grace (closing at once with unread input would reset the connection, and the
    /// reset can destroy the answer before the client reads it).
    private func refuse(
        _ context: ChannelHandlerContext, status: HTTPResponseStatus, error: APIError, message: String,
        retryAfter: String? = nil
    ) {
        closing = true
        let body = JSONWriter.errorBody(type: error.type, message: message)
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: "application/json")
        headers.add(name: "Content-Length", value: String(body.count))
        headers.add(name: "Connection", value: "close")
        if let retryAfter { headers.add(name: "Retry-After", value: retryAfter) }
        let head = HTTPResponseHead(version: .http1_1, status: status, headers: headers)
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(bytes: body)))), promise: nil)
        let loopContext = NIOLoopBound(context, eventLoop: context.eventLoop)
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in
            let context = loopContext.value
            context.close(mode: .output, promise: nil)
            context.eventLoop.assumeIsolated().scheduleTask(in: Self.lingering) { context.close(promise: nil) }
        }
    }

    /// How long a refused connection's input is drained before the socket is closed.
    static let lingering = TimeAmount.seconds(2)

    static func seconds(_ amount: TimeAmount) -> String {
        let ms = amount.nanoseconds / 1_000_000
        return ms % 1000 == 0 ? "\(ms / 1000) s" : "\(ms) ms"
    }
}
