import Foundation
import Logging
import NeutrinoNATS

/// A real `nats-server -js` on a free loopback port with its own store directory, for one test (shared by the
/// test targets that need NATS).
///
/// `@unchecked Sendable`: `process` is replaced only by `restart`/`stop`, which one test calls from one task at a time.
public final class NATSServerProcess: @unchecked Sendable {
    public let port: Int
    public let storeDir: String
    private var process: Process?

    public var url: String { "nats://127.0.0.1:\(port)" }

    private init(port: Int, storeDir: String) {
        self.port = port
        self.storeDir = storeDir
    }

    /// Starts a server on a free port and a fresh store directory.
    public static func start() async throws -> NATSServerProcess {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("neutrino-nats-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let server = NATSServerProcess(port: try freePort(), storeDir: dir)
        try await server.restart()
        return server
    }

    /// A server that is not started yet (for connecting before the server is up).
    public static func notStarted() throws -> NATSServerProcess {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("neutrino-nats-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        return NATSServerProcess(port: try freePort(), storeDir: dir)
    }

    /// Starts (again) on the same port and store directory; returns once it accepts TCP connections.
    public func restart() async throws {
        precondition(process == nil, "already running")
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Self.executable)
        process.arguments = ["-js", "-a", "127.0.0.1", "-p", String(port), "-sd", storeDir]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        self.process = process
        for _ in 0..<500 {  // 10 s at most
            if Self.accepts(port: port) { return }
            if !process.isRunning { break }
            try await Task.sleep(for: .milliseconds(20))
        }
        stop()
        throw ServerError.notListening(port)
    }

    /// Stops the server (SIGTERM, SIGKILL after 5 s) and waits for it to exit.
    public func stop() {
        guard let process else { return }
        self.process = nil
        if process.isRunning { process.terminate() }
        for _ in 0..<250 where process.isRunning { usleep(20_000) }
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            for _ in 0..<250 where process.isRunning { usleep(20_000) }
        }
    }

    /// Stops the server and removes its store.
    public func destroy() {
        stop()
        try? FileManager.default.removeItem(atPath: storeDir)
    }

    enum ServerError: Error { case notListening(Int), noFreePort }

    static let executable: String = {
        for path in ["/usr/sbin/nats-server", "/usr/bin/nats-server", "/usr/local/bin/nats-server"]
        where FileManager.default.isExecutableFile(atPath: path) { return path }
        return "nats-server"
    }()

    static func freePort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw ServerError.noFreePort }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = 0
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0 else { throw ServerError.noFreePort }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let named = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        guard named == 0 else { throw ServerError.noFreePort }
        return Int(UInt16(bigEndian: address.sin_port))
    }

    static func accepts(port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = UInt16(port).bigEndian
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        } == 0
    }
}

public let testLogger: Logger = {
    var logger = Logger(label: "neutrino.nats.test")
    logger.logLevel = .critical
    return logger
}()

/// Runs `body` with a fresh server, a connection and a JetStream context; tears all down afterwards.
public func withJetStream(
    publishTimeout: Duration = .seconds(5), requestTimeout: Duration = .seconds(5), options: NATSConnection.Options = NATSConnection.Options(),
    _ body: (NATSServerProcess, NATSConnection, JetStream) async throws -> Void
) async throws {
    let server = try await NATSServerProcess.start()
    defer { server.destroy() }
    let connection = try await NATSConnection.connect(
        url: server.url, name: "neutrino-test", logger: testLogger,
        options: options)
    do {
        let js = try connection.jetStream(requestTimeout: requestTimeout, publishTimeout: publishTimeout)
        try await body(server, connection, js)
    } catch {
        await connection.close()
        throw error
    }
    await connection.close()
}

/// Polls `condition` every 50 ms, at most `attempts` times; true as soon as it holds.
public func eventually(attempts: Int = 200, _ condition: () async throws -> Bool) async rethrows -> Bool {
    for _ in 0..<attempts {
        if try await condition() { return true }
        try? await Task.sleep(for: .milliseconds(50))
    }
    return false
}
