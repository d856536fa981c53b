import CNats
import Glibc
import Logging
import NeutrinoCore
import NeutrinoThreads

/// A connection to a NATS server or cluster (cnats `natsConnection`), reconnecting forever.
///
/// - Servers: one URL or several (`natsOptions_SetServers`); cnats picks one at random, and when it loses that
///   one it tries the others (and any the cluster announced), so a client of a 3-node cluster fails over to a
///   surviving node within a reconnect wait.
/// - Reconnects: `MaxReconnect = -1` (never gives up), `reconnectWait` with jitter between tries, and
///   `RetryOnFailedConnect`, so a server that is down at start-up is retried in the background instead of failing.
/// - `connect` waits up to `Options.firstConnectionWait` for the first connection; if the server is still down then,
///   it returns the connection anyway (`isConnected == false`, logged as a warning) and cnats keeps trying. Calls made
///   meanwhile fail with errors whose `isConnectionProblem` is true (or time out), so callers answer 503 and retry.
///   Use `waitUntilConnected(timeout:)` where a connection is required first.
/// - `SendAsap` (on by default): every publish is written at once instead of waiting for the flusher (1 ms saved
///   per round trip).
/// - Connection events (error, disconnected, reconnected, closed, connected) are logged through swift-log from
///   cnats's callback thread.
/// - Blocking cnats calls run on `pool`, dedicated pthreads, never on Swift's cooperative pool.
public final class NATSConnection: Sendable {
    public struct Options: Sendable {
        /// Pause between reconnect attempts (cnats `ReconnectWait`).
        public var reconnectWait: Duration = .milliseconds(250)
        /// Random extra pause added to each wait (cnats `ReconnectJitter`).
        public var reconnectJitter: Duration = .milliseconds(100)
        /// How long `connect` waits for the first connection when the server is not reachable at once.
        public var firstConnectionWait: Duration = .seconds(5)
        /// TCP connect timeout per attempt (cnats `Timeout`).
        public var connectTimeout: Duration = .seconds(2)
        /// Threads for blocking calls (JetStream API requests, `AckSync`); fetches have their own thread per
        /// subscription.
        public var blockingThreads: Int = 4
        /// Write every publish (and ack) to the socket at once instead of leaving it to cnats's flusher, which
        /// waits 1 ms: a Fetch(1) round trip measured 1.04 ms without, 0.25–0.30 ms with. Bulk acks pay one write
        /// each with it on.
        public var sendAsap: Bool = true
        /// Bytes published while disconnected that cnats buffers for the reconnect (0: cnats's default, 8 MB).
        public var reconnectBufferBytes: Int = 0
        /// How many servers keep each stream this connection's JetStream contexts create (`ensureStream`), and
        /// whether an existing stream with another count is changed (see `StreamReplication`).
        public var replication: StreamReplication = .single
        /// User, password and TLS files (see `NATSAuth`); with a user, reply inboxes are `_INBOX_<user>.…`.
        public var auth = NATSAuth()

        public init() {}
    }

    let handle: ConnectionHandle
    let events: ConnectionEvents
    /// Dedicated threads for the blocking calls of this connection and everything made from it.
    let pool: BlockingThreadPool
    public let name: String
    /// The servers as given, comma-separated.
    public let url: String
    /// The servers as given.
    public let servers: [String]
    /// What the JetStream contexts made from this connection provision with.
    public let replication: StreamReplication
    private let closed = ClosedFlag()

    private init(
        handle: ConnectionHandle, events: ConnectionEvents, pool: BlockingThreadPool, name: String,
        servers: [String], replication: StreamReplication
    ) {
        self.handle = handle
        self.events = events
        self.pool = pool
        self.name = name
        self.servers = servers
        self.url = servers.joined(separator: ",")
        self.replication = replication
    }

    /// The server URLs in `text`: comma-separated, blanks around them ignored, empty entries dropped
    /// (`nats://a:4222, nats://b:4222` → two servers). `NATSServers.parse` is the strict version for flags.
    public static func serverList(_ text: String) -> [String] {
        text.split(separator: ",").map { entry in
            String(entry.drop(while: { $0 == " " || $0 == "\t" }).reversed().drop(while: { $0 == " " || $0 == "\t" }).reversed())
        }.filter { !$0.isEmpty }
    }

