import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import NeutrinoCore
import NeutrinoHTTP
import Synchronization

/// Keep-alive HTTP/1.1 connections to one worker, one request in flight per connection.
///
/// The gateway talks to its own workers only: short JSON bodies, `Content-Length` always set, no redirects, no TLS,
/// no decompression. A small client on SwiftNIO does exactly that with a fraction of a general-purpose client's work
/// per request (measured: see docs/architecture.md), and makes the one distinction the circuit breaker needs:
/// whether the request could have reached the worker.
final class WorkerConnections: Sendable {
    struct Reply: Sendable {
        var status: Int
        var headers: HTTPHeaders
        var body: ByteBuffer
    }

    enum Failure: Error, Sendable {
        /// Could not connect: the request never left the gateway.
        case unreachable(String)
        /// The connection broke after the request was written: the worker may have run it.
        case lost(String)
        case timedOut
        /// `limit` calls to this worker are in flight, as many as it takes at once (`announced`: as it said in
        /// `X-Neutrino-Max-Calls`; else `maxConnections`), or `limit` calls of plain-function tasks, as many as it said
        /// its threads take (`threads`, `X-Neutrino-Max-Thread-Calls`): the request never left the gateway.
        case saturated(limit: Int, announced: Bool, threads: Bool = false)
        /// The worker's answer is larger than `maxAnswerBytes` (it ran the task; the answer was not read).
        case answerTooLarge(limit: Int)
    }

    struct Pooled {
        let channel: any Channel
        let since: NIODeadline
    }

    /// Idle connections are kept by event loop and by kind (HTTP, or the call lane).
    struct PoolKey: Hashable {
        let loop: ObjectIdentifier
        let lane: Bool
    }

    let host: String
    let port: Int
    /// Connections to this worker, busy and idle together (`--worker-connections`).
    let maxConnections: Int
    /// How many calls the worker takes at once, as its answers say (`X-Neutrino-Max-Calls`); 0 until one has.
    private let announcedMax = Atomic<Int>(0)
    /// How many of them may be calls of plain-function tasks, which take its Python threads
    /// (`X-Neutrino-Max-Thread-Calls`, said by a worker that also has coroutine slots); 0: no bound of its own.
    private let announcedThreadMax = Atomic<Int>(0)
    /// Calls of plain-function tasks in flight to the worker.
    private let threadCalls = Atomic<Int>(0)
    /// The largest answer read from this worker.
    let maxAnswerBytes: Int
    private let group: any EventLoopGroup
    /// Called when a connection is given back or closes: room for a call that found every connection busy.
    private let onRoom: @Sendable () -> Void
    /// Idle connections by the event loop they run on: a call takes one on its own loop first, so a request the
    /// gateway serves on a loop (`EventLoopBoundChannel`) reaches the worker and gets its answer on that same thread.
    private let idle = NIOLockedValueBox<[PoolKey: [Pooled]]>([:])
    /// The worker's call lane, once announced.
    private let lane = LaneAvailability()
    private let open = NIOLockedValueBox<Int>(0)
    /// Set when the worker left its pool: connections are closed as their calls end instead of pooled.
    private let retired = NIOLockedValueBox<Bool>(false)
    /// An idle connection older than this is closed rather than reused: the worker closes idle connections itself
    /// (its server's idle timeout, 60 s by default), and a request written into a closing one would fail.
    static let maxIdleAge = TimeAmount.seconds(30)
    /// How long a new call-lane connection waits for the worker's greeting (as long as a connect may take).
    static let greetingTimeout = TimeAmount.seconds(1)

    init(
        host: String, port: Int, group: any EventLoopGroup, maxConnections: Int = 128, maxAnswerBytes: Int = 16 << 20,
        onRoom: @escaping @Sendable () -> Void = {}
    ) {
        self.host = host
        self.port = port
        self.group = group
        self.onRoom = onRoom
        self.maxConnections = max(1, maxConnections)
        self.maxAnswerBytes = max(1024, maxAnswerBytes)
    }

    /// Connections open to this worker now.
    var openCount: Int { open.withLockedValue { $0 } }

