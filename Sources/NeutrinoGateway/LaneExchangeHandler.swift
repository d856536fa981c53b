import NIOCore
import NIOHTTP1
import NeutrinoCore

/// One sync call over a worker's call lane (`CallFrame`; the handler numbers it), and the promise its answer
/// completes.
struct LaneExchange {
    var request: CallFrame.Request
    var promise: EventLoopPromise<WorkerConnections.Reply>
    var deadline: NIODeadline
}

/// What a lane connection reads: the worker's greeting, then answers.
enum LaneInbound {
    case greeting
    case answer(CallFrame.Answer)
    /// An answer frame declared past the limit (its bytes are not read).
    case tooLarge
}

/// Splits a lane connection's bytes into the greeting and answer frames.
struct LaneAnswerDecoder: ByteToMessageDecoder {
    typealias InboundOut = LaneInbound
    let maxFrameBytes: Int
    private var greeted = false

    init(maxAnswerBytes: Int) {
        // The answer's body up to the limit, with room for its fields (as over HTTP, where the headers do not count).
        self.maxFrameBytes = maxAnswerBytes + CallFrame.headroom
    }

    mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        if !greeted {
            guard let preface = buffer.readBytes(length: CallFrame.preface.count) else { return .needMoreData }
            guard preface == CallFrame.preface else { throw LaneError.notALane }
            greeted = true
            context.fireChannelRead(wrapInboundOut(.greeting))
            return .continue
        }
        guard let declared = buffer.getInteger(at: buffer.readerIndex, as: UInt32.self) else { return .needMoreData }
        let length = Int(declared)
        guard length <= maxFrameBytes else {
            buffer.moveReaderIndex(to: buffer.writerIndex)
            context.fireChannelRead(wrapInboundOut(.tooLarge))
            return .needMoreData
        }
        guard buffer.readableBytes >= 4 + length else { return .needMoreData }
        buffer.moveReaderIndex(forwardBy: 4)
        let answer = try buffer.readWithUnsafeReadableBytes { raw throws(CallFrame.DecodeError) -> (Int, CallFrame.Answer) in
            (length, try CallFrame.decodeAnswer(UnsafeRawBufferPointer(rebasing: raw[0..<length])))
        }
        context.fireChannelRead(wrapInboundOut(.answer(answer)))
        return .continue
    }

    mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        try decode(context: context, buffer: &buffer)
    }
}

enum LaneError: Error {
    /// What answered on the lane port is not a worker's call lane.
    case notALane
    /// Nothing answered on the lane port within `WorkerConnections.greetingTimeout`.
    case notGreeted
}

/// Sends the client's preface, reports the worker's greeting (`greeted`), then writes each `LaneExchange` as a request
/// frame and completes its promise with the answer: the same `Reply` the HTTP path gives, so the caller cannot tell.
final class LaneExchangeHandler: ChannelDuplexHandler, CallDeadlineHandler {
    typealias InboundIn = LaneInbound
    typealias OutboundIn = LaneExchange
    typealias OutboundOut = ByteBuffer

    private let greeted: EventLoopPromise<Void>
    private let maxAnswerBytes: Int
    private var pending: (id: UInt32, promise: EventLoopPromise<WorkerConnections.Reply>)?
    var callDeadline = NIODeadline.distantFuture
    var deadlineTimer = DeadlineTimer()
    var callInFlight: Bool { pending != nil }
    private var lastID: UInt32 = 0

    init(greeted: EventLoopPromise<Void>, maxAnswerBytes: Int) {
        self.greeted = greeted
        self.maxAnswerBytes = maxAnswerBytes
    }

    func channelActive(context: ChannelHandlerContext) {
        context.writeAndFlush(wrapOutboundOut(context.channel.allocator.buffer(bytes: CallFrame.preface)), promise: nil)
        context.fireChannelActive()
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let exchange = unwrapOutboundIn(data)
        var request = exchange.request
        lastID &+= 1
        request.id = lastID
        pending = (request.id, exchange.promise)
        callStarted(deadline: exchange.deadline, context: context)
        context.write(wrapOutboundOut(context.channel.allocator.buffer(bytes: CallFrame.encode(request))), promise: promise)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .greeting:
            greeted.succeed()
        case .tooLarge:
            fail(.answerTooLarge(limit: maxAnswerBytes))
            context.close(promise: nil)
        case .answer(let answer) where answer.body.count > maxAnswerBytes:
            fail(.answerTooLarge(limit: maxAnswerBytes))
            context.close(promise: nil)
        case .answer(let answer):
            guard let (id, promise) = pending, answer.id == id else {
                // An answer to no request sent here: the stream is out of step.
                fail(.lost("the worker answered a call that was not sent on this connection"))
                return context.close(promise: nil)
            }
            pending = nil
            var headers = HTTPHeaders()
            headers.reserveCapacity(answer.fields.count)
            for field in answer.fields { headers.add(name: field.name, value: field.value) }
            promise.succeed(.init(status: answer.status, headers: headers, body: context.channel.allocator.buffer(bytes: answer.body)))
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        greeted.fail(WorkerConnections.Failure.unreachable("the worker closed its call lane before greeting"))
        fail(.lost("the worker closed the connection before answering"))
        deadlineTimer.cancel()
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        greeted.fail(WorkerConnections.Failure.unreachable("\(error)"))
        fail(.lost("\(error)"))
        context.close(promise: nil)
    }

    /// No answer in time: a slow task, not a broken worker. The connection is dropped with the answer.
    func callTimedOut(context: ChannelHandlerContext) {
        fail(.timedOut)
        context.close(promise: nil)
    }

    private func fail(_ failure: WorkerConnections.Failure) {
        guard let (_, promise) = pending else { return }
        pending = nil
        promise.fail(failure)
    }
}
