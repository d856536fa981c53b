import Glibc
import HTTPTypes
import Logging
import NeutrinoCore
import NeutrinoHTTP
import NeutrinoPython
import NeutrinoThreads
import Synchronization

/// The worker's second listener, for its gateways' sync calls only: `CallFrame`s instead of HTTP, and no event loop
/// between the socket and Python.
///
/// Each connection has a thread of its own that blocks reading it. A request goes to `HTTPWorker.startCall` as the
/// same call over HTTP would (same admission, task log, timeouts, cancels); its answer is written by the thread that
/// ends the call (the Python thread, or the watchdog) straight to the socket. Through the HTTP server the same call
/// wakes the event loop twice (the request, then the answer handed back), and the Python thread once; here the
/// reading thread wakes once and the Python thread once (bench/README.md, "sixteenth round").
///
/// One call in flight per connection: a client that sends the next request before the answer loses the connection.
/// The worker greets every connection it keeps with `CallFrame.preface`, so a client that is turned away (too many
/// connections, shutting down) knows its request never left it; once the worker is shutting down, a request on a
/// connection it already had is answered 503.
final class CallLane: Sendable {
    typealias Start = @Sendable (_ task: String, _ headers: HTTPFields, _ body: [UInt8], _ answer: @escaping @Sendable (CallAnswer) -> Void) -> Void

    /// The port the lane listens on (announced to gateways in `X-Neutrino-Lane` on every call answer).
    let port: Int
    let portText: String
    private let listener: Int32
    private let maxBodyBytes: Int
    private let maxFrameBytes: Int
    private let maxConnections: Int
    private let idleTimeout: Duration
    private let logger: Logger
    private let state = Mutex(LaneState())

    private struct LaneState {
        var start: Start?
        var stopping = false
        var connections: [ObjectIdentifier: LaneConnection] = [:]
        var serial = 0
    }

    /// Binds `host` on `port` (0: any free port).
    init(host: String, port: Int, maxBodyBytes: Int, maxConnections: Int = 512, idleTimeout: Duration = .seconds(60), logger: Logger) throws {
        let (fd, bound) = try Self.listen(host: host, port: port)
        self.listener = fd
        self.port = bound
        self.portText = String(bound)
        self.maxBodyBytes = maxBodyBytes
        self.maxFrameBytes = maxBodyBytes + CallFrame.headroom
        self.maxConnections = maxConnections
        self.idleTimeout = idleTimeout
        self.logger = logger
    }

    /// Starts taking connections; `start` runs each call.
    func open(start: @escaping Start) {
        state.withLock { $0.start = start }
        let rc = startThread(name: "lane-accept", stackBytes: 256 << 10) { [self] in acceptLoop() }
        if rc != 0 { logger.error("cannot start the call lane's accept thread", metadata: ["errno": "\(rc)"]) }
    }

    /// Takes no more connections. A request that still arrives on an open one is answered 503 (nothing ran: its
    /// gateway sends it to another worker) and its connection closed, instead of being cut off unread, which its
    /// gateway could not tell from a crash; idle connections stay open until the process exits.
    func stop() {
        state.withLock { $0.stopping = true }
        // Wakes the blocked accept() (it returns EINVAL); the accept thread closes the socket.
        shutdown(listener, Int32(SHUT_RDWR))
    }

    private var stopping: Bool { state.withLock { $0.stopping } }

    var openConnections: Int { state.withLock { $0.connections.count } }

    private func acceptLoop() {
        defer { close(listener) }
        while true {
            let fd = accept(listener, nil, nil)
            if fd < 0 {
                let code = errno
                // Anything else (EINVAL) is stop()'s shutdown of the socket.
                guard !stopping, [EINTR, ECONNABORTED, EMFILE, ENFILE, ENOBUFS, ENOMEM].contains(code) else { return }
                // Out of descriptors or memory: let some close before the next try.
                if code != EINTR && code != ECONNABORTED { usleep(10_000) }
                continue
            }
            let admitted = state.withLock { s -> (LaneConnection, Start, Int)? in
                guard !s.stopping, s.connections.count < maxConnections, let start = s.start else { return nil }
                s.serial &+= 1
                let connection = LaneConnection(fd: fd)
                s.connections[ObjectIdentifier(connection)] = connection
                return (connection, start, s.serial)
            }
            guard let (connection, start, serial) = admitted else {
                // Closed without the greeting: the client sends its call elsewhere.
                close(fd)
                continue
            }
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            var one: Int32 = 1
            setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
            let rc = startThread(name: "lane-\(serial)", stackBytes: 256 << 10) { [self] in
                serve(connection, start: start)
                state.withLock { _ = $0.connections.removeValue(forKey: ObjectIdentifier(connection)) }
                connection.readerDone()
            }
            if rc != 0 {
                state.withLock { _ = $0.connections.removeValue(forKey: ObjectIdentifier(connection)) }
                connection.readerDone()
            }
        }
    }