    /// The most connections (so calls in flight) this worker gets: `maxConnections`, or fewer once the worker has said
    /// it takes fewer calls at once.
    var limit: Int {
        let announced = announcedMax.load(ordering: .relaxed)
        return announced > 0 ? min(announced, maxConnections) : maxConnections
    }

    /// Takes the worker's `X-Neutrino-Max-Calls` and `X-Neutrino-Max-Thread-Calls` from an answer (positive numbers;
    /// anything else is ignored; a worker that no longer says the second has no thread bound of its own).
    private func noteMaxCalls(_ headers: HTTPHeaders) {
        func said(_ name: String) -> Int? {
            guard let text = headers.first(name: name), let value = Int(text), value > 0 else { return nil }
            return value
        }
        if let value = said(NeutrinoHeader.maxCalls.canonicalName), announcedMax.load(ordering: .relaxed) != value {
            announcedMax.store(value, ordering: .relaxed)
        }
        let threads = said(NeutrinoHeader.maxThreadCalls.canonicalName) ?? 0
        if announcedThreadMax.load(ordering: .relaxed) != threads { announcedThreadMax.store(threads, ordering: .relaxed) }
    }

    /// A call of a plain-function task takes one of the places the worker's threads have (when it said how many);
    /// `.saturated` when none is free.
    private func takeThreadPlace() throws(Failure) {
        let bound = announcedThreadMax.load(ordering: .relaxed)
        let now = threadCalls.wrappingAdd(1, ordering: .relaxed).newValue
        guard bound > 0, now > bound else { return }
        threadCalls.wrappingSubtract(1, ordering: .relaxed)
        throw .saturated(limit: bound, announced: true, threads: true)
    }

    /// Gives a thread place back: before the call's connection goes back (or closes), whose return wakes the line.
    private func releaseThreadPlace() {
        threadCalls.wrappingSubtract(1, ordering: .relaxed)
    }

    /// Sends one request and returns the worker's whole answer: over the worker's call lane once it has announced
    /// one (`X-Neutrino-Lane`), else, or while the lane cannot be reached, over HTTP.
    /// `threadCall`: a call of a plain-function task (the manifest's `x-neutrino-coroutine: false`), bounded by the
    /// worker's thread places as well as its connections.
    func send(path: String, headers: HTTPHeaders, body: ByteBuffer, deadline: NIODeadline, threadCall: Bool = false) async throws(Failure) -> Reply {
        if let port = lane.usablePort(), path.hasPrefix("/api/") {
            do {
                return try await sendOverLane(
                    port: port, task: String(path.dropFirst(5)), headers: headers, body: body, deadline: deadline, threadCall: threadCall)
            } catch {
                // Nothing was sent: the call goes over HTTP, and the lane rests (longer each time it fails again).
                guard case .unreachable = error else { throw error }
                lane.failed()
            }
        }
        let reply = try await sendOverHTTP(path: path, headers: headers, body: body, deadline: deadline, threadCall: threadCall)
        if let announced = reply.headers.first(name: NeutrinoHeader.lane.canonicalName) { lane.announced(announced) }
        return reply
    }

    private func sendOverLane(
        port: Int, task: String, headers: HTTPHeaders, body: ByteBuffer, deadline: NIODeadline, threadCall: Bool
    ) async throws(Failure) -> Reply {
        let fields = headers.map { CallFrame.Field($0.name, $0.value) }
        let request = CallFrame.Request(id: 0, head: task, fields: fields, body: Array(buffer: body))
        return try await roundTrip(lanePort: port, threadCall: threadCall, reusable: { _ in true }) { channel, promise, written in
            channel.writeAndFlush(LaneExchange(request: request, promise: promise, deadline: deadline), promise: written)
        }
    }

