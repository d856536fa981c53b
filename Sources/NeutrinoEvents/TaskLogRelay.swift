import Glibc
import Logging
import Metrics
import NeutrinoCore
import NeutrinoTaskLog
import NeutrinoThreads
import Synchronization

/// One SQLite writer per task-log file on a host: the gateway's writer commits the workers' batches for them.
///
/// Every process that commits into a shared SQLite file rereads the pages the others changed since its own last commit
/// and waits for the file's write lock; with the gateway and two queued workers each committing, the workers' writers
/// were about a third of their CPU per task (bench/README.md, eleventh and twenty-second rounds). The gateway listens on a Unix socket beside
/// the file (`TaskLogRelayAddress`); a worker's writer offers each batch there first and commits it itself only when
/// that fails. The socket is only a shortcut: a worker whose gateway is gone, elsewhere, or slow writes directly, as
/// before, and a batch both sides end up committing is applied twice, which changes nothing.
///
/// Frames, both ways over one connection per client, one batch at a time: the request is `u32 length | (u32 length |
/// event)…`, each event as `EventCodec` writes it (the JSON of `neutrino.events.<pool>`), big-endian lengths; the
/// answer one byte, 1 when the batch is committed, 0 when it was not taken (the gateway's writer is closing or full).
public enum TaskLogRelayAddress {
    /// The longest request frame, in bytes. A larger batch (huge results) is committed by its own process.
    public static let maxFrameBytes = 64 << 20

    /// The socket for the task log at `databasePath`: its real path (symbolic links and relative paths resolved, so
    /// every process that opens the file finds the same socket) plus `-relay`, beside `-wal` and `-shm`; for a file
    /// not created yet, its folder's real path and its name. nil when neither resolves or the path does not fit a
    /// socket address (107 bytes): no relay for that file.
    public static func socketPath(forDatabase databasePath: String) -> String? {
        func resolve(_ path: String) -> String? {
            guard let resolved = realpath(path, nil) else { return nil }
            defer { free(resolved) }
            return String(cString: resolved)
        }
        var file = resolve(databasePath)
        if file == nil {
            let slash = databasePath.lastIndex(of: "/")
            let folder = slash.map { String(databasePath[..<$0]) } ?? "."
            let name = slash.map { String(databasePath[databasePath.index(after: $0)...]) } ?? databasePath
            file = resolve(folder.isEmpty ? "/" : folder).map { ($0 == "/" ? "" : $0) + "/" + name }
        }
        guard let file else { return nil }
        let path = file + "-relay"
        return path.utf8.count < MemoryLayout.size(ofValue: sockaddr_un().sun_path) ? path : nil
    }