    /// Connects to `url`: one server (`nats://127.0.0.1:4222`) or several, comma-separated (the members of a
    /// cluster). Throws only for options cnats refuses (a malformed URL, no URL at all); servers that are down are
    /// retried in the background.
    public static func connect(url: String, name: String, logger: Logger, options: Options = Options()) async throws -> NATSConnection {
        try await connect(servers: serverList(url), name: name, logger: logger, options: options)
    }

    /// Connects to one of `servers` (the members of one cluster, or a single server), failing over between them.
    public static func connect(servers: [String], name: String, logger: Logger, options: Options = Options()) async throws -> NATSConnection {
        guard !servers.isEmpty else { throw NATSError.invalidArgument("natsOptions_SetServers", "no server URL given") }
        let url = servers.joined(separator: ",")
        let pool = try BlockingThreadPool(name: "nats-\(name)", threads: options.blockingThreads)
        let events = ConnectionEvents(name: name, logger: logger)
        let eventsID = connectionEventsTable.insert(events)
        let result: (pointer: SendablePointer, connected: Bool)
        do {
            result = try await pool.run("natsConnection_Connect") { () throws -> (pointer: SendablePointer, connected: Bool) in
                let op = "natsConnection_Connect"
                let closure = CallbackTable<ConnectionEvents>.closure(eventsID)
                var opts: OpaquePointer?
                var s = natsOptions_Create(&opts)
                guard s == NATS_OK, let opts else { throw NATSError.library("natsOptions_Create", s, connection: nil) }
                defer { natsOptions_Destroy(opts) }
                let arena = CArena()
                let cServers = try arena.array(of: UnsafePointer<CChar>?.self, count: servers.count, op)
                for (i, server) in servers.enumerated() { cServers[i] = try arena.string(server, op, what: "a server URL") }
                let cName = try arena.string(name, op, what: "the connection name")
                s = natsOptions_SetServers(opts, cServers, Int32(clamping: servers.count))
                if s == NATS_OK { s = natsOptions_SetName(opts, cName) }
                if s == NATS_OK { s = natsOptions_SetMaxReconnect(opts, -1) }
                if s == NATS_OK { s = natsOptions_SetReconnectWait(opts, max(1, options.reconnectWait.natsMilliseconds)) }
                if s == NATS_OK {
                    s = natsOptions_SetReconnectJitter(opts, options.reconnectJitter.natsMilliseconds, options.reconnectJitter.natsMilliseconds)
                }
                if s == NATS_OK { s = natsOptions_SetTimeout(opts, max(1, options.connectTimeout.natsMilliseconds)) }
                if s == NATS_OK && options.reconnectBufferBytes > 0 {
                    s = natsOptions_SetReconnectBufSize(opts, Int32(clamping: options.reconnectBufferBytes))
                }
                if s == NATS_OK { s = natsOptions_SetSendAsap(opts, options.sendAsap) }
                guard s == NATS_OK else { throw NATSError.library("natsOptions_Set*", s, connection: nil) }
                try Self.apply(options.auth, to: opts, arena: arena)
                if s == NATS_OK { s = natsOptions_SetErrorHandler(opts, onAsyncError, closure) }
                if s == NATS_OK { s = natsOptions_SetDisconnectedCB(opts, onDisconnected, closure) }
                if s == NATS_OK { s = natsOptions_SetReconnectedCB(opts, onReconnected, closure) }
                if s == NATS_OK { s = natsOptions_SetClosedCB(opts, onClosed, closure) }
                if s == NATS_OK { s = natsOptions_SetRetryOnFailedConnect(opts, true, onConnected, closure) }
                guard s == NATS_OK else { throw NATSError.library("natsOptions_Set*", s, connection: nil) }

                var nc: OpaquePointer?
                s = natsConnection_Connect(&nc, opts)
                guard s == NATS_OK || s == NATS_NOT_YET_CONNECTED, let nc else {
                    throw NATSError.library(op, s, connection: nil)
                }
                return (SendablePointer(nc), s == NATS_OK)
            }
        } catch {
            connectionEventsTable.remove(eventsID)
            pool.shutdown()
            throw error
        }
        let connection = NATSConnection(
            handle: ConnectionHandle(pointer: result.pointer.pointer, eventsID: eventsID),
            events: events, pool: pool, name: name, servers: servers,
            replication: options.replication)
        if result.connected {
            logger.info(
                "connected to NATS", metadata: ["nats.name": "\(name)", "nats.url": "\(NATSServers.redacted(connection.connectedURL ?? url))"])
        } else {
            logger.notice(
                "NATS server not reachable yet; retrying in the background",
                metadata: ["nats.name": "\(name)", "nats.url": "\(NATSServers.redacted(url))"])
            if await !connection.waitUntilConnected(timeout: options.firstConnectionWait) {
                // Closed rather than still trying: the server refused us for good (credentials, TLS).
                if connection.isClosed {
                    let why = connection.lastError ?? "closed"
                    logger.critical("NATS refused the connection", metadata: ["nats.name": "\(name)", "nats.error": "\(why)"])
                    await connection.close()
                    throw NATSError.closed(
                        "natsConnection_Connect",
                        "the NATS server refused the connection (\(why)): are the credentials right (--nats-user, "
                            + "NEUTRINO_NATS_PASSWORD or --nats-password-file) and the TLS settings (--nats-tls-ca)?")
                }
                logger.warning(
                    "still not connected to NATS; continuing, calls fail until the server is reachable",
                    metadata: ["nats.name": "\(name)", "nats.url": "\(NATSServers.redacted(url))"])
            }
        }
        return connection
    }

