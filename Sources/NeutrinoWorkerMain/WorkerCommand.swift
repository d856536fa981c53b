import ArgumentParser
import FoundationEssentials
import Glibc
import Logging
import NeutrinoCore
import NeutrinoObservability
import NeutrinoTracing
import NeutrinoWorker

@main
struct WorkerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "neutrino-worker",
        abstract: "Runs the Python tasks of one pool in an embedded CPython interpreter.")

    @Option(help: "http: serve sync calls over HTTP; nats: pull from the pool's JetStream consumer.")
    var mode: String = "http"

    @Option(help: "The pool whose tasks this worker runs ([a-z0-9_]+).")
    var pool: String = "fast"

    @Option(help: "The app: a .py file, a module, or module:attr.")
    var app: String

    @Option(help: "Address to listen on (http mode: sync calls; nats mode: /healthz, /readyz, /metrics).")
    var host: String = "127.0.0.1"

    @Option(help: "Port to listen on; 0 picks a free one (printed as 'listening on http://HOST:PORT').")
    var port: Int = 0

    @Option(
        help:
            "Python threads: how many tasks run at once (default: 16 for --mode http, where sync calls are mostly I/O-bound and Python releases the GIL while it waits; 2 for --mode nats)."
    )
    var concurrency: Int?

    /// The threads a worker of `mode` runs when `--concurrency` is not given.
    static func defaultConcurrency(mode: String) -> Int { mode == WorkerMode.http.rawValue ? 16 : 2 }

    @Option(
        name: .customLong("max-coroutines"),
        help: "async def tasks in flight at once on the worker's event loop (each without a thread of its own).")
    var maxCoroutines: Int = 512

    @Option(
        name: .customLong("asgi-head-timeout"),
        help:
            "Seconds a request to the mounted ASGI app may run before it starts its answer; then it is cancelled and answered 504.")
    var asgiHeadTimeout: Double = 60

    @Option(
        name: .customLong("loop-block-warn-ms"),
        help: "Log an async def task that keeps the event loop from running for this many milliseconds (time.sleep in a coroutine).")
    var loopBlockWarnMs: Int = 100

    @Option(
        name: .customLong("task-log"),
        help: "Where lifecycle events go: sqlite:PATH, nats (published on NEUTRINO_EVENTS for the gateway to record) or none.")
    var taskLog: String = "none"

    @Option(name: .customLong("python-path"), help: "A folder to put first on sys.path (repeatable), e.g. the SDK's.")
    var pythonPaths: [String] = []

    @Option(name: .customLong("worker-id"), help: "This worker's id in the task log (default: POOL-HOST-PID).")
    var workerID: String?

    @Option(name: .customLong("max-body-bytes"), help: "Largest request body accepted.")
    var maxBodyBytes: Int = 16 << 20

    @Option(
        help:
            "NATS server URL, e.g. nats://127.0.0.1:4222, or a cluster's members comma-separated (nats://a:4222,nats://b:4222,nats://c:4222): the queue (--mode nats), heartbeats, --task-log nats."
    )
    var nats: String?

    @Option(
        name: .customLong("stream-replicas"),
        help:
            "JetStream servers keeping each stream this worker provisions (1...5); an existing stream with another count is changed to it. Default: 1 for one --nats server, 3 for several (then applied to new streams only)."
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

    @Option(
        name: .customLong("ack-wait"),
        help: "Seconds JetStream waits for an ack before redelivering (--mode nats); heartbeats keep running tasks alive.")
    var ackWait: Double = 30

    @Option(
        name: .customLong("drain-grace"),
        help:
            "Seconds SIGTERM lets running tasks finish before handing them back (--mode nats), or requests to the mounted ASGI app finish before they are cut short (--mode http)."
    )
    var drainGrace: Double = 30

    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error, critical.")
    var logLevel: String = "info"

    @Option(name: .customLong("heartbeat-interval"), help: "Seconds between heartbeats on neutrino.heartbeat.<pool> (with --nats).")
    var heartbeatInterval: Double = 2

    @Option(
        name: .customLong("advertise-host"),
        help: "Host announced in the heartbeats' URL, where gateways send sync calls (default: --host; give the pod IP when --host is 0.0.0.0).")
    var advertiseHost: String?

    @Option(
        name: .customLong("stop-delay"),
        help: "Seconds SIGTERM keeps serving after the 'stopping' heartbeat, before the server drains (--mode http with --nats).")
    var stopDelay: Double = 0.5

    @Option(name: .customLong("log-format"), help: "text or json (one JSON object per line).")
    var logFormat: String = "text"

    @Option(
        name: .customLong("otlp-endpoint"),
        help:
            "Export OpenTelemetry traces over OTLP/HTTP to this base URL (spans go to URL/v1/traces), e.g. http://127.0.0.1:4318. Default: OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT; neither set: tracing is off."
    )
    var otlpEndpoint: String?

    @Option(
        name: .customLong("hard-timeout-grace"),
        help:
            "Seconds a task may run past its timeout (after the TimeoutError) before its thread is replaced, or, if it holds the GIL, the worker exits with status 70."
    )
    var hardTimeoutGrace: Double = 5

    @Option(
        name: .customLong("max-leaked-threads"),
        help: "Python threads replaced while still blocked past their hard timeout before the worker recycles itself (exit 75).")
    var maxLeakedThreads: Int = 8

    @Option(
        name: .customLong("task-output-bytes"),
        help: "How much of what a task prints (stdout, stderr) is stored with it: the last N characters (0: none).")
    var taskOutputBytes: Int = 65536

    @Option(
        name: .customLong("running-visible-after-ms"),
        help:
            "A sync call forwarded by the gateway (which records its lifecycle) is recorded running by the worker once it has run this long.")
    var runningVisibleAfterMs: Int = 250

    @Option(
        name: .customLong("call-lane-port"), parsing: .unconditional,
        help:
            "--mode http: the port for the gateways' sync calls without HTTP (0: any free port, announced to the gateways on each answer; -1: none, the gateways call over HTTP)."
    )
    var callLanePort: Int = 0

    @Option(name: .customLong("max-tasks-per-worker"), help: "Drain and exit with status 75 after this many tasks, for a fresh worker (0: never).")
    var maxTasksPerWorker: Int = 0

    @Option(name: .customLong("max-rss-mb"), help: "Drain and exit with status 75 once resident memory passes this many MB after a task (0: never).")
    var maxRSSMB: Int = 0

    func validate() throws {
        guard LogFormat(rawValue: logFormat) != nil else { throw ValidationError("--log-format must be text or json") }
        if let otlpEndpoint, let problem = NeutrinoTracing.endpointProblem(otlpEndpoint) {
            throw ValidationError("--otlp-endpoint '\(otlpEndpoint)' \(problem)")
        }
        guard heartbeatInterval >= 0.05 else { throw ValidationError("--heartbeat-interval must be at least 0.05 s") }
        guard stopDelay >= 0, stopDelay <= 60 else { throw ValidationError("--stop-delay must be 0...60 seconds") }
        if let h = advertiseHost {
            guard !h.isEmpty, h.utf8.count <= 253, h.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "." || $0 == "-" || $0 == "_" }) else {
                throw ValidationError("--advertise-host must be a host name or an IPv4 address")
            }
        }
        if taskLog == "nats" && nats == nil { throw ValidationError("--task-log nats needs --nats URL") }
        guard WorkerMode(rawValue: mode) != nil else { throw ValidationError("--mode must be http or nats") }
        guard TaskSpec.isValidName(pool) else { throw ValidationError("--pool must match [a-z0-9_]+") }
        if let concurrency, !(1...256).contains(concurrency) { throw ValidationError("--concurrency must be 1...256") }
        guard loopBlockWarnMs >= 10 else { throw ValidationError("--loop-block-warn-ms must be at least 10") }
        guard (1...100_000).contains(maxCoroutines) else { throw ValidationError("--max-coroutines must be 1...100000") }
        guard asgiHeadTimeout.isFinite, asgiHeadTimeout > 0, asgiHeadTimeout <= 86_400 else {
            throw ValidationError("--asgi-head-timeout must be 0 < seconds <= 86400")
        }
        guard (0...65535).contains(port) else { throw ValidationError("--port must be 0...65535") }
        guard (-1...65535).contains(callLanePort) else { throw ValidationError("--call-lane-port must be -1...65535") }
        if let nats, NATSServers.parse(nats) == nil {
            throw ValidationError("--nats '\(nats)' must be one URL or several comma-separated (nats://HOST:PORT,...)")
        }
        if nats != nil { _ = try natsAuth() }
        if let streamReplicas {
            guard nats != nil else { throw ValidationError("--stream-replicas needs --nats") }
            guard (1...5).contains(streamReplicas) else { throw ValidationError("--stream-replicas must be 1...5") }
        }
        guard TaskLogTarget(argument: taskLog) != nil else { throw ValidationError("--task-log must be sqlite:PATH, nats or none") }
        guard Logger.Level(rawValue: logLevel) != nil else { throw ValidationError("unknown --log-level \(logLevel)") }
        if mode == "nats" && nats == nil { throw ValidationError("--mode nats needs --nats URL") }
        guard hardTimeoutGrace >= 0.1, hardTimeoutGrace <= 3600, maxLeakedThreads >= 0 else {
            throw ValidationError("--hard-timeout-grace must be 0.1...3600 s and --max-leaked-threads not negative")
        }
        guard maxTasksPerWorker >= 0, maxRSSMB >= 0 else { throw ValidationError("--max-tasks-per-worker and --max-rss-mb must be 0 or more") }
        guard ackWait >= 0.5, drainGrace >= 0 else { throw ValidationError("--ack-wait must be at least 0.5 s and --drain-grace not negative") }
    }

    func run() async throws {
        var logger = Observability.start(
            label: "neutrino.worker", logFormat: LogFormat(rawValue: logFormat) ?? .text,
            level: Logger.Level(rawValue: logLevel) ?? .info)
        let id = workerID ?? "\(pool)-\(ProcessInfo.processInfo.hostName)-\(getpid())"
        var configuration = WorkerConfiguration(
            mode: WorkerMode(rawValue: mode) ?? .http, pool: pool, app: app, host: host, port: port,
            concurrency: concurrency ?? Self.defaultConcurrency(mode: mode), taskLog: TaskLogTarget(argument: taskLog) ?? .none,
            pythonPaths: pythonPaths,
            workerID: id, maxBodyBytes: maxBodyBytes, natsURL: nats,
            ackWait: .milliseconds(Int64(ackWait * 1000)), drainGrace: .milliseconds(Int64(drainGrace * 1000)))
        configuration.heartbeatInterval = .milliseconds(Int64(heartbeatInterval * 1000))
        configuration.advertiseHost = advertiseHost
        configuration.stopDelay = .milliseconds(Int64(stopDelay * 1000))
        // Read by neutrino._output when the interpreter imports it.
        setenv("NEUTRINO_TASK_OUTPUT_BYTES", String(max(0, taskOutputBytes)), 1)
        // Read by neutrino._loop (the watcher of the async def tasks' event loop).
        setenv("NEUTRINO_LOOP_BLOCK_WARN_MS", String(loopBlockWarnMs), 1)
        configuration.hardTimeoutGrace = .milliseconds(Int64(hardTimeoutGrace * 1000))
        configuration.maxLeakedThreads = maxLeakedThreads
        configuration.maxCoroutines = maxCoroutines
        configuration.asgiHeadTimeout = .milliseconds(Int64(asgiHeadTimeout * 1000))
        configuration.maxTasksPerWorker = maxTasksPerWorker
        configuration.runningVisibleAfter = .milliseconds(Int64(min(max(0, runningVisibleAfterMs), 86_400_000)))
        configuration.maxRSSMB = maxRSSMB
        configuration.callLanePort = callLanePort < 0 ? nil : callLanePort
        configuration.streamReplicas = streamReplicas
        configuration.natsAuth = try natsAuth()
        let restarts = ProcessInfo.processInfo.environment["NEUTRINO_WORKER_RESTARTS"].flatMap(Int.init) ?? 0
        configuration.restarts = min(max(0, restarts), WorkerHeartbeat.maxRestarts)
        logger[metadataKey: "worker_id"] = "\(id)"
        let exit: Worker.Exit
        do {
            let tracing = try NeutrinoTracing.bootstrap(
                endpoint: otlpEndpoint, serviceName: "neutrino-worker", environment: ProcessInfo.processInfo.environment,
                logger: logger)
            exit = try await Worker.run(configuration, logger: logger, tracing: tracing)
        } catch {
            logger.critical("worker failed: \(error)")
            throw ExitCode(1)
        }
        if exit.status != 0 { throw ExitCode(exit.status) }
    }
}