    private func sendOverHTTP(
        path: String, headers: HTTPHeaders, body: ByteBuffer, deadline: NIODeadline, threadCall: Bool
    ) async throws(Failure) -> Reply {
        var head = HTTPRequestHead(version: .http1_1, method: .POST, uri: path, headers: headers)
        head.headers.replaceOrAdd(name: "Host", value: "\(host):\(port)")
        head.headers.replaceOrAdd(name: "Content-Length", value: String(body.readableBytes))
        let maxAnswerBytes = self.maxAnswerBytes
        return try await roundTrip(
            lanePort: nil, threadCall: threadCall, reusable: { $0.headers.first(name: "Connection")?.lowercased() != "close" }
        ) {
            channel, promise, written in
            let exchange = Exchange(head: head, body: body, promise: promise, maxAnswerBytes: maxAnswerBytes, deadline: deadline)
            channel.writeAndFlush(exchange, promise: written)
        }
    }

    /// One request on a connection of the kind asked for (the call lane on `lanePort`, else HTTP) and its whole
    /// answer; the connection goes back to the pool when the answer leaves it `reusable`. `send` writes the request
    /// (its message type known where it is written: a generic message here cost a metadata lookup and NIOAny's
    /// dynamic casts on every call).
    /// `threadCall`: the call takes one of the worker's thread places first (`takeThreadPlace`) and gives it back as
    /// soon as its answer is in, before its connection goes back and wakes the line, so the call woken finds it free.
    private func roundTrip(
        lanePort: Int?, threadCall: Bool, reusable: (Reply) -> Bool,
        _ send: (any Channel, EventLoopPromise<Reply>, EventLoopPromise<Void>) -> Void
    ) async throws(Failure) -> Reply {
        if threadCall { try takeThreadPlace() }
        let channel: any Channel
        do {
            channel = try await checkout(lanePort: lanePort)
        } catch {
            if threadCall { releaseThreadPlace() }
            throw error
        }
        let promise = channel.eventLoop.makePromise(of: Reply.self)
        let written = channel.eventLoop.makePromise(of: Void.self)
        send(channel, promise, written)
        do {
            let reply = try await promise.futureResult.get()
            if threadCall { releaseThreadPlace() }
            noteMaxCalls(reply.headers)
            // A 503 is a worker that ran nothing because it has no room (or is stopping): giving its connection back
            // makes no room for a waiting call, which would only be refused again.
            checkin(channel, lane: lanePort != nil, keepAlive: reusable(reply), roomMade: reply.status != 503)
            return reply
        } catch {
            if threadCall { releaseThreadPlace() }
            throw await Self.failure(error, closing: channel, written: written)
        }
    }

    /// What a failed exchange means for the caller; its connection is closed. A request that never left this process
    /// cannot have run: the worker was gone before it (a pooled connection to a worker that died while idle), so
    /// another worker may take it (`unreachable`); one that was sent may have run (`lost`).
    private static func failure(_ error: any Error, closing channel: any Channel, written: EventLoopPromise<Void>) async -> Failure {
        channel.close(promise: nil)
        if let failure = error as? Failure { return failure }
        if (try? await written.futureResult.get()) == nil {
            return .unreachable("the connection closed before the request was sent: \(error)")
        }
        return .lost("\(error)")
    }

    /// A streamed answer: its status and headers, and its body as it arrives (`body.take()`).
    struct StreamedReply: Sendable {
        var status: Int
        var headers: HTTPHeaders
        var body: StreamedBody
    }