    /// Sets the user, password, inbox prefix and TLS files of `auth` on `opts`. The password is copied into
    /// cnats's options only; it is never logged.
    private static func apply(_ auth: NATSAuth, to opts: OpaquePointer, arena: CArena) throws {
        let op = "natsOptions_SetUserInfo"
        var s = NATS_OK
        if let user = auth.user {
            s = natsOptions_SetUserInfo(
                opts, try arena.string(user, op, what: "the NATS user"), try arena.string(auth.password ?? "", op, what: "the NATS password"))
            guard s == NATS_OK else { throw NATSError.library(op, s, connection: nil) }
        }
        if let prefix = auth.inboxPrefix {
            s = natsOptions_SetCustomInboxPrefix(opts, try arena.string(prefix, op, what: "the inbox prefix"))
            guard s == NATS_OK else { throw NATSError.library("natsOptions_SetCustomInboxPrefix", s, connection: nil) }
        }
        guard auth.usesTLS else { return }
        s = natsOptions_SetSecure(opts, true)
        guard s == NATS_OK else { throw NATSError.library("natsOptions_SetSecure", s, connection: nil) }
        if let ca = auth.tlsCA {
            s = natsOptions_LoadCATrustedCertificates(opts, try arena.string(ca, op, what: "the CA file"))
            guard s == NATS_OK else { throw NATSError.library("natsOptions_LoadCATrustedCertificates(\(ca))", s, connection: nil) }
        }
        if let cert = auth.tlsCert, let key = auth.tlsKey {
            s = natsOptions_LoadCertificatesChain(
                opts, try arena.string(cert, op, what: "the certificate file"), try arena.string(key, op, what: "the key file"))
            guard s == NATS_OK else { throw NATSError.library("natsOptions_LoadCertificatesChain(\(cert))", s, connection: nil) }
        }
    }

    /// The connection's last error as cnats reports it (e.g. the server's `Authorization Violation`), if any.
    public var lastError: String? {
        var text: UnsafePointer<CChar>?
        guard natsConnection_GetLastError(handle.pointer, &text) != NATS_OK else { return nil }
        let message = swiftString(text)
        return message.isEmpty ? nil : message
    }

    /// Connected right now (not disconnected, reconnecting, or closed).
    public var isConnected: Bool {
        !closed.isSet && natsConnection_Status(handle.pointer) == NATS_CONN_STATUS_CONNECTED
    }

