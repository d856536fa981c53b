import NIOCore
import NIOHTTPTypes
import NeutrinoCore
import Synchronization

/// Whether each open client connection of a server is still there: a handler serving a request looks its connection
/// up (`presence(of:)`) and learns when the client leaves before its answer. `CallHandler` takes its connection's at
/// start; the gateway's router looks it up for sync calls `CallHandler` leaves to it (tracing on, an `Origin` header)
/// and for its mounted ASGI app's requests. A gateway call still waiting for a worker with room then leaves the line,
/// and a worker's call still queued for a Python thread is not started: neither runs for nobody.
///
/// A connection is one caller at a time (HTTP/1.1 answers in order), so one presence per connection serves every
/// request on it; it is marked once, when the client's side closes, which ends the connection.
public final class ConnectionPresences: Sendable {
    private let open = Mutex<[ObjectIdentifier: CallerPresence]>([:])

    public init() {}

    /// The presence of `channel`'s client, while the connection is open and the server puts `handler()` in it.
    public func presence(of channel: ObjectIdentifier) -> CallerPresence? {
        open.withLock { $0[channel] }
    }

    /// Open connections tracked (for tests).
    public var count: Int { open.withLock { $0.count } }

    /// The handler to put in each connection's pipeline (`ServerLimits.requestHandlers`).
    public func handler() -> any ChannelHandler { Handler(presences: self) }

    /// The presence of an open connection's client, made by whichever of its handlers asks first (NIO adds a list
    /// of handlers placed after another one last to first, so `handlerAdded` order is not theirs); `handler()`
    /// removes it when the connection ends.
    func opened(_ channel: ObjectIdentifier) -> CallerPresence {
        open.withLock { open in
            if let presence = open[channel] { return presence }
            let presence = CallerPresence()
            open[channel] = presence
            return presence
        }
    }

    fileprivate func closed(_ channel: ObjectIdentifier) {
        _ = open.withLock { $0.removeValue(forKey: channel) }
    }

    /// Marks its connection's presence when the client has sent all it will: it closed the connection, or only its
    /// sending side (Hummingbird allows half-closure, so the channel stays open until the server closes it; nginx
    /// likewise takes a client's EOF during a proxied request for an abort), or the connection ends. Passes
    /// everything on unchanged.
    private final class Handler: ChannelInboundHandler, RemovableChannelHandler {
        typealias InboundIn = HTTPRequestPart
        typealias InboundOut = HTTPRequestPart

        private let presences: ConnectionPresences
        private var presence: CallerPresence?
        private var channel: ObjectIdentifier?

        init(presences: ConnectionPresences) { self.presences = presences }

        func handlerAdded(context: ChannelHandlerContext) {
            let id = ObjectIdentifier(context.channel)
            channel = id
            presence = presences.opened(id)
        }

        func handlerRemoved(context: ChannelHandlerContext) { forget() }

        func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
            if let event = event as? ChannelEvent, event == .inputClosed { presence?.leave() }
            context.fireUserInboundEventTriggered(event)
        }

        func channelInactive(context: ChannelHandlerContext) {
            forget()
            context.fireChannelInactive()
        }

        private func forget() {
            presence?.leave()
            presence = nil
            if let channel { presences.closed(channel) }
            channel = nil
        }
    }
}