    /// Sends one request (any method and target) and returns the worker's answer as soon as its head arrives; the
    /// body follows through `StreamedReply.body`. `headDeadline` bounds the wait for the head only (a streamed body
    /// may last long). The connection goes back to the pool when the body has ended.
    ///
    /// A `caller` that leaves before the answer has ended closes the connection, as nginx does by default: the worker
    /// sees its client go, so a request still waiting there for a coroutine slot is not started and one that runs is
    /// told (`http.disconnect`). The request then fails with `lost`; the caller tells that apart by `hasLeft`.
    func stream(
        method: HTTPMethod, target: String, headers: HTTPHeaders, body: ByteBuffer, headDeadline: NIODeadline,
        caller: CallerPresence? = nil
    ) async throws(Failure) -> StreamedReply {
        let channel = try await checkout(lanePort: nil)
        let promise = channel.eventLoop.makePromise(of: Reply.self)
        var head = HTTPRequestHead(version: .http1_1, method: method, uri: target, headers: headers)
        head.headers.replaceOrAdd(name: "Content-Length", value: String(body.readableBytes))
        // A refusal (503 `X-Neutrino-Rejected`) makes no room when its connection comes back, as for a call
        // (`roundTrip`). Noted on the event loop as the head arrives, before its end can give the connection back.
        let refused = NIOLockedValueBox(false)
        promise.futureResult.whenSuccess { reply in
            if reply.status == 503, reply.headers.first(name: NeutrinoHeader.rejected.canonicalName) != nil {
                refused.withLockedValue { $0 = true }
            }
        }
        let streamed = StreamedBody(channel: channel) { [weak self] reusable in
            guard let self else {
                channel.close(promise: nil)
                return
            }
            self.checkin(channel, lane: false, keepAlive: reusable, roomMade: !refused.withLockedValue { $0 })
        }
        // The deadline covers the head only: the handler stops timing the exchange when the head arrives.
        let exchange = Exchange(
            head: head, body: body, promise: promise, maxAnswerBytes: maxAnswerBytes, deadline: headDeadline, stream: streamed)
        let written = channel.eventLoop.makePromise(of: Void.self)
        channel.writeAndFlush(exchange, promise: written)
        if let caller {
            // Checked on the connection's event loop, where the answer's end marks `ended` before the connection goes
            // back to the pool: a late hook cannot close the connection once another request has it.
            let delegate = streamed.delegate
            caller.onLeave {
                channel.eventLoop.execute {
                    if !delegate.ended.withLockedValue({ $0 }) { channel.close(promise: nil) }
                }
            }
        }
        do {
            let reply = try await promise.futureResult.get()
            return StreamedReply(status: reply.status, headers: reply.headers, body: streamed)
        } catch {
            throw await Self.failure(error, closing: channel, written: written)
        }
    }

    /// The worker left its pool: close the idle connections now and each busy one when its call ends.
    func retire() {
        retired.withLockedValue { $0 = true }
        close()
    }

    /// Closes the idle connections.
    func close() {
        let pooled = idle.withLockedValue { c in
            defer { c.removeAll() }; return c.values.joined()
        }
        for p in pooled { p.channel.close(promise: nil) }
    }

