import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Logging
import NIOCore
import NeutrinoHTTP
import NeutrinoObservability
import Testing

@testable import NeutrinoGateway

/// API keys, scopes, the Host/Origin/CSRF checks and per-key limits, in process against a real temporary task log
/// (same manifest as GatewayRoutesTests: `echo` is sync on a closed port, `report` async without NATS).
struct AccessControlTests {
    struct Key {
        var id: String
        var token: String
        var entry: String
    }

    /// A key as `neutrino keys create` makes it: `nk_<16 hex>_<43 base64url chars>`, stored as its SHA-256.
    static func makeKey(_ name: String, scopes: [String], extra: String = "", revoked: Bool = false) -> Key {
        let id = String((0..<16).map { _ in "0123456789abcdef".randomElement()! })
        let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
        let token = "nk_\(id)_" + String((0..<43).map { _ in alphabet.randomElement()! })
        let hash = KeyStore.digest(token).map { String(format: "%02x", $0) }.joined()
        let scopeList = scopes.map { "\"\($0)\"" }.joined(separator: ",")
        let entry =
            #"{"id":"\#(id)","name":"\#(name)","hash":"sha256:\#(hash)","scopes":[\#(scopeList)],"created":"2025-01-01T00:00:00Z","revoked":\#(revoked ? "\"2025-01-02T00:00:00Z\"" : "null")\#(extra)}"#
        return Key(id: id, token: token, entry: entry)
    }

    static func writeKeys(_ keys: [Key], to path: String) throws {
        let text = #"{"version":1,"keys":[\#(keys.map(\.entry).joined(separator: ","))]}"#
        let tmp = path + ".tmp"
        try Data(text.utf8).write(to: URL(fileURLWithPath: tmp))
        _ = rename(tmp, path)  // atomic, as the CLI writes it
    }

    /// A gateway whose keys file holds `keys` (none: no `--api-keys`); `configure` adjusts the access settings.
    static func withGateway(
        keys: [Key]?, configure: (inout AccessConfiguration) -> Void = { _ in },
        _ test: @Sendable (any TestClientProtocol, String) async throws -> Void
    ) async throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("gateway-access-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let manifestPath = dir.appendingPathComponent("openapi.json").path
        try Data(GatewayRoutesTests.manifest.utf8).write(to: URL(fileURLWithPath: manifestPath))
        let keysPath = dir.appendingPathComponent("keys.json").path
        var configuration = GatewayConfiguration(
            manifestPath: manifestPath, httpPools: ["fast": ["http://127.0.0.1:9"]],
            taskLogPath: dir.appendingPathComponent("tasks.db").path, port: 0)
        if let keys {
            try writeKeys(keys, to: keysPath)
            configuration.access.apiKeysPath = keysPath
        }
        configuration.access.keyFilePollInterval = .milliseconds(100)
        configure(&configuration.access)
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        let app = try await buildGateway(configuration, logger: logger)
        try await app.test(.router) { client in try await test(client, keysPath) }
    }

    static func bearer(_ key: Key?) -> HTTPFields {
        var h: HTTPFields = [.contentType: "application/json"]
        if let key { h[.authorization] = "Bearer \(key.token)" }
        return h
    }

    // MARK: The matrix

