import HTTPTypes
import Hummingbird
import NIOCore
import NIOHTTPTypes
import NeutrinoCore

/// Answers the requests `Calls.claim` takes (`POST /api/<sync task>`, in the worker and in the gateway) on the
/// connection's event loop, without Hummingbird's router: the request parts are gathered here, `Calls.start` runs the
/// call and hands back its answer from any thread, and the answer is written from the event loop. Every other
/// request, and a call this handler leaves alone (one that expects `100-continue`, one pipelined behind a request the
/// router still serves), goes on to the router unchanged.
///
/// It sits behind Hummingbird's `HTTPConnectionStateHandler` (`ServerLimits.requestHandlers`), which therefore sees
/// every request and answer: the idle timeout and graceful shutdown (a connection closes once its answer is written)
/// cover these calls too. docs/architecture.md has what it saves.
public final class CallHandler: ChannelDuplexHandler, RemovableChannelHandler {
    public typealias InboundIn = HTTPRequestPart
    public typealias InboundOut = HTTPRequestPart
    public typealias OutboundIn = HTTPResponsePart
    public typealias OutboundOut = HTTPResponsePart

    /// What the handler needs of its server: which requests it takes, and how a call runs.
    public struct Calls: Sendable {
        /// The task a request head calls, when this handler should serve it.
        let claim: @Sendable (HTTPRequest) -> String?
        let maxBodyBytes: Int
        /// The `Server` header, as the router's answers have it.
        let serverName: String
        /// The route its answers are counted under in `neutrino_http_requests_total`, as the router names it.
        let route: String
        /// Runs the call; `answer` is called once, on any thread. `executor` runs a task on the connection's event
        /// loop (one per connection), for a call that needs one; `caller` says when the client leaves (the
        /// connection's presence, from `presences`).
        let start:
            @Sendable (
                _ task: String, _ request: HTTPRequest, _ body: [UInt8], _ executor: EventLoopTaskExecutor,
                _ caller: CallerPresence, _ answer: @escaping @Sendable (CallAnswer) -> Void
            ) -> Void
        /// Whether each connection's client is still there: `handlers` puts its handler in front of this one.
        let presences: ConnectionPresences

        public init(
            claim: @escaping @Sendable (HTTPRequest) -> String?, maxBodyBytes: Int, serverName: String, route: String,
            presences: ConnectionPresences,
            start:
                @escaping @Sendable (
                    String, HTTPRequest, [UInt8], EventLoopTaskExecutor, CallerPresence, @escaping @Sendable (CallAnswer) -> Void
                ) -> Void
        ) {
            self.claim = claim
            self.maxBodyBytes = maxBodyBytes
            self.serverName = serverName
            self.route = route
            self.presences = presences
            self.start = start
        }
    }

    /// The call this handler is serving: its body while it arrives, then the wait for Python.
    private struct Current {
        var task: String
        var head: HTTPRequest
        var body: ByteBuffer
        var closeAfter: Bool
        var bodyDone = false
        /// Answered already (413 before the whole body arrived): the rest of the body is read and dropped.
        var answered = false
    }

    private let calls: Calls
    private var current: Current?
    /// Requests handed on to the router that it has not answered yet (their answers end with `.end`).
    private var routed = 0
    /// Whether the parts arriving belong to a request handed on to the router.
    private var routing = false
    /// Parts of requests that arrived while a call was served here (pipelining), handled once it is answered.
    private var waiting: [HTTPRequestPart] = []
    /// A read the channel asked for while the call waited for Python with a whole pipelined request waiting
    /// (`holdsRead`); issued once it is answered.
    private var readHeld = false
    private var active = true
    /// The `Date` header of this connection's answers, made again once a second (as Hummingbird's router does).
    private var date = (second: Int64(-1), text: "")
    /// This connection's event loop as a task executor (made with the handler).
    private var executor: EventLoopTaskExecutor?
    /// Whether this connection's client is still there (`ConnectionPresences`' handler, in front of this one, marks
    /// it): a call waiting for a worker with room leaves the line when it goes, and an answer after that is counted
    /// as nginx logs it, 499, not by the status nobody received.
    private var caller = CallerPresence()  // the connection's, from `handlerAdded` on

    private init(calls: Calls) { self.calls = calls }

    /// The handlers a server puts in each connection for `calls`: the presence of its client, then this one.
    public static func handlers(_ calls: Calls) -> [any ChannelHandler] {
        [calls.presences.handler(), CallHandler(calls: calls)]
    }

    /// `POST /api/<name>`: the name (without a query), for a server's `claim`; nil for any other request.
    public static func apiTaskName(_ head: HTTPRequest) -> String? {
        guard head.method == .post, let target = head.path, target.hasPrefix("/api/") else { return nil }
        let path = target.utf8.firstIndex(of: UInt8(ascii: "?")).map { target[..<$0] } ?? target[...]
        return String(path.dropFirst(5))
    }