    /// An idle connection on the caller's event loop, else a new one there, else an idle one on another loop (when
    /// `maxConnections` are open). A caller on no event loop takes any idle connection first. `lanePort`: a
    /// connection to the worker's call lane (ready once the worker has greeted it), else an HTTP one.
    private func checkout(lanePort: Int?) async throws(Failure) -> any Channel {
        let here = MultiThreadedEventLoopGroup.currentEventLoop
        let lane = lanePort != nil
        if let channel = takeIdle(on: here.map { ObjectIdentifier($0) }, lane: lane) { return channel }
        // A place for a new connection, given back when it closes (however it closes).
        let limit = self.limit
        let admitted = open.withLockedValue { n -> Bool in
            guard n < limit else { return false }
            n += 1
            return true
        }
        if !admitted {
            if let channel = takeIdle(on: nil, lane: lane) { return channel }
            // Idle connections of the other kind (HTTP ones from before the lane was announced) give up their place:
            // the new one is counted now, the one closed when its close completes.
            guard let other = takeIdle(on: nil, lane: !lane) else { throw .saturated(limit: limit, announced: limit < maxConnections) }
            other.close(promise: nil)
            open.withLockedValue { $0 += 1 }
        }
        let loop = here ?? group.next()
        let greeted = loop.makePromise(of: Void.self)
        let maxAnswerBytes = self.maxAnswerBytes
        do {
            let channel = try await ClientBootstrap(group: loop)
                .connectTimeout(.seconds(1))
                .channelOption(.socketOption(.tcp_nodelay), value: 1)
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        if lane {
                            try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(LaneAnswerDecoder(maxAnswerBytes: maxAnswerBytes)))
                            try channel.pipeline.syncOperations.addHandler(LaneExchangeHandler(greeted: greeted, maxAnswerBytes: maxAnswerBytes))
                        } else {
                            // The requests' headers are this process's own (ids, numbers, a traceparent it made) or
                            // ones its HTTP parser accepted from a client: the per-request validation (2 % of the
                            // gateway's CPU at c=32) checks nothing that could fail.
                            try channel.pipeline.syncOperations.addHTTPClientHandlers(enableOutboundHeaderValidation: false)
                            try channel.pipeline.syncOperations.addHandler(ExchangeHandler())
                            greeted.succeed()
                        }
                    }
                }
                .connect(host: host, port: lanePort ?? port)
                .get()
            channel.closeFuture.whenComplete { [open, onRoom] _ in
                open.withLockedValue { $0 -= 1 }
                onRoom()
            }
            do {
                // A worker that turns the connection away (too many, shutting down) closes it without a greeting;
                // something else on that port (the worker gone, the port reused) may say nothing at all.
                let silence = loop.scheduleTask(in: Self.greetingTimeout) { greeted.fail(LaneError.notGreeted) }
                defer { silence.cancel() }
                try await greeted.futureResult.get()
            } catch {
                channel.close(promise: nil)
                throw Failure.unreachable("the worker did not greet its call lane: \(error)")
            }
            return channel
        } catch let failure as Failure {
            throw failure
        } catch {
            greeted.fail(error)
            open.withLockedValue { $0 -= 1 }
            throw .unreachable("\(error)")
        }
    }

    /// A live idle connection of the kind asked for on `loop` (any loop when nil); the stale ones met on the way are
    /// closed.
    private func takeIdle(on loop: ObjectIdentifier?, lane: Bool) -> (any Channel)? {
        let oldest = NIODeadline.now() - Self.maxIdleAge
        while let pooled = idle.withLockedValue({ pools -> Pooled? in
            guard let key = loop.map({ PoolKey(loop: $0, lane: lane) }) ?? pools.first(where: { $0.key.lane == lane && !$0.value.isEmpty })?.key
            else { return nil }
            return pools[key]?.popLast()
        }) {
            if pooled.channel.isActive && pooled.since > oldest { return pooled.channel }
            pooled.channel.close(promise: nil)
        }
        return nil
    }

    /// Pools the connection of a finished exchange (closes it when it cannot be reused, or when more are open than the
    /// worker now takes calls at once: the close makes the room then).
    private func checkin(_ channel: any Channel, lane: Bool, keepAlive: Bool, roomMade: Bool = true) {
        guard keepAlive, channel.isActive, !retired.withLockedValue({ $0 }), openCount <= limit else {
            channel.close(promise: nil)
            return
        }
        let pooled = Pooled(channel: channel, since: .now())
        idle.withLockedValue { $0[PoolKey(loop: ObjectIdentifier(channel.eventLoop), lane: lane), default: []].append(pooled) }
        if roomMade { onRoom() }
    }
}

/// Whether calls to a worker take its call lane: its port once the worker has announced it, and a rest after the
/// lane could not be reached (30 s, doubling up to 10 min while it keeps failing; a newly announced port ends it),
/// during which calls go over HTTP.
final class LaneAvailability: Sendable {
    private struct State {
        var port: Int?
        var restUntil = NIODeadline.uptimeNanoseconds(0)
        var rest = LaneAvailability.firstRest
    }
    private static let firstRest = TimeAmount.seconds(30)
    private static let longestRest = TimeAmount.minutes(10)
    private let state = NIOLockedValueBox(State())

    func usablePort() -> Int? {
        state.withLockedValue { s in
            guard let port = s.port, s.restUntil <= .now() else { return nil }
            return port
        }
    }

    /// `X-Neutrino-Lane` on an answer over HTTP.
    func announced(_ text: String) {
        guard let port = Int(text), (1...65535).contains(port) else { return }
        state.withLockedValue { s in
            guard s.port != port else { return }
            s = State(port: port)
        }
    }

    func failed() {
        state.withLockedValue { s in
            s.restUntil = .now() + s.rest
            s.rest = min(s.rest * 2, Self.longestRest)
        }
    }
}

/// One request and the promise its answer completes (for a streamed answer: its head, the body then goes to `stream`).
struct Exchange {
    var head: HTTPRequestHead
    var body: ByteBuffer
    var promise: EventLoopPromise<WorkerConnections.Reply>
    var maxAnswerBytes: Int
    /// When the exchange fails with `timedOut` and its connection is closed, unless the answer (for a streamed one:
    /// its head) arrived first.
    var deadline: NIODeadline
    var stream: StreamedBody? = nil
}

