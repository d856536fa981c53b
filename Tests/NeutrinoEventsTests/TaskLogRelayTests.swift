import Foundation
import Glibc
import NeutrinoCore
import NeutrinoTaskLog
import Synchronization
import Testing

@testable import NeutrinoEvents

/// Counts what the relay took, so a test can tell a batch the server committed from one the writer committed itself.
final class CountingRelay: TaskLogRelaying {
    let inner: TaskLogRelayClient
    private let counts = Mutex((delivered: 0, declined: 0))

    init(socketPath: String, answerTimeout: Duration = .seconds(5)) {
        inner = TaskLogRelayClient(socketPath: socketPath, answerTimeout: answerTimeout, retryAfter: .milliseconds(100), logger: testLogger)
    }

    func deliver(_ batch: [TaskEvent]) -> Bool {
        let ok = inner.deliver(batch)
        counts.withLock { ok ? ($0.delivered += batch.count) : ($0.declined += batch.count) }
        return ok
    }

    var delivered: Int { counts.withLock { $0.delivered } }
    var declined: Int { counts.withLock { $0.declined } }
}

/// The gateway's relay and a worker's writer on one real task-log file: real Unix sockets, real SQLite, real threads.
@Suite(.serialized)
struct TaskLogRelayTests {
    struct Setup {
        let path: String
        let socket: String
        let serverWriter: TaskLogWriter
        let server: TaskLogRelayServer
    }

    func setUp() throws -> Setup {
        let path = temporaryTaskLogPath()
        let serverWriter = try TaskLogWriter(path: path, logger: testLogger)
        let socket = try #require(TaskLogRelayAddress.socketPath(forDatabase: path))
        let server = TaskLogRelayServer(socketPath: socket, databasePath: path, writer: serverWriter, logger: testLogger)
        return Setup(path: path, socket: socket, serverWriter: serverWriter, server: server)
    }

    func clientWriter(_ path: String, _ relay: CountingRelay) throws -> TaskLogWriter {
        try TaskLogWriter(path: path, logger: testLogger, configuration: .init(relay: relay))
    }

    @Test func batchesAreCommittedByTheServersWriter() async throws {
        let s = try setUp()
        #expect(try s.server.start())
        defer { s.server.stop() }
        // The socket may be written by whoever may write the database file, and nobody else.
        var database = stat()
        var socket = stat()
        #expect(stat(s.path, &database) == 0 && lstat(s.socket, &socket) == 0)
        #expect(socket.st_mode & S_IFMT == S_IFSOCK)
        #expect(socket.st_mode & 0o777 == database.st_mode & 0o666)

        let relay = CountingRelay(socketPath: s.socket)
        let writer = try clientWriter(s.path, relay)
        let ids = (0..<80).map { _ in TaskID.make() }
        for id in ids { writer.record(contentsOf: lifecycle(id)) }
        await writer.flush()
        // Read-your-writes for the client: its flush returned, so the rows are there for any reader.
        let reader = try TaskLogReader(path: s.path, threads: 1)
        #expect(try await expectLifecycleRows(ids, reader: reader) == [])
        #expect(relay.delivered == ids.count * 4)
        #expect(relay.declined == 0)
        #expect(s.server.openConnections == 1)
        await writer.close()
        await reader.shutdown()
        await s.serverWriter.close()
    }

    @Test func withoutAServerTheWriterCommitsItself() async throws {
        let path = temporaryTaskLogPath()
        let socket = try #require(TaskLogRelayAddress.socketPath(forDatabase: path))
        let relay = CountingRelay(socketPath: socket)
        let writer = try clientWriter(path, relay)
        let ids = (0..<20).map { _ in TaskID.make() }
        for id in ids {
            writer.record(contentsOf: lifecycle(id))
            await writer.flush()
        }
        let reader = try TaskLogReader(path: path, threads: 1)
        #expect(try await expectLifecycleRows(ids, reader: reader) == [])
        #expect(relay.delivered == 0)
        #expect(relay.declined > 0)
        await writer.close()
        await reader.shutdown()
    }