    /// Reads the connection's calls until it ends, it breaks the protocol, or the lane stops. A broken protocol is
    /// counted (`neutrino_http_rejected_total{reason="lane_protocol"}`) and logged at debug only: a client can open
    /// connections faster than anyone reads logs.
    private func serve(_ connection: LaneConnection, start: @escaping Start) {
        func refuse(_ why: String) {
            HTTPRejections.count("lane_protocol")
            logger.debug("call lane: connection closed", metadata: ["reason": "\(why)"])
        }
        var reader = SocketReader(fd: connection.fd, idleTimeout: idleTimeout)
        guard connection.write(CallFrame.preface, endsCall: false), let preface = reader.take(CallFrame.preface.count) else { return }
        guard preface == CallFrame.preface else { return refuse("no preface") }
        while true {
            // A connection with a call in flight waits for as long as the call runs; an idle one for `idleTimeout`.
            guard let prefix = reader.take(4, keepWaiting: { connection.callInFlight }) else { return }
            let length = CallFrame.declaredLength(prefix)
            guard length >= 8, length <= maxFrameBytes else { return refuse("a frame of \(length) bytes") }
            guard let frame = reader.take(length) else { return }
            let request: CallFrame.Request
            do { request = try frame.withUnsafeBytes { raw throws(CallFrame.DecodeError) in try CallFrame.decodeRequest(raw) } } catch {
                return refuse("\(error)")
            }
            guard connection.beginCall() else { return refuse("a second request before the first one's answer") }
            if stopping {
                let refusal = CallAnswer.error(.workerUnavailable, "this worker is shutting down", headers: [.retryAfter: "1"])
                connection.write(Self.frame(request.id, refusal), endsCall: true)
                return
            }
            if request.body.count > maxBodyBytes {
                // As over HTTP: 413, and the connection goes on.
                connection.write(Self.frame(request.id, BodyReadError.refuseTooLarge(limit: maxBodyBytes)), endsCall: true)
                continue
            }
            var headers = HTTPFields()
            for field in request.fields {
                if let name = HTTPField.Name(field.name) { headers.append(HTTPField(name: name, value: field.value)) }
            }
            let id = request.id
            start(request.task, headers, request.body) { answer in connection.write(Self.frame(id, answer), endsCall: true) }
        }
    }

    /// An answer's frame; it is counted as the same call over HTTP is (`neutrino_http_requests_total`, route
    /// `/api/{task}`), so a worker's request rate reads the same whichever way its calls come.
    private static func frame(_ id: UInt32, _ answer: CallAnswer) -> [UInt8] {
        HTTPRequestCounter.count(route: HTTPWorker.callRoute, code: answer.status.code)
        let fields = answer.headers.map { CallFrame.Field($0.name.rawName, $0.value) }
        return CallFrame.encode(CallFrame.Answer(id: id, head: answer.status.code, fields: fields, body: answer.body))
    }

    private static func listen(host: String, port: Int) throws -> (Int32, Int) {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV
        var found: UnsafeMutablePointer<addrinfo>?
        let rc = getaddrinfo(host, String(port), &hints, &found)
        guard rc == 0, let first = found else {
            throw WorkerError(message: "call lane: cannot resolve '\(host)': \(String(cString: gai_strerror(rc)))")
        }
        defer { freeaddrinfo(found) }
        let fd = socket(first.pointee.ai_family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw WorkerError(message: "call lane: socket() failed: errno \(errno)") }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        guard bind(fd, first.pointee.ai_addr, first.pointee.ai_addrlen) == 0, Glibc.listen(fd, 256) == 0 else {
            let code = errno
            close(fd)
            throw WorkerError(message: "call lane: cannot listen on \(host):\(port): \(String(cString: strerror(code)))")
        }
        var address = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let boundPort = withUnsafeMutablePointer(to: &address) { p -> Int in
            _ = p.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
            switch Int32(p.pointee.ss_family) {
            case AF_INET: return p.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { Int(UInt16(bigEndian: $0.pointee.sin_port)) }
            case AF_INET6: return p.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { Int(UInt16(bigEndian: $0.pointee.sin6_port)) }
            default: return port
            }
        }
        return (fd, boundPort)
    }
}