/// The body of a streamed answer as it arrives: chunks pass through a bounded buffer (`NIOThrowingAsyncSequenceProducer`
/// with a high/low watermark); while it is full the connection stops reading, so a slow client slows the worker's
/// writes instead of filling the gateway's memory. `done` runs on the event loop when the answer has ended (true: the
/// connection can be reused) or was cut short.
final class StreamedBody: Sendable {
    typealias Producer = NIOThrowingAsyncSequenceProducer<
        ByteBuffer, any Error, NIOAsyncSequenceProducerBackPressureStrategies.HighLowWatermark, StreamedBodyDelegate
    >
    let source: Producer.Source
    let sequence: NIOLockedValueBox<Producer?>
    let delegate: StreamedBodyDelegate
    let done: @Sendable (_ reusable: Bool) -> Void

    init(channel: any Channel, done: @escaping @Sendable (Bool) -> Void) {
        let delegate = StreamedBodyDelegate(channel: channel)
        let made = Producer.makeSequence(
            elementType: ByteBuffer.self, failureType: (any Error).self,
            backPressureStrategy: .init(lowWatermark: 2, highWatermark: 16), finishOnDeinit: false, delegate: delegate)
        self.source = made.source
        self.sequence = NIOLockedValueBox(made.sequence)
        self.delegate = delegate
        self.done = done
    }

    /// The body's chunks (taken once, by the one consumer).
    func take() -> Producer? {
        sequence.withLockedValue { s in
            defer { s = nil }; return s
        }
    }
}

/// Tells the connection to read again once the consumer has drained the buffer, and closes it when the consumer
/// stops before the end (the client went away): the worker then sees its connection drop, and the ASGI app a
/// disconnect.
final class StreamedBodyDelegate: NIOAsyncSequenceProducerDelegate {
    let channel: any Channel
    /// Set by the handler when it withheld a read because the buffer was full.
    let paused = NIOLockedValueBox(false)
    /// Set when the answer ended (the connection is then back in the pool; a late termination must not close it).
    let ended = NIOLockedValueBox(false)
    /// Set when the answer's head arrived (the head timeout no longer applies).
    let headArrived = NIOLockedValueBox(false)
    /// How many times the consumer asked for more: the handler compares it across a `yield` that said stop, since
    /// the consumer's `produceMore()` may run between that `yield` and the handler setting `paused` (it then finds
    /// `paused` still false and reads nothing: the stream stalled, seen under load).
    let demands = NIOLockedValueBox<UInt64>(0)

    init(channel: any Channel) { self.channel = channel }

    func produceMore() {
        demands.withLockedValue { $0 &+= 1 }
        guard
            paused.withLockedValue({ p in
                defer { p = false }; return p
            })
        else { return }
        channel.read()
    }

    func didTerminate() {
        if !ended.withLockedValue({ $0 }) { channel.close(promise: nil) }
    }
}

/// Writes an `Exchange` as request parts and assembles the response into its promise.
private final class ExchangeHandler: ChannelDuplexHandler, CallDeadlineHandler {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundIn = Exchange
    typealias OutboundOut = HTTPClientRequestPart

    private var pending: EventLoopPromise<WorkerConnections.Reply>?
    private var head: HTTPResponseHead?
    private var body: ByteBuffer?
    private var maxAnswerBytes = Int.max
    /// A streamed answer's body, once its head has been delivered.
    private var stream: StreamedBody?
    private var streaming: StreamedBody?
    /// A read withheld while the streamed body's buffer is full.
    private var readWithheld = false
    /// The deadline of the latest exchange, and one timer for the connection's calls (a timer scheduled and cancelled
    /// per call cost about 1 % of the gateway's CPU at c=32).
    var callDeadline = NIODeadline.distantFuture
    var deadlineTimer = DeadlineTimer()
    var callInFlight: Bool { pending != nil }