    /// Whether the connection is closed for good (`close()` was called); a closed connection never reconnects.
    public var isClosed: Bool { closed.isSet || natsConnection_IsClosed(handle.pointer) }

    /// The largest message, payload and headers together, the server accepts (its `max_payload`, learnt when the
    /// connection was first established); nil before that.
    public var maxPayload: Int? {
        let value = natsConnection_GetMaxPayload(handle.pointer)
        return value > 0 ? Int(value) : nil
    }

    /// The URL of the server connected to, if connected.
    public var connectedURL: String? {
        var buffer = [CChar](repeating: 0, count: 512)
        guard natsConnection_GetConnectedUrl(handle.pointer, &buffer, buffer.count) == NATS_OK, buffer[0] != 0 else { return nil }
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// Waits until the connection is up, at most `timeout`; true if it is. Polls every 20 ms (start-up and tests only).
    public func waitUntilConnected(timeout: Duration) async -> Bool {
        let deadline = ContinuousClock.now + timeout
        while true {
            if isConnected { return true }
            if isClosed || ContinuousClock.now >= deadline { return false }
            do { try await Task.sleep(for: .milliseconds(20)) } catch { return isConnected }
        }
    }

    /// A JetStream context on this connection. `requestTimeout` bounds every JetStream API request (stream and
    /// consumer management, info, `AckSync`, get/delete); `publishTimeout` is the default wait for a publish ack.
    public func jetStream(requestTimeout: Duration = .seconds(5), publishTimeout: Duration = .seconds(5)) throws -> JetStream {
        guard !closed.isSet else { throw NATSError.closed("natsConnection_JetStream", "the connection is closed") }
        let waiters = PublishWaiters(connection: handle.pointer)
        let waitersID = publishWaitersTable.insert(waiters)
        events.addPublishWaiters(waitersID)
        var jo = jsOptions()
        jsOptions_Init(&jo)
        jo.Wait = max(1, requestTimeout.natsMilliseconds)
        // Unbounded: a publish never stalls in js_PublishMsgAsync; every publish awaits its own ack, so the
        // number in flight is the number of callers waiting.
        jo.PublishAsync.MaxPending = 0
        jo.PublishAsync.AckHandler = onPublishAck
        jo.PublishAsync.AckHandlerClosure = CallbackTable<PublishWaiters>.closure(waitersID)
        var js: OpaquePointer?
        let s = natsConnection_JetStream(&js, handle.pointer, &jo)
        guard s == NATS_OK, let js else {
            publishWaitersTable.remove(waitersID)
            throw NATSError.library("natsConnection_JetStream", s, connection: handle.pointer)
        }
        return JetStream(
            handle: JetStreamHandle(pointer: js, connection: handle, waitersID: waitersID),
            connection: self, waiters: waiters, requestTimeout: requestTimeout, publishTimeout: publishTimeout,
            replication: replication)
    }

    /// Closes the connection: fetches and requests in progress return, publishes awaiting an ack fail with a
    /// connection error, later calls fail at once. Messages already fetched can no longer be acknowledged (the
    /// server redelivers them after AckWait). The C objects are freed when the last Swift object using them is
    /// released, in the order cnats needs (messages and subscriptions, then contexts, then the connection).
    /// Dropping every reference without calling `close()` closes and frees the connection all the same.
    public func close() async {
        guard closed.set() else { return }
        events.failPublishes(NATSError.closed("js_PublishMsgAsync", "the connection was closed"))
        let handle = self.handle
        // natsConnection_Close flushes and stops cnats's threads: run it on a thread of its own, not behind
        // requests queued on the pool (which it makes return).
        _ = try? await runOnNewThread("natsConnection_Close") { natsConnection_Close(handle.pointer) }
        pool.shutdown()
    }

    /// Frees cnats's global resources (its timer, callback and GC threads) and waits up to `timeout` for them to
    /// finish: call once at process exit, after every connection and everything made from it has been released
    /// and closed. Returns false if it timed out. Blocks the calling thread.
    public static func releaseLibrary(timeout: Duration = .seconds(2)) -> Bool {
        nats_CloseAndWait(max(1, timeout.natsMilliseconds)) == NATS_OK
    }
}

/// A flag that is set once.
final class ClosedFlag: @unchecked Sendable {
    private let lock = PThreadLock()
    private var value = false