/// One lane connection: its socket, and whether a call is in flight. The socket is closed once both its reader has
/// finished and no answer is left to write.
final class LaneConnection: Sendable {
    let fd: Int32
    private let state = Mutex(ConnectionState())

    private struct ConnectionState {
        var open = true
        var inFlight = false
        var readerDone = false
    }

    /// How long an answer may wait for the client to read (a full socket buffer) before the connection is dropped.
    static let writeTimeoutMs: Int32 = 30_000

    init(fd: Int32) { self.fd = fd }

    var callInFlight: Bool { state.withLock { $0.inFlight } }

    /// Marks a call in flight; false if one already is.
    func beginCall() -> Bool {
        state.withLock { s in
            guard !s.inFlight else { return false }
            s.inFlight = true
            return true
        }
    }

    /// Writes `bytes` whole (an answer ends its call in the same step, so the client's next request never finds it
    /// still in flight). Dropped when the connection has closed; a client that does not read for
    /// `writeTimeoutMs` loses the connection.
    @discardableResult
    func write(_ bytes: [UInt8], endsCall: Bool) -> Bool {
        state.withLock { s in
            defer {
                if endsCall { s.inFlight = false }
                closeIfDone(&s)
            }
            guard s.open else { return false }
            let ok = bytes.withUnsafeBytes { raw -> Bool in
                var sent = 0
                guard let base = raw.baseAddress else { return true }
                while sent < raw.count {
                    let n = send(fd, base + sent, raw.count - sent, Int32(MSG_NOSIGNAL | MSG_DONTWAIT))
                    if n > 0 {
                        sent += n
                        continue
                    }
                    if n < 0 && errno == EINTR { continue }
                    guard n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) else { return false }
                    // The client's receive window is full: wait for it without holding up the other Python threads.
                    let ready = PythonRuntime.withoutGIL { () -> Bool in
                        var p = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
                        return poll(&p, 1, Self.writeTimeoutMs) == 1 && p.revents & Int16(POLLOUT) != 0
                    }
                    if !ready { return false }
                }
                return true
            }
            if !ok { shutdown(fd, Int32(SHUT_RDWR)) }
            return ok
        }
    }

    func readerDone() {
        state.withLock { s in
            s.readerDone = true
            closeIfDone(&s)
        }
    }

    private func closeIfDone(_ s: inout ConnectionState) {
        guard s.open, s.readerDone, !s.inFlight else { return }
        s.open = false
        close(fd)
    }
}

/// Buffered blocking reads of one socket.
struct SocketReader {
    let fd: Int32
    /// What `buffer` shrinks back to after a frame that made it grow.
    private static let baseBytes = 64 << 10
    private var buffer = [UInt8](repeating: 0, count: SocketReader.baseBytes)
    private var low = 0
    private var high = 0

    /// Reads time out after `idleTimeout` (SO_RCVTIMEO); whether a timeout ends the connection is `take`'s
    /// `keepWaiting`.
    init(fd: Int32, idleTimeout: Duration) {
        self.fd = fd
        var timeout = timeval(tv_sec: Int(idleTimeout.components.seconds), tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    }

    /// The next `count` bytes; nil at the end of the stream, on an error, or on a timeout unless `keepWaiting()`
    /// says to go on (only asked while no byte of what is wanted has arrived). For a frame bigger than the buffer,
    /// the buffer grows by at most 1 MiB per read: memory follows the bytes that arrive, not the length declared.
    mutating func take(_ count: Int, keepWaiting: () -> Bool = { false }) -> [UInt8]? {
        if high - low < count && low > 0 {
            // Move what is left to the front, so the wanted bytes fit.
            buffer.withUnsafeMutableBytes { raw in
                guard let base = raw.baseAddress else { return }
                memmove(base, base + low, high - low)
            }
            high -= low
            low = 0
        }
        while high - low < count {
            if high == buffer.count { buffer.append(contentsOf: repeatElement(0, count: min(count - high, 1 << 20))) }
            let n = buffer.withUnsafeMutableBytes { raw -> Int in
                guard let base = raw.baseAddress else { return -1 }
                return read(fd, base + high, raw.count - high)
            }
            if n > 0 {
                high += n
            } else if n < 0 && errno == EINTR {
                continue
            } else if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) && high == low && keepWaiting() {
                continue
            } else {
                return nil
            }
        }
        let taken = Array(buffer[low..<(low + count)])
        low += count
        if buffer.count > Self.baseBytes && low == high {
            buffer = [UInt8](repeating: 0, count: Self.baseBytes)
            low = 0
            high = 0
        }
        return taken
    }
}