    /// A blocking `AF_UNIX` stream socket (close-on-exec), or -1.
    static func socket() -> Int32 { Glibc.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) }

    /// Runs `body` with `path` as a socket address (the caller checked its length: `socketPath`).
    static func withAddress<T>(_ path: String, _ body: (UnsafePointer<sockaddr>, socklen_t) -> T) -> T {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            let bytes = Array(path.utf8.prefix(raw.count - 1))
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        return withUnsafePointer(to: &address) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
    }

    /// Connects to the socket at `path`; -1 when nothing listens there (no file, or a file left by a process that died:
    /// `errno` ECONNREFUSED), or it may not be used (EACCES).
    static func connect(_ path: String) -> Int32 {
        let fd = socket()
        guard fd >= 0 else { return -1 }
        let rc = withAddress(path) { Glibc.connect(fd, $0, $1) }
        if rc != 0 {
            let code = errno
            close(fd)
            errno = code
            return -1
        }
        return fd
    }

    /// The request frame for `batch`, or nil when it would be longer than `maxFrameBytes`.
    static func frame(_ batch: [TaskEvent]) -> [UInt8]? {
        var frame: [UInt8] = [0, 0, 0, 0]
        for event in batch {
            let encoded = EventCodec.encode(event)
            guard frame.count + 4 + encoded.count <= maxFrameBytes + 4 else { return nil }
            appendLength(encoded.count, to: &frame)
            frame.append(contentsOf: encoded)
        }
        let length = UInt32(frame.count - 4).bigEndian
        withUnsafeBytes(of: length) { frame.replaceSubrange(0..<4, with: $0) }
        return frame
    }

    /// The events of a request frame's payload; nil when it is not a sequence of events.
    static func events(in payload: [UInt8]) -> [TaskEvent]? {
        var events: [TaskEvent] = []
        var at = 0
        while at < payload.count {
            guard payload.count - at >= 4 else { return nil }
            let length = readLength(payload, at: at)
            at += 4
            guard length <= payload.count - at, let event = try? EventCodec.decode(Array(payload[at..<(at + length)])) else { return nil }
            events.append(event)
            at += length
        }
        return events
    }

    static func appendLength(_ length: Int, to bytes: inout [UInt8]) {
        withUnsafeBytes(of: UInt32(truncatingIfNeeded: length).bigEndian) { bytes.append(contentsOf: $0) }
    }

    static func readLength(_ bytes: [UInt8], at offset: Int) -> Int {
        bytes[offset..<(offset + 4)].reduce(0) { $0 << 8 | Int($1) }
    }

    /// Writes `bytes` whole; false on an error or a timeout (SO_SNDTIMEO).
    static func sendAll(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
        bytes.withUnsafeBytes { raw in
            guard let base = raw.baseAddress else { return true }
            var sent = 0
            while sent < raw.count {
                let n = send(fd, base + sent, raw.count - sent, Int32(MSG_NOSIGNAL))
                if n > 0 {
                    sent += n
                } else if n < 0 && errno == EINTR {
                    continue
                } else {
                    return false
                }
            }
            return true
        }
    }

    static func setTimeouts(_ fd: Int32, _ timeout: Duration) {
        var value = timeval(tv_sec: Int(timeout.components.seconds), tv_usec: Int(timeout.components.attoseconds / 1_000_000_000_000))
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &value, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &value, socklen_t(MemoryLayout<timeval>.size))
    }
}

/// A worker's side of the relay: `TaskLogRelayClient` is `TaskLogWriter.Configuration.relay` for a task log another
/// process serves (`TaskLogRelayServer`). It connects on the first batch; whenever a batch does not go through, the
/// writer commits it itself, and the relay waits before the next try:
/// - nothing listens (no gateway, or one that is stopping), or the gateway declined the batch (its writer closing or
///   full): `retryAfter` (1 s), so a task log without a gateway costs one failed `connect` a second;
/// - no answer within `answerTimeout` (2 s; the gateway gives up on its own commit after 1 s and declines), or the
///   connection broke mid-batch: the gateway is unwell, and the relay rests 30 s, doubling up to 10 min while it
///   keeps failing, so a stopped gateway costs this process one late batch per rest, not one per batch.
/// A batch that goes through ends the rest.
public final class TaskLogRelayClient: TaskLogRelaying {
    private let socketPath: String
    private let answerTimeout: Duration
    private let retryAfter: Duration
    private let logger: Logger
    private let state = Mutex(Connection())

    static let firstRest: Duration = .seconds(30)
    static let longestRest: Duration = .seconds(600)

    private struct Connection {
        var fd: Int32 = -1
        var retryAtNanos: UInt64 = 0
        /// The rest after the next failure of an unwell gateway (0: none yet since the last batch went through).
        var rest: Duration = .zero
        /// Whether a batch has gone through since the last failure (a failure after one is worth a log line).
        var delivering = false
    }

    /// `answerTimeout`: how long a batch waits for its commit before this process commits it itself.
    public init(socketPath: String, answerTimeout: Duration = .seconds(2), retryAfter: Duration = .seconds(1), logger: Logger) {
        self.socketPath = socketPath
        self.answerTimeout = answerTimeout
        self.retryAfter = retryAfter
        self.logger = logger
    }

    deinit {
        state.withLock { if $0.fd >= 0 { close($0.fd) } }
    }