    var isSet: Bool { lock.withLock { value } }

    /// Sets the flag; true if this call set it.
    func set() -> Bool {
        lock.withLock {
            if value { return false }
            value = true
            return true
        }
    }
}

/// What the connection callbacks need: the logger, and the publish waiters to fail when the connection closes.
final class ConnectionEvents: @unchecked Sendable {
    let name: String
    let logger: Logger
    private let lock = PThreadLock()
    private var publishWaiterIDs: [UInt] = []

    init(name: String, logger: Logger) {
        self.name = name
        self.logger = logger
    }

    func addPublishWaiters(_ id: UInt) { lock.withLock { publishWaiterIDs.append(id) } }

    func failPublishes(_ error: NATSError) {
        let ids = lock.withLock { publishWaiterIDs }
        for id in ids { publishWaitersTable.get(id)?.failAll(error) }
    }

    var metadata: Logger.Metadata { ["nats.name": "\(name)"] }
}

// The callbacks run on cnats's connection-callback thread. They log, and never release a handle.

private func url(of nc: OpaquePointer?) -> String {
    guard let nc else { return "" }
    var buffer = [CChar](repeating: 0, count: 512)
    guard natsConnection_GetConnectedUrl(nc, &buffer, buffer.count) == NATS_OK else { return "" }
    return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

private func onConnected(_ nc: OpaquePointer?, _ closure: UnsafeMutableRawPointer?) {
    guard let events = connectionEventsTable.get(closure: closure) else { return }
    var metadata = events.metadata
    metadata["nats.url"] = "\(NATSServers.redacted(url(of: nc)))"
    events.logger.info("connected to NATS", metadata: metadata)
}

private func onDisconnected(_ nc: OpaquePointer?, _ closure: UnsafeMutableRawPointer?) {
    guard let events = connectionEventsTable.get(closure: closure), let nc else { return }
    // Closing disconnects too; that one is not news.
    if natsConnection_IsClosed(nc) { return }
    var metadata = events.metadata
    var text: UnsafePointer<CChar>?
    if natsConnection_GetLastError(nc, &text) != NATS_OK { metadata["nats.error"] = "\(swiftString(text))" }
    events.logger.warning("disconnected from NATS; reconnecting", metadata: metadata)
}

private func onReconnected(_ nc: OpaquePointer?, _ closure: UnsafeMutableRawPointer?) {
    guard let events = connectionEventsTable.get(closure: closure) else { return }
    var metadata = events.metadata
    metadata["nats.url"] = "\(NATSServers.redacted(url(of: nc)))"
    events.logger.info("reconnected to NATS", metadata: metadata)
}

private func onClosed(_ nc: OpaquePointer?, _ closure: UnsafeMutableRawPointer?) {
    guard let events = connectionEventsTable.get(closure: closure) else { return }
    events.failPublishes(NATSError.closed("js_PublishMsgAsync", "the connection was closed"))
    var metadata = events.metadata
    var text: UnsafePointer<CChar>?
    if let nc, natsConnection_GetLastError(nc, &text) != NATS_OK { metadata["nats.error"] = "\(swiftString(text))" }
    events.logger.info("NATS connection closed", metadata: metadata)
}

private func onAsyncError(
    _ nc: OpaquePointer?, _ subscription: OpaquePointer?, _ status: natsStatus,
    _ closure: UnsafeMutableRawPointer?
) {
    guard let events = connectionEventsTable.get(closure: closure) else { return }
    var metadata = events.metadata
    metadata["nats.status"] = "\(swiftString(natsStatus_GetText(status)))"
    if let subscription, let subject = natsSubscription_GetSubject(subscription) {
        metadata["nats.subject"] = "\(String(cString: subject))"
    }
    events.logger.error("NATS asynchronous error", metadata: metadata)
}