    @Test func aServerThatStopsHandsTheWorkBack() async throws {
        let s = try setUp()
        #expect(try s.server.start())
        let relay = CountingRelay(socketPath: s.socket)
        let writer = try clientWriter(s.path, relay)
        let first = (0..<10).map { _ in TaskID.make() }
        for id in first { writer.record(contentsOf: lifecycle(id)) }
        await writer.flush()
        #expect(relay.delivered == first.count * 4)

        s.server.stop()
        // Its socket file goes with it; the next batches are committed by the client's own writer.
        #expect(access(s.socket, F_OK) != 0)
        await s.serverWriter.close()
        let second = (0..<10).map { _ in TaskID.make() }
        for id in second { writer.record(contentsOf: lifecycle(id)) }
        await writer.flush()
        let reader = try TaskLogReader(path: s.path, threads: 1)
        #expect(try await expectLifecycleRows(first + second, reader: reader) == [])
        #expect(relay.delivered == first.count * 4)
        #expect(relay.declined == second.count * 4)
        await writer.close()
        await reader.shutdown()
    }

    @Test func aClosingWriterDeclinesInsteadOfDroppingTheBatch() async throws {
        let s = try setUp()
        #expect(try s.server.start())
        defer { s.server.stop() }
        await s.serverWriter.close()  // the server still listens, but its writer takes nothing more
        let relay = CountingRelay(socketPath: s.socket)
        let writer = try clientWriter(s.path, relay)
        let id = TaskID.make()
        writer.record(contentsOf: lifecycle(id))
        await writer.flush()
        let reader = try TaskLogReader(path: s.path, threads: 1)
        #expect(try await expectLifecycleRows([id], reader: reader) == [])
        #expect(relay.delivered == 0)
        await writer.close()
        await reader.shutdown()
    }

    @Test func aGatewayThatDoesNotAnswerIsRestedFrom() async throws {
        let path = temporaryTaskLogPath()
        let socket = try #require(TaskLogRelayAddress.socketPath(forDatabase: path))
        // Listening, never answering: a gateway that hangs.
        let listener = TaskLogRelayAddress.socket()
        defer { close(listener) }
        #expect(TaskLogRelayAddress.withAddress(socket) { bind(listener, $0, $1) } == 0 && listen(listener, 8) == 0)
        let relay = CountingRelay(socketPath: socket, answerTimeout: .milliseconds(200))
        let writer = try clientWriter(path, relay)
        let ids = (0..<5).map { _ in TaskID.make() }
        for id in ids {
            writer.record(contentsOf: lifecycle(id))
            await writer.flush()
        }
        let reader = try TaskLogReader(path: path, threads: 1)
        #expect(try await expectLifecycleRows(ids, reader: reader) == [])
        #expect(relay.delivered == 0)
        // One connection, one timeout; the batches after it did not try again during the rest.
        _ = fcntl(listener, F_SETFL, O_NONBLOCK)
        var connections = 0
        while true {
            let fd = accept(listener, nil, nil)
            if fd < 0 { break }
            connections += 1
            close(fd)
        }
        #expect(connections == 1)
        await writer.close()
        await reader.shutdown()
    }

    @Test func aStaleSocketIsReplacedAndALiveOneLeftAlone() async throws {
        let s = try setUp()
        // A socket file left by a process that died: bound, never unlinked, nothing listening.
        let stale = TaskLogRelayAddress.socket()
        #expect(TaskLogRelayAddress.withAddress(s.socket) { bind(stale, $0, $1) } == 0)
        close(stale)
        #expect(try s.server.start())
        // A second gateway on the same file finds the first one serving and leaves it be.
        let second = TaskLogRelayServer(socketPath: s.socket, databasePath: s.path, writer: s.serverWriter, logger: testLogger)
        #expect(try second.start() == false)
        second.stop()
        #expect(access(s.socket, F_OK) == 0)
        let relay = CountingRelay(socketPath: s.socket)
        let writer = try clientWriter(s.path, relay)
        writer.record(contentsOf: lifecycle(TaskID.make()))
        await writer.flush()
        #expect(relay.delivered == 4)
        s.server.stop()
        #expect(access(s.socket, F_OK) != 0)
        await writer.close()
        await s.serverWriter.close()
    }