    public func deliver(_ batch: [TaskEvent]) -> Bool {
        guard let frame = TaskLogRelayAddress.frame(batch) else { return false }
        // Held while the batch is out: only the writer's thread calls this.
        return state.withLock { c in
            if c.fd < 0 {
                guard monotonicNanos() >= c.retryAtNanos else { return false }
                c.fd = TaskLogRelayAddress.connect(socketPath)
                guard c.fd >= 0 else {
                    c.retryAtNanos = Self.nanos(after: retryAfter)
                    return false
                }
                TaskLogRelayAddress.setTimeouts(c.fd, answerTimeout)
                logger.debug("task log relay connected", metadata: ["socket": "\(socketPath)"])
            }
            var answer: UInt8 = 0
            let answered = TaskLogRelayAddress.sendAll(c.fd, frame) && readAnswer(c.fd, &answer)
            if answered && answer == 1 {
                c.delivering = true
                c.rest = .zero
                return true
            }
            close(c.fd)
            c.fd = -1
            relayFallbacks.increment()
            if answered {
                c.retryAtNanos = Self.nanos(after: retryAfter)  // declined: its writer is closing or full
            } else {
                c.rest = c.rest == .zero ? Self.firstRest : min(c.rest * 2, Self.longestRest)
                c.retryAtNanos = Self.nanos(after: c.rest)
            }
            if c.delivering {
                c.delivering = false
                logger.notice(
                    "task log relay did not take a batch; this process commits its events itself until it does again",
                    metadata: [
                        "socket": "\(socketPath)", "events": "\(batch.count)", "answered": "\(answered)",
                        "next_try_in": "\(answered ? retryAfter : c.rest)",
                    ])
            }
            return false
        }
    }

    private static func nanos(after delay: Duration) -> UInt64 {
        monotonicNanos() &+ UInt64(max(0, delay.wholeMilliseconds)) &* 1_000_000
    }

    private func readAnswer(_ fd: Int32, _ answer: inout UInt8) -> Bool {
        while true {
            let n = read(fd, &answer, 1)
            if n == 1 { return true }
            if n < 0 && errno == EINTR { continue }
            return false
        }
    }
}

/// The gateway's side of the relay: takes other processes' batches for its task-log file on a Unix socket beside it
/// and answers each once its own writer has committed it. One thread accepts, one per connection reads (a connection
/// per worker process). The socket gets the database file's permission bits, so whoever may not write the file may
/// not write through the socket either.
public final class TaskLogRelayServer: Sendable {
    private let socketPath: String
    private let databasePath: String
    private let writer: TaskLogWriter
    private let commitTimeout: Duration
    private let maxConnections: Int
    private let logger: Logger
    private let state = Mutex(ServerState())

    private struct ServerState {
        var listener: Int32 = -1
        /// The socket file's inode once bound: removed at stop only while it is still this server's.
        var inode: ino_t = 0
        var stopping = false
        var connections: Set<Int32> = []
        var serial = 0
    }

    public init(
        socketPath: String, databasePath: String, writer: TaskLogWriter, commitTimeout: Duration = .seconds(1), maxConnections: Int = 256,
        logger: Logger
    ) {
        self.socketPath = socketPath
        self.databasePath = databasePath
        self.writer = writer
        self.commitTimeout = commitTimeout
        self.maxConnections = maxConnections
        self.logger = logger
    }

    /// Listens on the socket. False when another live process already serves it (another gateway on the same file),
    /// or the path holds something that is not a socket: then this process only writes its own events.
    public func start() throws -> Bool {
        var info = stat()
        if lstat(socketPath, &info) == 0 {
            guard info.st_mode & S_IFMT == S_IFSOCK else {
                logger.warning(
                    "task log relay: the path is taken by something else; workers write the task log themselves", metadata: ["path": "\(socketPath)"])
                return false
            }
            let live = TaskLogRelayAddress.connect(socketPath)
            let code = errno
            if live >= 0 {
                close(live)
                logger.info("another process relays for this task log", metadata: ["socket": "\(socketPath)"])
                return false
            }
            // Only a socket nobody listens on was left by a process that died; one this process may not use is not its.
            guard code == ECONNREFUSED else { return false }
            unlink(socketPath)
        }
        let fd = TaskLogRelayAddress.socket()
        guard fd >= 0 else { throw RelayError("socket() failed: errno \(errno)") }
        guard TaskLogRelayAddress.withAddress(socketPath, { bind(fd, $0, $1) }) == 0 else {
            let code = errno
            close(fd)
            if code == EADDRINUSE { return false }  // another gateway bound it a moment ago
            throw RelayError("cannot bind \(socketPath): \(String(cString: strerror(code)))")
        }
        var database = stat()
        let mode = stat(databasePath, &database) == 0 ? database.st_mode & 0o666 : 0o600
        guard chmod(socketPath, mode) == 0, Glibc.listen(fd, 64) == 0, lstat(socketPath, &info) == 0 else {
            let code = errno
            close(fd)
            unlink(socketPath)
            throw RelayError("cannot listen on \(socketPath): \(String(cString: strerror(code)))")
        }
        state.withLock {
            $0.listener = fd
            $0.inode = info.st_ino
        }
        let rc = startThread(name: "relay-accept", stackBytes: 256 << 10) { [self] in acceptLoop(fd) }
        guard rc == 0 else {
            stop()
            state.withLock { s in
                close(s.listener)
                s.listener = -1
            }
            throw RelayError("cannot start the relay's accept thread: errno \(rc)")
        }
        logger.debug("task log relay listening", metadata: ["socket": "\(socketPath)"])
        return true
    }