    @Test func everyRouteByCredential() async throws {
        let read = Self.makeKey("reader", scopes: ["read"])
        let submit = Self.makeKey("submitter", scopes: ["submit"])
        let admin = Self.makeKey("admin", scopes: ["admin"])
        let revoked = Self.makeKey("old", scopes: ["admin"], revoked: true)
        let unknown = Self.makeKey("stranger", scopes: ["admin"])  // not in the file
        Observability.bootstrap(logFormat: .text, level: .critical)  // once per process: metrics land in the registry
        try await Self.withGateway(keys: [read, submit, admin, revoked]) { client, _ in
            // A task to address: the sync call fails (no worker) but leaves a row.
            let made = try await client.execute(
                uri: "/api/echo", method: .post, headers: Self.bearer(admin),
                body: ByteBuffer(string: #"{"args":{"x":1}}"#))
            #expect(made.status == .serviceUnavailable)
            let id = try #require(made.headers[NeutrinoHeader.taskID])

            let credentials: [(String, Key?)] = [
                ("none", nil), ("unknown", unknown), ("revoked", revoked),
                ("read", read), ("submit", submit), ("admin", admin),
            ]
            // Expected: "open" (anything but 401/403), "ok" (2xx), or an exact code. Allowed calls that cannot
            // succeed without workers or NATS are listed with their code (503 no worker, 409 task finished).
            let routes: [(HTTPRequest.Method, String, String?, [String])] = [
                (.get, "/healthz", nil, ["200", "200", "200", "200", "200", "200"]),
                (.get, "/readyz", nil, ["open", "open", "open", "open", "open", "open"]),
                (.get, "/metrics", nil, ["401", "401", "401", "403", "403", "200"]),
                (.get, "/openapi.json", nil, ["401", "401", "401", "200", "403", "200"]),
                (.get, "/pools", nil, ["401", "401", "401", "200", "403", "200"]),
                (.get, "/tasks", nil, ["401", "401", "401", "200", "403", "200"]),
                (.get, "/tasks/\(id)", nil, ["401", "401", "401", "200", "403", "200"]),
                (.get, "/events", nil, ["401", "401", "401", "skip", "403", "skip"]),  // allowed: an endless stream
                (.post, "/api/echo", #"{"args":{"x":2}}"#, ["401", "401", "401", "403", "503", "503"]),
                (.post, "/api/report", #"{"args":{}}"#, ["401", "401", "401", "403", "501", "501"]),
                (.delete, "/tasks/\(id)", nil, ["401", "401", "401", "403", "403", "409"]),
                (.post, "/tasks/\(id)/retry", nil, ["401", "401", "401", "403", "403", "503"]),
                (.get, "/no-such-file", nil, ["404", "404", "404", "404", "404", "404"]),
            ]
            var matrix =
                "route".padding(toLength: 34, withPad: " ", startingAt: 0)
                + credentials.map { $0.0.padding(toLength: 8, withPad: " ", startingAt: 0) }.joined() + "\n"
            for (method, path, body, expected) in routes {
                var row = "\(method.rawValue) \(path.replacingOccurrences(of: id, with: "{id}"))"
                    .padding(toLength: 34, withPad: " ", startingAt: 0)
                for ((name, key), want) in zip(credentials, expected) {
                    guard want != "skip" else { row += "-       "; continue }
                    let r = try await client.execute(
                        uri: path, method: method, headers: Self.bearer(key),
                        body: body.map { ByteBuffer(string: $0) })
                    let code = r.status.code
                    row += "\(code)".padding(toLength: 8, withPad: " ", startingAt: 0)
                    switch want {
                    case "open": #expect(code != 401 && code != 403, "\(method) \(path) as \(name)")
                    default: #expect(String(code) == want, "\(method) \(path) as \(name): \(code), wanted \(want)")
                    }
                    if code == 401 {
                        #expect(r.headers[.wwwAuthenticate]?.hasPrefix("Bearer") == true)
                        #expect(try GatewayRoutesTests.errorType(r.body) == "Unauthorized")
                    }
                    if code == 403 {
                        #expect(r.headers[.wwwAuthenticate]?.hasPrefix("Bearer") == true)
                        #expect(try GatewayRoutesTests.errorType(r.body) == "Forbidden")
                    }
                }
                matrix += row + "\n"
            }
            print("auth matrix (route × credential → status):\n" + matrix)

            // The key id, never the key, is in the metrics and in the queued/pending event.
            let metrics = try await client.execute(uri: "/metrics", method: .get, headers: Self.bearer(admin))
            let text = String(buffer: metrics.body)
            #expect(text.contains("neutrino_auth_rejections_total{reason=\"missing_key\"}"))
            #expect(text.contains("neutrino_auth_rejections_total{reason=\"scope\"}"))
            #expect(text.contains("neutrino_http_requests_by_key_total{key_id=\"\(read.id)\""))
            #expect(!text.contains(admin.token))
        }
    }

    @Test func restrictedKeysSubmitOnlyTheirTasks() async throws {
        let onlyReport = Self.makeKey("reporter", scopes: ["submit"], extra: #","tasks":["report"]"#)
        let onlyAsyncPool = Self.makeKey("asyncpool", scopes: ["submit"], extra: #","pools":["async"]"#)
        try await Self.withGateway(keys: [onlyReport, onlyAsyncPool]) { client, _ in
            for key in [onlyReport, onlyAsyncPool] {
                let echo = try await client.execute(
                    uri: "/api/echo", method: .post, headers: Self.bearer(key),
                    body: ByteBuffer(string: #"{"args":{"x":1}}"#))
                #expect(echo.status == .forbidden)
                let report = try await client.execute(
                    uri: "/api/report", method: .post, headers: Self.bearer(key),
                    body: ByteBuffer(string: #"{"args":{}}"#))
                #expect(report.status == .notImplemented)  // allowed; no NATS here
            }
        }
    }

    // MARK: Reload

    @Test func aRevokedKeyIsRefusedWithinASecondWithoutRestart() async throws {
        let a = Self.makeKey("a", scopes: ["read"])
        let b = Self.makeKey("b", scopes: ["read"])
        try await Self.withGateway(keys: [a]) { client, path in
            #expect(try await client.execute(uri: "/pools", method: .get, headers: Self.bearer(a)).status == .ok)
            #expect(try await client.execute(uri: "/pools", method: .get, headers: Self.bearer(b)).status == .unauthorized)
            var revokedA = a
            revokedA.entry = revokedA.entry.replacingOccurrences(of: #""revoked":null"#, with: #""revoked":"2025-01-03T00:00:00Z""#)
            try Self.writeKeys([revokedA, b], to: path)
            let changed = ContinuousClock.now
            var refusedAfter: Duration?
            while ContinuousClock.now - changed < .seconds(3) {
                if try await client.execute(uri: "/pools", method: .get, headers: Self.bearer(a)).status == .unauthorized {
                    refusedAfter = ContinuousClock.now - changed
                    break
                }
                try await Task.sleep(for: .milliseconds(20))
            }
            let after = try #require(refusedAfter)
            print("revoked key refused \(after) after the file changed")
            #expect(after < .seconds(1))
            let r = try await client.execute(uri: "/pools", method: .get, headers: Self.bearer(a))
            #expect(String(buffer: r.body).contains("revoked"))
            #expect(try await client.execute(uri: "/pools", method: .get, headers: Self.bearer(b)).status == .ok)
            // A broken file keeps the keys in force.
            try Data("{not json".utf8).write(to: URL(fileURLWithPath: path))
            try await Task.sleep(for: .milliseconds(300))
            #expect(try await client.execute(uri: "/pools", method: .get, headers: Self.bearer(b)).status == .ok)
        }
    }

    // MARK: Host, Origin, CSRF, CORS

    @Test func hostOriginAndCSRFChecksWithoutKeys() async throws {
        try await Self.withGateway(keys: nil, configure: { $0.allowedHosts = ["gw.internal"] }) { client, _ in
            func get(_ headers: HTTPFields) async throws -> HTTPResponse.Status {
                try await client.execute(uri: "/pools", method: .get, headers: headers).status
            }
            #expect(try await get([:]) == .ok)
            #expect(try await get([hostField: "127.0.0.1:8080"]) == .ok)
            #expect(try await get([hostField: "[::1]:8080"]) == .ok)
            #expect(try await get([hostField: "gw.internal"]) == .ok)
            let rebound = try await client.execute(uri: "/pools", method: .get, headers: [hostField: "attacker.example:8080"])
            #expect(rebound.status.code == 421)
            #expect(try GatewayRoutesTests.errorType(rebound.body) == "MisdirectedRequest")
            #expect(try await get([hostField: "localhost:8080", .origin: "http://localhost:8080"]) == .ok)
            #expect(try await get([hostField: "localhost:8080", .origin: "http://evil.example"]) == .forbidden)
            #expect(try await get([hostField: "localhost:8080", .origin: "null"]) == .forbidden)
            // Healthz stays open to any origin-less probe; the origin check applies everywhere else.
            #expect(try await client.execute(uri: "/healthz", method: .get).status == .ok)

            func post(_ headers: HTTPFields, body: String? = #"{"args":{"x":1}}"#) async throws -> Int {
                try await client.execute(
                    uri: "/api/report", method: .post, headers: headers,
                    body: body.map { ByteBuffer(string: $0) }
                ).status.code
            }
            #expect(try await post([.contentType: "application/json"]) == 501)
            #expect(try await post([.contentType: "application/json; charset=utf-8"]) == 501)
            #expect(try await post([.contentType: "text/plain"]) == 403)
            #expect(try await post([.contentType: "application/x-www-form-urlencoded"]) == 403)
            #expect(try await post([.contentType: "multipart/form-data; boundary=x"]) == 403)
            #expect(try await post([.contentType: "text/plain", .authorization: "Bearer anything"]) == 501)
            #expect(try await post([:], body: #"{"args":{}}"#) == 501)  // untyped: allowed without Origin
            #expect(try await post([.origin: "http://evil.example"], body: "{}") == 403)
            // No body, no type (the SDK's DELETE and retry): allowed; a cross-origin one is caught by Origin.
            let cancel = try await client.execute(uri: "/tasks/0194f1d2-0000-7000-8000-000000000000", method: .delete)
            #expect(cancel.status == .notFound)
            #expect(try await post([.origin: "http://evil.example"], body: nil) == 403)
        }
    }

    @Test func jsonMediaTypesAsTheCSRFCheckReadsThem() {
        for accepted in ["application/json", "Application/JSON", " application/json ; charset=utf-8", "application/json;"] {
            #expect(isJSONMediaType(accepted), "\(accepted)")
        }
        for refused in [
            "text/plain", "application/jsonx", "application/x-www-form-urlencoded", "", "application\u{0F}json",
            "multipart/form-data; boundary=application/json",
        ] {
            #expect(!isJSONMediaType(refused), "\(refused)")
        }
    }

    @Test func corsOriginsGetPreflightAndHeaders() async throws {
        let read = Self.makeKey("reader", scopes: ["read"])
        try await Self.withGateway(keys: [read], configure: { $0.corsOrigins = ["https://app.example"] }) { client, _ in
            let preflight = try await client.execute(
                uri: "/tasks", method: .options,
                headers: [
                    .origin: "https://app.example", .accessControlRequestMethod: "GET",
                    .accessControlRequestHeaders: "authorization",
                ])
            #expect(preflight.status == .noContent)
            #expect(preflight.headers[.accessControlAllowOrigin] == "https://app.example")
            #expect(preflight.headers[.accessControlAllowHeaders]?.lowercased().contains("authorization") == true)
            let ok = try await client.execute(
                uri: "/tasks", method: .get,
                headers: Self.bearer(read) + [.origin: "https://app.example"])
            #expect(ok.status == .ok)
            #expect(ok.headers[.accessControlAllowOrigin] == "https://app.example")
            let other = try await client.execute(
                uri: "/tasks", method: .options,
                headers: [
                    .origin: "https://other.example", .accessControlRequestMethod: "GET",
                ])
            #expect(other.status == .forbidden)
            #expect(other.headers[.accessControlAllowOrigin] == nil)
        }
    }

    @Test func aNonLoopbackGatewayNeedsKeysOrInsecureNoAuth() async throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("gateway-access-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let manifestPath = dir.appendingPathComponent("openapi.json").path
        try Data(GatewayRoutesTests.manifest.utf8).write(to: URL(fileURLWithPath: manifestPath))
        var configuration = GatewayConfiguration(
            manifestPath: manifestPath, httpPools: [:], taskLogPath: nil,
            host: "0.0.0.0", port: 0)
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        await #expect(throws: GatewayError.self) { _ = try await buildGateway(configuration, logger: logger) }
        configuration.access.insecureNoAuth = true
        _ = try await buildGateway(configuration, logger: logger)
        #expect(
            AccessConfiguration.isLoopback("127.0.0.1") && AccessConfiguration.isLoopback("::1")
                && AccessConfiguration.isLoopback("localhost") && !AccessConfiguration.isLoopback("0.0.0.0")
                && !AccessConfiguration.isLoopback("10.0.0.1"))
    }

    // MARK: Limits

    @Test func overTheRateA429WithRetryAfterWhileAnotherKeyIsUnaffected() async throws {
        let limited = Self.makeKey("limited", scopes: ["read"], extra: #","rate_per_second":2,"burst":2"#)
        let slow = Self.makeKey("slow", scopes: ["read"], extra: #","rate_per_second":0.25"#)
        let other = Self.makeKey("other", scopes: ["read"])  // gets --default-rate 100
        try await Self.withGateway(keys: [limited, slow, other], configure: { $0.defaultRate = 100 }) { client, _ in
            var codes: [Int] = []
            for _ in 0..<3 { codes.append(try await client.execute(uri: "/pools", method: .get, headers: Self.bearer(limited)).status.code) }
            #expect(codes == [200, 200, 429])
            let r = try await client.execute(uri: "/pools", method: .get, headers: Self.bearer(limited))
            #expect(r.status == .tooManyRequests)
            #expect(r.headers[.retryAfter] == "1")
            let body = try GatewayRoutesTests.json(r.body)
            let error = try #require(body["error"] as? [String: Any])
            #expect(error["type"] as? String == "RateLimited")
            #expect((error["limit"] as? [String: Any])?["rate_per_second"] as? Int == 2)
            #expect((error["limit"] as? [String: Any])?["burst"] as? Int == 2)
            for _ in 0..<20 { #expect(try await client.execute(uri: "/pools", method: .get, headers: Self.bearer(other)).status == .ok) }
            // Back after Retry-After.
            try await Task.sleep(for: .milliseconds(1050))
            #expect(try await client.execute(uri: "/pools", method: .get, headers: Self.bearer(limited)).status == .ok)
            // 0.25/s with burst 1: the second request waits 4 s.
            #expect(try await client.execute(uri: "/pools", method: .get, headers: Self.bearer(slow)).status == .ok)
            let s = try await client.execute(uri: "/pools", method: .get, headers: Self.bearer(slow))
            #expect(s.status == .tooManyRequests)
            #expect(s.headers[.retryAfter] == "4")
            let metrics = try await client.execute(uri: "/metrics", method: .get)  // no keys needed? admin only
            #expect(metrics.status == .unauthorized)
        }
    }

    @Test func tokenBucketAndInFlightArithmetic() {
        let limits = KeyLimits(defaultRate: nil)
        var key = APIKey(
            id: "k1", name: "k", digest: [], scopes: [.submit], tasks: nil, pools: nil,
            ratePerSecond: 10, burst: 5, maxInFlight: 2, revoked: false)
        let t0 = ContinuousClock.now
        for _ in 0..<5 { #expect(limits.take(key, now: t0) == .allowed) }
        #expect(limits.take(key, now: t0) == .overRate(retryAfter: 1, rate: 10, burst: 5))
        #expect(limits.take(key, now: t0 + .milliseconds(150)) == .allowed)  // a token back after 1/rate
        key.ratePerSecond = nil
        #expect(limits.take(key, now: t0) == .allowed)  // unlimited without a rate or default

        #expect(limits.reserve(key) == .allowed)
        #expect(limits.reserve(key) == .allowed)
        #expect(limits.reserve(key) == .overInFlight(limit: 2, inFlight: 2))
        limits.settle(keyID: "k1", acceptedTaskID: nil)  // a sync answer: done
        #expect(limits.inFlight(keyID: "k1") == 1)
        limits.settle(keyID: "k1", acceptedTaskID: "t1")  // queued: stays counted
        #expect(limits.inFlight(keyID: "k1") == 1)
        #expect(limits.reserve(key) == .allowed)
        limits.settle(keyID: "k1", acceptedTaskID: "t1")  // an idempotent replay of t1: not twice
        #expect(limits.inFlight(keyID: "k1") == 1)
        limits.finished(taskID: "t1")
        limits.finished(taskID: "t1")
        #expect(limits.inFlight(keyID: "k1") == 0)
    }

    @Test func keyVerification() throws {
        let a = Self.makeKey("a", scopes: ["submit"])
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("keys-\(UUID().uuidString).json").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        try Self.writeKeys([a], to: path)
        let store = try KeyStore(path: path, logger: Logger(label: "test"))
        #expect(store.verify(a.token) == .valid(try #require(store.key(id: a.id))))
        #expect(store.verify(a.token + "x") == .unknown)
        #expect(store.verify(String(a.token.dropLast()) + (a.token.last == "A" ? "B" : "A")) == .unknown)
        #expect(store.verify("nk_\(a.id)") == .unknown)
        #expect(store.verify("") == .unknown)
        #expect(throws: KeyFile.Invalid.self) { _ = try KeyFile.parse(Data(#"{"keys":[{"id":"x","hash":"sha256:00","scopes":[]}]}"#.utf8)) }
        #expect(throws: KeyFile.Invalid.self) {
            _ = try KeyFile.parse(Data(#"{"keys":[{"id":"x","hash":"sha256:\#(String(repeating: "0", count: 64))","scopes":["root"]}]}"#.utf8))
        }
    }

    /// The keys file as `neutrino keys` writes it, and the values a hand-edited one may hold.
    @Test func keyFileFields() throws {
        let hash = "sha256:" + String(repeating: "ab", count: 32)
        func parse(_ fields: String) throws -> APIKey? {
            try KeyFile.parse(Data(#"{"version":1,"keys":[{"id":"k1","hash":"\#(hash)","scopes":["submit","read"]\#(fields)}]}"#.utf8))["k1"]
        }
        let plain = try #require(try parse(#","name":"ci","tasks":null,"pools":["fast"],"created":"2026-01-01T00:00:00Z","revoked":null"#))
        #expect(plain.name == "ci" && plain.scopes == [.submit, .read] && plain.tasks == nil && plain.pools == ["fast"] && !plain.revoked)
        #expect(plain.digest == [UInt8](repeating: 0xab, count: 32))
        let limited = try #require(try parse(#","rate_per_second":2.5,"burst":10,"max_in_flight":1e300"#))
        #expect(limited.ratePerSecond == 2.5 && limited.burst == 10 && limited.maxInFlight == Int.max)
        // Revoked: any value but null, false or 0 (the CLI writes the time of the revocation).
        let revocations = [
            ("\"2026-02-01T00:00:00Z\"", true), ("true", true), ("1", true), ("\"\"", true), ("false", false), ("0", false),
            ("null", false),
        ]
        for (value, revoked) in revocations {
            #expect(try parse(",\"revoked\":\(value)")?.revoked == revoked, "revoked: \(value)")
        }
        for bad in [#","scopes":["read",1]"#, #","tasks":"echo""#, #","burst":0"#, #","rate_per_second":true"#, #","max_in_flight":"5""#] {
            let file = #"{"keys":[{"id":"k1","hash":"\#(hash)","scopes":["read"]\#(bad)}]}"#
            #expect(throws: KeyFile.Invalid.self, "\(bad)") { _ = try KeyFile.parse(Data(file.utf8)) }
        }
        #expect(throws: KeyFile.Invalid.self) { _ = try KeyFile.parse(Data("[]".utf8)) }
        #expect(throws: KeyFile.Invalid.self) { _ = try KeyFile.parse(Data(#"{"keys":[1]}"#.utf8)) }
        #expect(throws: KeyFile.Invalid.self) { _ = try KeyFile.parse(Data(#"{"keys":[{"id":"k1","hash":"\#(hash)","scopes":[]}], "#.utf8)) }
    }
}
