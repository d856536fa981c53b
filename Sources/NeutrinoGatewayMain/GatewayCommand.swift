import ArgumentParser
import FoundationEssentials
import Logging
import NeutrinoCore
import NeutrinoGateway
import NeutrinoObservability
import NeutrinoTracing

@main
struct GatewayCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "neutrino-gateway",
        abstract: "Routes task calls to worker pools and serves the polling API from the task log.")

    @Option(help: "The OpenAPI manifest written by `neutrino openapi APP`.")
    var manifest: String

    @Option(name: .customLong("http-pool"), help: "A sync pool and its workers: NAME=URL[,URL...] (repeat per pool).")
    var httpPools: [String] = []

    @Option(name: .customLong("task-log"), help: "The task log: sqlite:PATH, or none.")
    var taskLog: String = "none"

    @Option(help: "Address to listen on.")
    var host: String = "127.0.0.1"

    @Option(help: "Port to listen on; 0 picks a free one (printed as 'listening on http://HOST:PORT').")
    var port: Int = 8080

    @Option(name: .customLong("max-body-bytes"), help: "Largest request body accepted (413 above).")
    var maxBodyBytes: Int = 1 << 20

    @Option(
        help:
            "NATS server URL for async and gpu tasks, e.g. nats://127.0.0.1:4222, or a cluster's members comma-separated: nats://a:4222,nats://b:4222,nats://c:4222 (without it they answer 501)."
    )
    var nats: String?

    @Option(
        name: .customLong("stream-replicas"),
        help:
            "JetStream servers keeping each stream (1...5); an existing stream with another count is changed to it. Default: 1 for one --nats server, 3 for several (then applied to new streams only)."
    )
    var streamReplicas: Int?

    // NATS authentication (issue 12). The password is never a flag: `ps` would show it.
    @Option(
        name: .customLong("nats-user"),
        help: "NATS user (or NEUTRINO_NATS_USER); its password comes from NEUTRINO_NATS_PASSWORD or --nats-password-file.")
    var natsUser: String?

    @Option(
        name: .customLong("nats-password-file"), help: "A file holding the NATS password (or NEUTRINO_NATS_PASSWORD_FILE), e.g. a mounted Secret.")
    var natsPasswordFile: String?

    @Option(name: .customLong("nats-tls-ca"), help: "PEM CA certificate that signed the NATS server's; turns TLS to NATS on.")
    var natsTLSCA: String?

    @Option(name: .customLong("nats-tls-cert"), help: "PEM client certificate for TLS to NATS (with --nats-tls-key).")
    var natsTLSCert: String?

    @Option(name: .customLong("nats-tls-key"), help: "PEM private key of --nats-tls-cert.")
    var natsTLSKey: String?

    /// The NATS credentials from the flags and the environment (see `NATSAuth.resolve`).
    func natsAuth() throws -> NATSAuth {
        do {
            return try NATSAuth.resolve(
                user: natsUser, passwordFile: natsPasswordFile, tlsCA: natsTLSCA, tlsCert: natsTLSCert, tlsKey: natsTLSKey,
                environment: ProcessInfo.processInfo.environment,
                readFile: { try? String(contentsOfFile: $0, encoding: .utf8) })
        } catch {
            throw ValidationError(error.description)
        }
    }

    @Option(name: .customLong("ack-wait"), help: "Seconds of AckWait for the pool consumers the gateway provisions.")
    var ackWait: Double = 30

    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error, critical.")
    var logLevel: String = "info"

    @Option(name: .customLong("log-format"), help: "text or json (one JSON object per line).")
    var logFormat: String = "text"

    @Option(
        name: .customLong("otlp-endpoint"),
        help:
            "Export OpenTelemetry traces over OTLP/HTTP to this base URL (spans go to URL/v1/traces), e.g. http://127.0.0.1:4318. Default: OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT; neither set: tracing is off."
    )
    var otlpEndpoint: String?

    @Option(name: .customLong("dashboard-dir"), help: "Serve the web dashboard from this folder at /.")
    var dashboardDir: String?

    @Option(name: .customLong("heartbeat-timeout"), help: "Seconds without a heartbeat after which a worker counts as gone.")
    var heartbeatTimeout: Double = 6

    @Option(
        name: .customLong("worker-join-wait"),
        help:
            "Seconds a sync call waits for a reachable worker of its pool before answering 503: for a first one to announce itself (gateway start-up, scaled to zero), or, when every worker refused the connection, for one to come back (restarting after a crash, a rolling update). 0: never wait."
    )
    var workerJoinWait: Double = 5

    @Option(name: .customLong("scale"), help: "Scaling policy of a pool: POOL=MIN:MAX[:TARGET[:DOWN_WINDOW_SECONDS]] (repeatable).")
    var scale: [String] = []

    @Flag(
        name: .customLong("events-via-nats"),
        help: "Cluster task log: apply the events workers publish on NEUTRINO_EVENTS to this gateway's file, and publish the gateway's own there.")
    var eventsViaNATS = false

    @Option(name: .customLong("gateway-id"), help: "This replica's id; names its events consumer (default: the host name).")
    var gatewayID: String?

    @Option(
        name: .customLong("replication-lag-bound"),
        help:
            "With --events-via-nats: seconds another replica's events may take to arrive here; a lookup of an unknown task id younger than this waits for it before answering 404 (0: never wait)."
    )
    var replicationLagBound: Double = 5

    @Option(name: .customLong("retention-days"), help: "Delete terminal tasks older than this many days from the task log (0: keep everything).")
    var retentionDays: Double = 7

    @Option(name: .customLong("header-timeout"), help: "Seconds a request's head may take to arrive (408 after).")
    var headerTimeout: Double = 10

    @Option(name: .customLong("body-timeout"), help: "Seconds a request's body may take to arrive after its head (408 after).")
    var bodyTimeout: Double = 30

    @Option(name: .customLong("idle-timeout"), help: "Seconds a kept-alive connection may stay without a request before it is closed.")
    var idleTimeout: Double = 60

    @Option(
        name: .customLong("asgi-head-timeout"),
        help: "Seconds a request forwarded to the mounted ASGI app may wait for its answer's head (504 after; the body may stream longer).")
    var asgiHeadTimeout: Double = 60

    @Option(name: .customLong("max-connections"), help: "Open client connections; more are answered 503 and closed.")
    var maxConnections: Int = 1024

    @Option(name: .customLong("max-header-bytes"), help: "Largest request head, request line and headers (431 above).")
    var maxHeaderBytes: Int = 32 * 1024

    @Option(name: .customLong("max-long-poll-waiters"), help: "Requests waiting in GET /tasks/<id>?wait= at once (503 above).")
    var maxLongPollWaiters: Int = 10_000

    @Option(name: .customLong("max-sse-subscribers"), help: "Open GET /events streams (503 above).")
    var maxSSESubscribers: Int = 256

    @Option(name: .customLong("sse-backlog"), help: "Missed events a resuming GET /events client is sent at most.")
    var sseBacklog: Int = 1000

    @Option(
        name: .customLong("worker-connections"),
        help:
            "Connections to each sync worker, so calls in flight to it; fewer when the worker says it takes fewer at once (its Python threads, a quarter more, its coroutine slots). When a worker has that many, a call goes to the next worker (and waits for room when every worker is busy)."
    )
    var workerConnections: Int = 128

    @Option(
        name: .customLong("max-waiting-calls"),
        help:
            "Sync calls per pool that wait, within their task's timeout, for room when every worker is busy; more are answered 503 at once (0: none wait)."
    )
    var maxWaitingCalls: Int = 1024

    @Option(name: .customLong("max-worker-answer-bytes"), help: "Largest answer read from a sync worker (502 above).")
    var maxWorkerAnswerBytes: Int = 16 << 20

    @Option(name: .customLong("max-list-bytes"), help: "Largest GET /tasks body; a page is cut short before it (truncated, next_before).")
    var maxListBytes: Int = 4 << 20

    /// Seconds from the command line as a Duration: positive, finite, at most a day.
    static func duration(_ seconds: Double) -> Duration {
        .milliseconds(Int64((min(max(seconds, 0.001), 86_400) * 1000).rounded()))
    }

    // Access control (issue 12): API keys, Host/Origin checks, per-key limits.
    @Option(
        name: .customLong("api-keys"),
        help:
            "The API keys file (JSON, mode 0600, written by `neutrino keys`); reloaded when it changes and on SIGHUP. Without it every route is open, which only a loopback --host allows."
    )
    var apiKeys: String?

    @Flag(name: .customLong("insecure-no-auth"), help: "Listen on a non-loopback --host without --api-keys (warns every minute).")
    var insecureNoAuth = false

    @Option(
        name: .customLong("allowed-host"),
        help: "A Host name the gateway answers to besides localhost, 127.0.0.1, [::1] and --host (repeatable; DNS-rebinding protection).")
    var allowedHosts: [String] = []

    @Option(
        name: .customLong("cors-origin"), help: "A browser origin (scheme://host[:port], or *) allowed to call the API cross-origin (repeatable).")
    var corsOrigins: [String] = []

    @Option(name: .customLong("metrics-token"), help: "A bearer token that opens GET /metrics (else, with --api-keys, /metrics needs an admin key).")
    var metricsToken: String?

    @Option(name: .customLong("session-hours"), help: "How long a dashboard login lasts (its HttpOnly session cookie).")
    var sessionHours: Double = 12

    @Option(name: .customLong("default-rate"), help: "Requests per second of a key whose entry sets no rate_per_second (default: unlimited).")
    var defaultRate: Double?

    func validate() throws {
        for (name, seconds) in [
            ("--header-timeout", headerTimeout), ("--body-timeout", bodyTimeout), ("--idle-timeout", idleTimeout),
            ("--asgi-head-timeout", asgiHeadTimeout),
        ] {
            guard seconds.isFinite, seconds > 0, seconds <= 86_400 else { throw ValidationError("\(name) must be 0 < seconds <= 86400") }
        }
        for (name, value) in [
            ("--max-connections", maxConnections), ("--max-header-bytes", maxHeaderBytes),
            ("--max-long-poll-waiters", maxLongPollWaiters), ("--max-sse-subscribers", maxSSESubscribers),
            ("--sse-backlog", sseBacklog), ("--worker-connections", workerConnections),
            ("--max-worker-answer-bytes", maxWorkerAnswerBytes), ("--max-list-bytes", maxListBytes),
        ] {
            guard value > 0, value <= 1 << 40 else { throw ValidationError("\(name) must be a positive number") }
        }
        guard maxWaitingCalls >= 0, maxWaitingCalls <= 1_000_000 else { throw ValidationError("--max-waiting-calls must be between 0 and 1000000") }
        guard maxHeaderBytes >= 1024 else { throw ValidationError("--max-header-bytes must be at least 1024") }
        guard maxListBytes >= 4096 else { throw ValidationError("--max-list-bytes must be at least 4096") }
        guard maxWorkerAnswerBytes >= 1024 else { throw ValidationError("--max-worker-answer-bytes must be at least 1024") }
        guard LogFormat(rawValue: logFormat) != nil else { throw ValidationError("--log-format must be text or json") }
        if let otlpEndpoint, let problem = NeutrinoTracing.endpointProblem(otlpEndpoint) {
            throw ValidationError("--otlp-endpoint '\(otlpEndpoint)' \(problem)")
        }
        guard workerJoinWait >= 0, workerJoinWait <= 600 else { throw ValidationError("--worker-join-wait must be between 0 and 600 seconds") }
        guard heartbeatTimeout > 0 else { throw ValidationError("--heartbeat-timeout must be positive") }
        for s in scale {
            guard let eq = s.firstIndex(of: "="), TaskSpec.isValidName(String(s[..<eq])) else {
                throw ValidationError("--scale '\(s)' must be POOL=MIN:MAX[:TARGET[:DOWN_WINDOW_SECONDS]]")
            }
        }
        if eventsViaNATS {
            guard nats != nil, taskLog.hasPrefix("sqlite:") else {
                throw ValidationError("--events-via-nats needs --nats URL and --task-log sqlite:PATH")
            }
        }
        guard replicationLagBound >= 0, replicationLagBound <= 60 else {
            throw ValidationError("--replication-lag-bound must be 0...60 seconds")
        }
        if let id = gatewayID, id.isEmpty || !id.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" }) {
            throw ValidationError("--gateway-id must be letters, digits, - and _")
        }
        for p in httpPools where GatewayConfiguration.parsePool(p) == nil {
            throw ValidationError("--http-pool '\(p)' must be NAME=http://HOST:PORT[,http://HOST:PORT...] with NAME in [a-z0-9_]+")
        }
        guard taskLog == "none" || (taskLog.hasPrefix("sqlite:") && taskLog.count > 7) else {
            throw ValidationError("--task-log must be sqlite:PATH or none")
        }
        guard (0...65535).contains(port) else { throw ValidationError("--port must be 0...65535") }
        guard retentionDays >= 0, retentionDays <= 36_500 else { throw ValidationError("--retention-days must be 0...36500") }
        if let nats, NATSServers.parse(nats) == nil {
            throw ValidationError("--nats '\(nats)' must be one URL or several comma-separated (nats://HOST:PORT,...)")
        }
        if nats != nil { _ = try natsAuth() }
        if let streamReplicas {
            guard nats != nil else { throw ValidationError("--stream-replicas needs --nats") }
            guard (1...5).contains(streamReplicas) else { throw ValidationError("--stream-replicas must be 1...5") }
        }
        guard maxBodyBytes > 0 else { throw ValidationError("--max-body-bytes must be positive") }
        guard Logger.Level(rawValue: logLevel) != nil else { throw ValidationError("unknown --log-level \(logLevel)") }
        if let r = defaultRate, !(r > 0 && r.isFinite) { throw ValidationError("--default-rate must be a positive number") }
        guard sessionHours > 0, sessionHours <= 24 * 30 else { throw ValidationError("--session-hours must be 0 < hours <= 720") }
        if metricsToken?.isEmpty == true { throw ValidationError("--metrics-token must not be empty") }
    }

    func run() async throws {
        let logger = Observability.start(
            label: "neutrino.gateway", logFormat: LogFormat(rawValue: logFormat) ?? .text,
            level: Logger.Level(rawValue: logLevel) ?? .info)
        var pools: [String: [String]] = [:]
        for p in httpPools {
            if let (name, urls) = GatewayConfiguration.parsePool(p) { pools[name, default: []] += urls }
        }
        var configuration = GatewayConfiguration(
            manifestPath: manifest, httpPools: pools,
            taskLogPath: taskLog.hasPrefix("sqlite:") ? String(taskLog.dropFirst(7)) : nil,
            host: host, port: port, maxBodyBytes: maxBodyBytes, natsURL: nats, ackWait: Self.duration(ackWait))
        configuration.dashboardDirectory = dashboardDir
        configuration.heartbeatTimeout = Self.duration(heartbeatTimeout)
        configuration.workerJoinWait = workerJoinWait == 0 ? .zero : Self.duration(workerJoinWait)
        for s in scale {
            guard let eq = s.firstIndex(of: "=") else { continue }
            configuration.scaling[String(s[..<eq])] = String(s[s.index(after: eq)...])
        }
        configuration.eventsViaNATS = eventsViaNATS
        configuration.replicationLagBound = replicationLagBound == 0 ? .zero : Self.duration(replicationLagBound)
        configuration.retention = retentionDays > 0 ? .milliseconds(Int64(retentionDays * 86_400_000)) : nil
        configuration.streamReplicas = streamReplicas
        configuration.natsAuth = try natsAuth()

        configuration.headerTimeout = Self.duration(headerTimeout)
        configuration.bodyTimeout = Self.duration(bodyTimeout)
        configuration.idleTimeout = Self.duration(idleTimeout)
        configuration.asgiHeadTimeout = Self.duration(asgiHeadTimeout)
        configuration.maxConnections = maxConnections
        configuration.maxHeaderBytes = maxHeaderBytes
        configuration.maxLongPollWaiters = maxLongPollWaiters
        configuration.maxSSESubscribers = maxSSESubscribers
        configuration.sseBacklog = sseBacklog
        configuration.workerConnections = workerConnections
        configuration.maxWaitingCalls = maxWaitingCalls
        configuration.maxWorkerAnswerBytes = maxWorkerAnswerBytes
        configuration.maxListBytes = maxListBytes

        configuration.access.apiKeysPath = apiKeys
        configuration.access.insecureNoAuth = insecureNoAuth
        configuration.access.allowedHosts = allowedHosts
        configuration.access.corsOrigins = corsOrigins
        configuration.access.metricsToken = metricsToken
        configuration.access.defaultRate = defaultRate
        configuration.access.sessionLifetime = .seconds(Int64((sessionHours * 3600).rounded()))
        let hostName = ProcessInfo.processInfo.hostName.filter { $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" }
        configuration.gatewayID = gatewayID ?? (hostName.isEmpty ? "gateway" : hostName)
        do {
            let tracing = try NeutrinoTracing.bootstrap(
                endpoint: otlpEndpoint, serviceName: "neutrino-gateway", environment: ProcessInfo.processInfo.environment,
                logger: logger)
            try await buildGateway(configuration, logger: logger, tracing: tracing).runService()
        } catch {
            logger.critical("gateway failed: \(error)")
            throw ExitCode(1)
        }
    }
}