    public func handlerAdded(context: ChannelHandlerContext) {
        executor = EventLoopTaskExecutor(context.eventLoop)
        caller = calls.presences.opened(ObjectIdentifier(context.channel))
    }

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        handle(unwrapInboundIn(data), context: context)
    }

    private func handle(_ part: HTTPRequestPart, context: ChannelHandlerContext) {
        if var call = current {
            guard !call.bodyDone else { return waiting.append(part) }
            switch part {
            case .head:
                // A head inside a body cannot come from the HTTP decoder; drop the connection rather than guess.
                context.close(promise: nil)
            case .body(var bytes):
                guard !call.answered else { return }
                if call.body.readableBytes + bytes.readableBytes > calls.maxBodyBytes {
                    current?.answered = true
                    respond(tooLarge, context: context)
                } else {
                    current = nil  // keep the buffer uniquely referenced while it grows
                    call.body.writeBuffer(&bytes)
                    current = call
                }
            case .end:
                current?.bodyDone = true
                if call.answered {
                    finishCall(context: context)
                } else {
                    run(call, context: context)
                }
            }
            return
        }
        if routing {
            if case .end = part { routing = false }
            return context.fireChannelRead(wrapInboundOut(part))
        }
        guard case .head(let head) = part else {
            // Body or end without a head: the decoder never does this; leave it to the router's error handling.
            return context.fireChannelRead(wrapInboundOut(part))
        }
        if routed == 0, head.headerFields[.expect] == nil, let task = calls.claim(head) {
            current = Current(
                task: task, head: head, body: context.channel.allocator.buffer(capacity: 0),
                closeAfter: head.headerFields[.connection]?.lowercased() == "close")
            if let declared = head.headerFields[.contentLength], let length = Int(declared), length > calls.maxBodyBytes {
                current?.answered = true
                respond(tooLarge, context: context)
            }
            return
        }
        routed += 1
        routing = true
        context.fireChannelRead(wrapInboundOut(part))
    }

    /// 413, the router's answer to a body past the limit; the rest of the body is read and dropped.
    private var tooLarge: CallAnswer { BodyReadError.refuseTooLarge(limit: calls.maxBodyBytes) }

    private func run(_ call: Current, context: ChannelHandlerContext) {
        var body = call.body
        let bytes = body.readBytes(length: body.readableBytes) ?? []
        let loop = context.eventLoop
        let bound = NIOLoopBound((self, context), eventLoop: loop)
        let executor = self.executor ?? EventLoopTaskExecutor(loop)
        calls.start(call.task, call.head, bytes, executor, caller) { answer in
            loop.execute {
                let (handler, context) = bound.value
                handler.respond(answer, context: context)
                handler.finishCall(context: context)
            }
        }
    }

    /// Writes the answer to the call being served (dropped when the connection is gone: the call's outcome is in
    /// the task log either way).
    private func respond(_ answer: CallAnswer, context: ChannelHandlerContext) {
        HTTPRequestCounter.count(route: calls.route, code: caller.hasLeft || !active ? Self.clientClosedRequest : answer.status.code)
        guard active else { return }
        var fields = answer.headers
        fields[.contentType] = "application/json"
        fields[.contentLength] = String(answer.body.count)
        if current?.closeAfter == true { fields[.connection] = "close" }
        let now = Timestamp.now()
        if now.millis / 1000 != date.second { date = (now.millis / 1000, now.httpDate) }
        fields[.date] = date.text
        fields[.server] = calls.serverName
        context.write(wrapOutboundOut(.head(HTTPResponse(status: answer.status, headerFields: fields))), promise: nil)
        context.write(wrapOutboundOut(.body(context.channel.allocator.buffer(bytes: answer.body))), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
    }

    /// Once the call is answered and its body read: closes the connection if the client asked, else goes on with
    /// the requests that arrived meanwhile and lets the channel read again.
    private func finishCall(context: ChannelHandlerContext) {
        guard let call = current, call.bodyDone else { return }
        current = nil
        guard active else { return }
        if call.closeAfter {
            waiting.removeAll()
            context.close(promise: nil)
            return
        }
        if !waiting.isEmpty {
            while current?.bodyDone != true, !waiting.isEmpty {
                handle(waiting.removeFirst(), context: context)
            }
            // What went on to the router is delivered to it at the end of a read burst, as for parts read off the socket.
            context.fireChannelReadComplete()
        }
        if readHeld, !holdsRead {
            readHeld = false
            context.read()
        }
    }

    /// Whether reading should pause while the call runs: once a whole pipelined request waits (or a body past the
    /// limit, which will be refused anyway). Until then the connection reads on: a client that waits for its answer
    /// sends nothing, and pausing and resuming the read would take two `epoll_ctl` calls a request; and a pipelined
    /// request's body goes on arriving, so the gateway's body timeout does not fire on a request only this pause
    /// kept from being read. What piles up here is one request (its body up to the limit) and one read burst.
    private var holdsRead: Bool {
        guard current?.bodyDone == true else { return false }
        var bodyBytes = 0
        for part in waiting {  // empty for a client that waits for its answer; else one request's parts are looked at
            switch part {
            case .head: break
            case .body(let bytes): bodyBytes += bytes.readableBytes
            case .end: return true
            }
        }
        return bodyBytes > calls.maxBodyBytes
    }

    public func read(context: ChannelHandlerContext) {
        if holdsRead {
            readHeld = true
        } else {
            context.read()
        }
    }

    public func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        // The router's answers pass here on their way out; each ends with `.end`.
        if case .end = unwrapOutboundIn(data), routed > 0 { routed -= 1 }
        context.write(data, promise: promise)
    }

    /// nginx's status for a request whose client closed the connection before the answer.
    static let clientClosedRequest = 499

    public func channelInactive(context: ChannelHandlerContext) {
        active = false
        waiting.removeAll()
        context.fireChannelInactive()
    }

    public func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // A body that stops arriving (the gateway's connection guard raises this) or cannot be decoded: answered as
        // the router's body reading would, and the connection ends (its byte stream is no longer in step).
        guard let call = current, !call.bodyDone, !call.answered else { return context.fireErrorCaught(error) }
        current?.closeAfter = true
        respond((error is RequestBodyTimedOut ? BodyReadError.timedOut : .unreadable("\(error)")).answer, context: context)
        current = nil
        context.close(promise: nil)
    }
}