    func read(context: ChannelHandlerContext) {
        if let streaming, streaming.delegate.paused.withLockedValue({ $0 }) {
            readWithheld = true
            return
        }
        readWithheld = false
        context.read()
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let exchange = unwrapOutboundIn(data)
        pending = exchange.promise
        callStarted(deadline: exchange.deadline, context: context)
        maxAnswerBytes = exchange.maxAnswerBytes
        stream = exchange.stream
        streaming = nil
        head = nil
        body = nil
        context.write(wrapOutboundOut(.head(exchange.head)), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(exchange.body))), promise: nil)
        context.write(wrapOutboundOut(.end(nil)), promise: promise)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let h):
            head = h
            if let stream, let promise = pending {
                // A streamed answer: the head now, the body through the stream.
                pending = nil
                self.stream = nil
                streaming = stream
                stream.delegate.headArrived.withLockedValue { $0 = true }
                promise.succeed(.init(status: Int(h.status.code), headers: h.headers, body: ByteBuffer()))
                return
            }
            if let declared = h.headers.first(name: "Content-Length").flatMap(Int.init), declared > maxAnswerBytes {
                tooLarge(context)
            }
        case .body(var chunk):
            if let streaming {
                // The latest yield decides: a later `.produceMore` means the demand came back through it, and the
                // delegate's produceMore() will not be called for the earlier `.stopProducing`.
                let delegate = streaming.delegate
                let demandsBefore = delegate.demands.withLockedValue { $0 }
                let stop = streaming.source.yield(chunk) == .stopProducing
                delegate.paused.withLockedValue { $0 = stop }
                // A `produceMore()` that ran after the yield but before `paused` was set read nothing: read now
                // (exactly one of it and this takes `paused` back).
                let resumed =
                    stop && delegate.demands.withLockedValue { $0 } != demandsBefore
                    && delegate.paused.withLockedValue { p in
                        defer { p = false }; return p
                    }
                if (!stop || resumed) && readWithheld {
                    readWithheld = false
                    context.read()
                }
                return
            }
            guard pending != nil else { return }
            if (body?.readableBytes ?? 0) > maxAnswerBytes - chunk.readableBytes {
                tooLarge(context)
                return
            }
            if var collected = body {
                body = nil  // keep the buffer uniquely referenced while appending
                collected.writeBuffer(&chunk)
                body = collected
            } else {
                body = chunk
            }
        case .end:
            if let streaming {
                self.streaming = nil
                streaming.delegate.ended.withLockedValue { $0 = true }
                streaming.delegate.paused.withLockedValue { $0 = false }
                streaming.source.finish()
                streaming.done(head?.headers.first(name: "Connection")?.lowercased() != "close")
                if readWithheld {
                    readWithheld = false
                    context.read()
                }
                return
            }
            guard let promise = pending, let head else { return }
            pending = nil
            promise.succeed(.init(status: Int(head.status.code), headers: head.headers, body: body ?? ByteBuffer()))
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        fail(WorkerConnections.Failure.lost("the worker closed the connection before answering"))
        deadlineTimer.cancel()
        context.fireChannelInactive()
    }

    /// No answer in time: a slow task, not a broken worker. The connection is dropped with the answer.
    func callTimedOut(context: ChannelHandlerContext) {
        fail(WorkerConnections.Failure.timedOut)
        context.close(promise: nil)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        fail(WorkerConnections.Failure.lost("\(error)"))
        context.close(promise: nil)
    }

    /// The answer will not be read: fail the exchange and drop the connection (the rest of the answer with it).
    private func tooLarge(_ context: ChannelHandlerContext) {
        fail(WorkerConnections.Failure.answerTooLarge(limit: maxAnswerBytes))
        body = nil
        context.close(promise: nil)
    }

    private func fail(_ error: WorkerConnections.Failure) {
        if let promise = pending {
            pending = nil
            promise.fail(error)
        }
        if let stream {
            // A streamed answer whose head never came (its deadline passed, the connection dropped): its body ends
            // too. The caller of `stream` gets the failure and closes the connection; a source left unfinished would
            // trap when it is freed.
            self.stream = nil
            stream.source.finish(error)
        }
        if let streaming {
            self.streaming = nil
            streaming.source.finish(error)
            streaming.done(false)
        }
    }
}
