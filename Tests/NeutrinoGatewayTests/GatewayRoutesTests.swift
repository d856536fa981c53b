import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Logging
import NIOCore
import Testing

@testable import NeutrinoGateway

/// Every gateway route in process (HummingbirdTesting's router framework) against a real temporary SQLite task log:
/// status codes and bodies, without spawning workers or NATS. The sync pool points at a port nothing listens on, so
/// sync calls end `failed` with `NoWorkerAvailable` and leave real rows for the polling API.
struct GatewayRoutesTests {
    static let manifest = #"""
        {"openapi":"3.1.0","info":{"title":"demo","version":"1"},"x-neutrino-app":"demo",
         "paths":{
          "/api/echo":{"post":{"x-neutrino-mode":"sync","x-neutrino-pool":"fast","x-neutrino-timeout":5000,"x-neutrino-retries":0,
            "requestBody":{"content":{"application/json":{"schema":{"type":"object","properties":{"args":
              {"type":"object","properties":{"x":{"type":"integer"}},"required":["x"],"additionalProperties":false}}}}}}}},
          "/api/report":{"post":{"x-neutrino-mode":"async","x-neutrino-pool":"async","x-neutrino-timeout":300000,"x-neutrino-retries":3}}
         }}
        """#

    /// A gateway on a fresh task log in a temporary folder, its sync pool on a closed port (calls do not wait for a
    /// worker to come back unless `workerJoinWait` says so).
    static func withGateway(
        maxBodyBytes: Int = 1 << 20, workerJoinWait: Duration = .zero,
        _ test: @Sendable (any TestClientProtocol) async throws -> Void
    ) async throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("gateway-routes-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let manifestPath = dir.appendingPathComponent("openapi.json").path
        try Data(manifest.utf8).write(to: URL(fileURLWithPath: manifestPath))
        var configuration = GatewayConfiguration(
            manifestPath: manifestPath, httpPools: ["fast": ["http://127.0.0.1:9"]],
            taskLogPath: dir.appendingPathComponent("tasks.db").path, port: 0, maxBodyBytes: maxBodyBytes)
        configuration.workerJoinWait = workerJoinWait
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        let app = try await buildGateway(configuration, logger: logger)
        try await app.test(.router, test)
    }

    static func json(_ buffer: ByteBuffer) throws -> [String: Any] {
        try #require(JSONSerialization.jsonObject(with: Data(buffer.readableBytesView)) as? [String: Any])
    }

    static func errorType(_ buffer: ByteBuffer) throws -> String? {
        (try json(buffer)["error"] as? [String: Any])?["type"] as? String
    }

    @Test func operationsRoutes() async throws {
        try await Self.withGateway { client in
            do {
                let r = try await client.execute(uri: "/healthz", method: .get)
                #expect(r.status == .ok)
                let found = try Self.json(r.body)["status"] as? String
                #expect(found == "ok")
            }
            do {
                // Ready until a call finds the pool's only worker unreachable (its circuit then opens).
                let r = try await client.execute(uri: "/readyz", method: .get)
                #expect(r.status == .ok)
            }
            do {
                let r = try await client.execute(uri: "/openapi.json", method: .get)
                #expect(r.status == .ok)
                let found = try Self.json(r.body)["x-neutrino-app"] as? String
                #expect(found == "demo")
            }
            do {
                let r = try await client.execute(uri: "/pools", method: .get)
                #expect(r.status == .ok)
                let json = try Self.json(r.body)
                #expect(json["pools"] is [Any])
            }
            do {
                let r = try await client.execute(uri: "/metrics", method: .get)
                #expect(r.status == .ok)
                #expect(r.headers[.contentType]?.hasPrefix("text/plain") == true)
            }
        }
    }

    @Test func submitRefusesBadRequests() async throws {
        try await Self.withGateway(maxBodyBytes: 64) { client in
            let cases: [(String, String, HTTPResponse.Status, String)] = [
                ("/api/nope", #"{"args":{}}"#, .notFound, "UnknownTask"),
                ("/api/echo", #"{"args":"#, .badRequest, "MalformedJSON"),
                ("/api/echo", #"[1]"#, .badRequest, "MalformedJSON"),
                ("/api/echo", #"{"args":{"x":"one"}}"#, .unprocessableContent, "InvalidArguments"),
                ("/api/echo", #"{"args":{"x":1},"extra":1}"#, .unprocessableContent, "InvalidArguments"),
                ("/api/echo", #"{"args":{"x":1,"pad":"\#(String(repeating: "a", count: 100))"}}"#, .contentTooLarge, "PayloadTooLarge"),
                ("/api/report", #"{"args":{}}"#, .notImplemented, "NotSupported"),
            ]
            for (uri, body, status, type) in cases {
                do {
                    let r = try await client.execute(uri: uri, method: .post, body: ByteBuffer(string: body))
                    #expect(r.status == status, "\(uri) \(body)")
                    #expect(try Self.errorType(r.body) == type, "\(uri) \(body)")
                }
            }
        }
    }

    /// Every worker refusing connections: the call waits `--worker-join-wait` for one to come back, then says so.
    @Test func aCallToAPoolWhoseWorkersStayDownWaitsThenSaysHowLong() async throws {
        try await Self.withGateway(workerJoinWait: .milliseconds(300)) { client in
            let r = try await client.execute(uri: "/api/echo", method: .post, body: ByteBuffer(string: #"{"args":{"x":3}}"#))
            #expect(r.status == .serviceUnavailable)
            let error = try #require(try Self.json(r.body)["error"] as? [String: Any])
            #expect(error["type"] as? String == "NoWorkerAvailable")
            let message = try #require(error["message"] as? String)
            #expect(message.contains("http://127.0.0.1:9"), "\(message)")
            #expect(message.contains("no worker of pool 'fast' came back within 0.3 seconds (--worker-join-wait)"), "\(message)")
        }
    }

    @Test func aSyncCallWithoutWorkersEndsFailedAndThePollingAPIShowsIt() async throws {
        try await Self.withGateway { client in
            let r = try await client.execute(uri: "/api/echo", method: .post, body: ByteBuffer(string: #"{"args":{"x":3}}"#))
            do {
                #expect(r.status == .serviceUnavailable)
                #expect(r.headers[.retryAfter] == "1")
                let body = try Self.json(r.body)
                #expect((body["error"] as? [String: Any])?["type"] as? String == "NoWorkerAvailable")
                #expect(body["task_id"] == nil)  // the id is inside the error object
            }
            let id = try #require((try Self.json(r.body)["error"] as? [String: Any])?["task_id"] as? String)
            do {
                let r = try await client.execute(uri: "/readyz", method: .get)
                #expect(r.status == .serviceUnavailable)
                let found = try Self.errorType(r.body)
                #expect(found == "NotReady")
            }
            do {
                let r = try await client.execute(uri: "/tasks/\(id)", method: .get)
                #expect(r.status == .ok)
                let task = try Self.json(r.body)
                #expect(task["status"] as? String == "failed")
                #expect(task["function"] as? String == "echo")
            }
            do {
                let r = try await client.execute(uri: "/tasks?status=failed&function=echo&limit=10", method: .get)
                #expect(r.status == .ok)
                let tasks = try #require(try Self.json(r.body)["tasks"] as? [[String: Any]])
                #expect(tasks.map { $0["task_id"] as? String } == [id])
            }
            // Finished: cancel is a conflict; retry runs it again (and fails the same way, as a new task).
            do {
                let r = try await client.execute(uri: "/tasks/\(id)", method: .delete)
                #expect(r.status == .conflict)
                let found = try Self.errorType(r.body)
                #expect(found == "TaskFinished")
            }
            do {
                let r = try await client.execute(uri: "/tasks/\(id)/retry", method: .post)
                #expect(r.status == .serviceUnavailable)
                #expect(r.headers[HTTPField.Name("X-Neutrino-Retry-Of")!] == id)
            }
            do {
                let r = try await client.execute(uri: "/tasks?function=echo", method: .get)
                #expect(try #require(try Self.json(r.body)["tasks"] as? [Any]).count == 2)
            }
        }
    }

    @Test func pollingAPIRefusesBadQueries() async throws {
        try await Self.withGateway { client in
            let cases: [(String, HTTPRequest.Method, HTTPResponse.Status, String)] = [
                ("/tasks/not-an-id", .get, .notFound, "TaskNotFound"),
                ("/tasks/0190a0b0-0000-7000-8000-000000000000", .get, .notFound, "TaskNotFound"),
                ("/tasks/0190a0b0-0000-7000-8000-000000000000", .delete, .notFound, "TaskNotFound"),
                ("/tasks/0190a0b0-0000-7000-8000-000000000000/retry", .post, .notFound, "TaskNotFound"),
                ("/tasks/0190a0b0-0000-7000-8000-000000000000?wait=abc", .get, .badRequest, "BadRequest"),
                ("/tasks?status=bogus", .get, .badRequest, "BadRequest"),
                ("/tasks?mode=fast", .get, .badRequest, "BadRequest"),
                ("/tasks?limit=0", .get, .badRequest, "BadRequest"),
                ("/tasks?limit=501", .get, .badRequest, "BadRequest"),
                ("/tasks?before=xyz", .get, .badRequest, "BadRequest"),
                ("/tasks?since=yesterday", .get, .badRequest, "BadRequest"),
            ]
            for (uri, method, status, type) in cases {
                do {
                    let r = try await client.execute(uri: uri, method: method)
                    #expect(r.status == status, "\(method) \(uri)")
                    #expect(try Self.errorType(r.body) == type, "\(method) \(uri)")
                }
            }
            do {
                let r = try await client.execute(uri: "/tasks", method: .get)
                #expect(r.status == .ok)
                let body = try Self.json(r.body)
                #expect((body["tasks"] as? [Any])?.isEmpty == true)
                #expect(body["next_before"] is NSNull)
            }
        }
    }

    @Test func everyListedRouteIsServedAndOtherMethodsAre405() async throws {
        try await Self.withGateway { client in
            for route in gatewayRoutes.routes {
                let path =
                    "/"
                    + route.segments.map { $0.hasPrefix(":") ? "0190a0b0-0000-7000-8000-000000000000" : String($0) }
                    .joined(separator: "/")
                if path != "/events" {  // a stream: it does not end
                    let served = try await client.execute(uri: path, method: route.method, body: ByteBuffer(string: "{}"))
                    if served.status == .notFound {
                        #expect(try Self.errorType(served.body) != "NotFound", "\(route.method) \(path)")
                    }
                }
                let other: HTTPRequest.Method = route.method == .put ? .patch : .put
                let refused = try await client.execute(uri: path, method: other)
                #expect(refused.status == .methodNotAllowed, "\(other) \(path)")
                #expect(refused.headers[.allow]?.contains(route.method.rawValue) == true)
            }
            let unknown = try await client.execute(uri: "/no/such/route", method: .get)
            #expect(unknown.status == .notFound)
            #expect(try Self.errorType(unknown.body) == "NotFound")
            let nul = try await client.execute(uri: "/tasks?function=echo%00boom", method: .get)
            #expect(nul.status == .badRequest)
            #expect(try Self.errorType(nul.body) == "BadRequest")
        }
    }
}