    @Test func somethingElseAtThePathIsNotTouched() throws {
        let s = try setUp()
        #expect(FileManager.default.createFile(atPath: s.socket, contents: Data("mine".utf8)))
        #expect(try s.server.start() == false)
        #expect(try String(contentsOfFile: s.socket, encoding: .utf8) == "mine")
    }

    @Test(
        arguments: [
            [0, 0, 0, 5, 0, 0, 0, 9, 1],  // an event length that runs past the frame
            [0, 0, 0, 3, 0, 0, 0],  // a frame too short for an event's length
            [0, 0, 0, 8, 0, 0, 0, 4, 0x7B, 0x7D, 0x20, 0x20],  // an event that is not an event
            [0xFF, 0xFF, 0xFF, 0xFF],  // a frame longer than the limit
        ] as [[UInt8]])
    func aClientThatBreaksTheProtocolLosesTheConnection(bytes: [UInt8]) async throws {
        let s = try setUp()
        #expect(try s.server.start())
        defer { s.server.stop() }
        let fd = TaskLogRelayAddress.connect(s.socket)
        #expect(fd >= 0)
        defer { close(fd) }
        TaskLogRelayAddress.setTimeouts(fd, .seconds(5))
        #expect(TaskLogRelayAddress.sendAll(fd, bytes))
        var byte: UInt8 = 0
        // Closed without an answer.
        #expect(read(fd, &byte, 1) == 0)
        #expect(try await lastEventID(s.path) == 0)
        await s.serverWriter.close()
    }

    @Test func theSocketPathFollowsTheFilesRealPath() throws {
        let path = temporaryTaskLogPath()
        let folder = (path as NSString).deletingLastPathComponent
        let link = folder + "-link"
        #expect(symlink(folder, link) == 0)
        defer { unlink(link) }
        // Before the file exists: its folder's real path and its name.
        let before = try #require(TaskLogRelayAddress.socketPath(forDatabase: link + "/tasks.db"))
        #expect(before == TaskLogRelayAddress.socketPath(forDatabase: path))
        #expect(before.hasSuffix("/tasks.db-relay") && !before.contains("-link"))
        _ = try TaskLogWriter(path: path, logger: testLogger)
        #expect(TaskLogRelayAddress.socketPath(forDatabase: link + "/tasks.db") == before)
        // Too long for a socket address, or in a folder that does not exist: no relay.
        #expect(TaskLogRelayAddress.socketPath(forDatabase: folder + "/" + String(repeating: "x", count: 120)) == nil)
        #expect(TaskLogRelayAddress.socketPath(forDatabase: "/nonexistent-\(UUID().uuidString)/tasks.db") == nil)
    }

    @Test func framesCarryEveryEventExactly() throws {
        let events = lifecycle(TaskID.make()) + lifecycle(TaskID.make(), pool: "p2", worker: "w2")
        let frame = try #require(TaskLogRelayAddress.frame(events))
        #expect(TaskLogRelayAddress.readLength(frame, at: 0) == frame.count - 4)
        #expect(TaskLogRelayAddress.events(in: Array(frame.dropFirst(4))) == events)
        #expect(TaskLogRelayAddress.events(in: []) == [])
    }

    /// The id of the last event in the file (0: none was written).
    func lastEventID(_ path: String) async throws -> Int64 {
        let reader = try TaskLogReader(path: path, threads: 1)
        let id = try await reader.lastEventID()
        await reader.shutdown()
        return id
    }
}