    /// Takes no more batches: the listener and every connection are shut (a client waiting for an answer commits its
    /// batch itself), and the socket file is removed if it is still this server's.
    public func stop() {
        // Under the lock: a descriptor in the state is still open (its thread closes it under the lock too), so
        // no number reused by another file is shut here.
        state.withLock { s in
            let bound = s.inode != 0
            s.stopping = true
            var info = stat()
            if bound && lstat(socketPath, &info) == 0 && info.st_ino == s.inode { unlink(socketPath) }
            s.inode = 0
            // Wakes the blocked accept() and reads; each thread closes its own descriptor.
            if s.listener >= 0 { shutdown(s.listener, Int32(SHUT_RDWR)) }
            for fd in s.connections { shutdown(fd, Int32(SHUT_RDWR)) }
        }
    }

    /// Connections open now (for tests).
    public var openConnections: Int { state.withLock { $0.connections.count } }

    private var stopping: Bool { state.withLock { $0.stopping } }

    private func acceptLoop(_ listener: Int32) {
        defer {
            state.withLock { s in
                close(listener)
                s.listener = -1
            }
        }
        while let fd = acceptConnection(on: listener, stopping: { stopping }) {
            let serial = state.withLock { s -> Int? in
                guard !s.stopping, s.connections.count < maxConnections else { return nil }
                s.connections.insert(fd)
                s.serial &+= 1
                return s.serial
            }
            guard let serial else {
                close(fd)  // the client commits itself
                continue
            }
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            let rc = startThread(name: "relay-\(serial)", stackBytes: 256 << 10) { [self] in
                serve(fd)
                closeConnection(fd)
            }
            if rc != 0 { closeConnection(fd) }
        }
    }

    private func closeConnection(_ fd: Int32) {
        state.withLock { s in
            s.connections.remove(fd)
            close(fd)
        }
    }

    /// Reads batches until the client hangs up, breaks the protocol, or the server stops.
    private func serve(_ fd: Int32) {
        var reader = SocketReader(fd: fd, idleTimeout: .seconds(60))
        while let head = reader.take(4, keepWaiting: { !self.stopping }) {
            let length = TaskLogRelayAddress.readLength(head, at: 0)
            guard length <= TaskLogRelayAddress.maxFrameBytes, let payload = reader.take(length),
                let events = TaskLogRelayAddress.events(in: payload)
            else {
                logger.warning("task log relay: a client broke the protocol; connection closed")
                return
            }
            let committed = !stopping && writer.commit(events, timeout: commitTimeout)
            guard TaskLogRelayAddress.sendAll(fd, [committed ? 1 : 0]) else { return }
            if committed { relayedIn.increment(by: events.count) }
        }
    }
}

struct RelayError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = "task log relay: \(description)" }
}

/// Batches a worker committed itself because the relay did not take them (`TaskLogRelayClient`).
private let relayFallbacks = Counter(label: "neutrino_tasklog_relay_fallbacks_total")
/// Events the gateway committed for other processes (`TaskLogRelayServer`).
private let relayedIn = Counter(label: "neutrino_tasklog_relay_events_in_total")
