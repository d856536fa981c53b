import Foundation
import NeutrinoNATS

/// A real JetStream cluster of `nats-server` nodes on loopback for one test: each node on free client, route and
/// monitoring ports with its own configuration file (unique `server_name` `n1`, `n2`, …, routes to every node) and
/// store. Nodes can be killed (SIGKILL) and started again on the same ports and store.
public final class NATSClusterProcess: @unchecked Sendable {
    public struct Node: Sendable {
        public let name: String
        public let port: Int
        public let clusterPort: Int
        public let monitorPort: Int
        public let configPath: String
        public var url: String { "nats://127.0.0.1:\(port)" }
    }

    public let nodes: [Node]
    public let directory: String
    private let lock = NSLock()
    private var processes: [Int: Process] = [:]

    /// Every node's client URL.
    public var urls: [String] { nodes.map(\.url) }
    /// Every node's client URL, comma-separated (what `--nats` takes).
    public var url: String { urls.joined(separator: ",") }

    private init(nodes: [Node], directory: String) {
        self.nodes = nodes
        self.directory = directory
    }

    /// Starts `size` nodes and waits until they accept connections and have elected a JetStream meta leader.
    public static func start(size: Int = 3) async throws -> NATSClusterProcess {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("neutrino-nats-cluster-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        var taken: Set<Int> = []
        func port() throws -> Int {
            while true {
                let p = try NATSServerProcess.freePort()
                if taken.insert(p).inserted { return p }
            }
        }
        var specs: [(Int, Int, Int)] = []
        for _ in 0..<size { specs.append((try port(), try port(), try port())) }
        let routes = specs.map { "    nats-route://127.0.0.1:\($0.1)" }.joined(separator: "\n")
        var nodes: [Node] = []
        for (i, (client, route, monitor)) in specs.enumerated() {
            let name = "n\(i + 1)"
            let store = "\(dir)/\(name)"
            try FileManager.default.createDirectory(atPath: store, withIntermediateDirectories: true)
            let config = """
                server_name: \(name)
                host: 127.0.0.1
                port: \(client)
                http: "127.0.0.1:\(monitor)"
                jetstream { store_dir: "\(store)" }
                cluster {
                  name: neutrino-test
                  listen: "127.0.0.1:\(route)"
                  routes: [
                \(routes)
                  ]
                }

                """
            let path = "\(dir)/\(name).conf"
            try config.write(toFile: path, atomically: true, encoding: .utf8)
            nodes.append(Node(name: name, port: client, clusterPort: route, monitorPort: monitor, configPath: path))
        }
        let cluster = NATSClusterProcess(nodes: nodes, directory: dir)
        do {
            for i in nodes.indices { try cluster.launch(i) }
            for i in nodes.indices { try await cluster.waitAccepting(i) }
            guard await cluster.waitForMetaLeader(timeout: .seconds(60)) else { throw ClusterError.noMetaLeader }
        } catch {
            cluster.destroy()
            throw error
        }
        return cluster
    }

    enum ClusterError: Error { case notListening(String), noMetaLeader }

    private func launch(_ index: Int) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: NATSServerProcess.executable)
        process.arguments = ["-c", nodes[index].configPath]
        process.standardOutput = FileHandle(forWritingAtPath: "/dev/null")
        process.standardError = FileHandle(forWritingAtPath: "/dev/null")
        try process.run()
        lock.withLock { processes[index] = process }
    }

    private func waitAccepting(_ index: Int) async throws {
        for _ in 0..<500 {
            if NATSServerProcess.accepts(port: nodes[index].port) { return }
            try await Task.sleep(for: .milliseconds(20))
        }
        throw ClusterError.notListening(nodes[index].name)
    }

    /// The index of the node called `name` (`n2` → 1).
    public func index(of name: String) -> Int? { nodes.firstIndex { $0.name == name } }

    public func isRunning(_ index: Int) -> Bool { lock.withLock { processes[index]?.isRunning ?? false } }

    /// SIGKILL: the node dies without a goodbye (no lame-duck mode, no leadership transfer).
    public func kill(_ index: Int) {
        guard let process = lock.withLock({ processes.removeValue(forKey: index) }) else { return }
        if process.isRunning { Foundation.kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
    }

    /// Starts a killed node again (same ports, same store) and waits until it accepts connections.
    public func restart(_ index: Int) async throws {
        try launch(index)
        try await waitAccepting(index)
    }

    /// The JetStream meta leader as the running nodes see it, once they agree.
    public func metaLeader() -> String? {
        var seen: Set<String> = []
        for (i, node) in nodes.enumerated() where isRunning(i) {
            guard let body = httpGet(port: node.monitorPort, path: "/jsz"),
                let json = try? JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: Any],
                let meta = json["meta_cluster"] as? [String: Any], let leader = meta["leader"] as? String, !leader.isEmpty
            else { return nil }
            seen.insert(leader)
        }
        return seen.count == 1 ? seen.first : nil
    }

    public func waitForMetaLeader(timeout: Duration) async -> Bool {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if metaLeader() != nil { return true }
            try? await Task.sleep(for: .milliseconds(100))
        }
        return false
    }

    /// Stops every node (SIGTERM, then SIGKILL) and removes the stores.
    public func destroy() {
        let all = lock.withLock { () -> [Process] in
            defer { processes.removeAll() }
            return Array(processes.values)
        }
        for process in all where process.isRunning { process.terminate() }
        for process in all {
            for _ in 0..<250 where process.isRunning { usleep(20_000) }
            if process.isRunning { Foundation.kill(process.processIdentifier, SIGKILL) }
            process.waitUntilExit()
        }
        try? FileManager.default.removeItem(atPath: directory)
    }
}

/// Runs `body` with a fresh cluster of `size` nodes and a connection to all of them whose JetStream contexts
/// provision with `replication`; tears all down afterwards.
public func withJetStreamCluster(
    size: Int = 3, replication: StreamReplication = .init(replicas: 3, reconcile: true),
    publishTimeout: Duration = .seconds(5), requestTimeout: Duration = .seconds(5),
    _ body: (NATSClusterProcess, NATSConnection, JetStream) async throws -> Void
) async throws {
    let cluster = try await NATSClusterProcess.start(size: size)
    defer { cluster.destroy() }
    var options = NATSConnection.Options()
    options.replication = replication
    let connection = try await NATSConnection.connect(
        servers: cluster.urls, name: "neutrino-cluster-test", logger: testLogger,
        options: options)
    do {
        let js = try connection.jetStream(requestTimeout: requestTimeout, publishTimeout: publishTimeout)
        try await body(cluster, connection, js)
    } catch {
        await connection.close()
        throw error
    }
    await connection.close()
}

/// The body of `GET http://127.0.0.1:port/path` (HTTP/1.0, read to the end), or nil.
func httpGet(port: Int, path: String) -> String? {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var timeout = timeval(tv_sec: 2, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = UInt16(port).bigEndian
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    let connected = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard connected == 0 else { return nil }
    let request = Array("GET \(path) HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".utf8)
    guard request.withUnsafeBytes({ send(fd, $0.baseAddress, $0.count, 0) }) == request.count else { return nil }
    var response: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        if n <= 0 { break }
        response.append(contentsOf: buffer[0..<n])
    }
    let text = String(decoding: response, as: UTF8.self)
    guard text.hasPrefix("HTTP/1.") && text.contains(" 200 "), let split = text.range(of: "\r\n\r\n") else { return nil }
    return String(text[split.upperBound...])
}
