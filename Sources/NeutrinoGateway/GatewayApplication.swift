import FoundationEssentials
import Hummingbird
import Logging
import NIOCore
import NeutrinoCore
import NeutrinoEvents
import NeutrinoHTTP
import NeutrinoNATS
import NeutrinoTaskLog
import NeutrinoTracing
import ServiceLifecycle

/// `neutrino-gateway`'s composition root: reads the manifest, connects what the configuration names (NATS, the task
/// log, the sync pools), wires the controllers into one router and the background loops into the application's
/// service group. Links no Python.
///
/// Start-up order: manifest → NATS connection → task log → pools → routes → services. On SIGTERM/SIGINT the server
/// stops first (it drains the requests in flight; open `GET /events` streams end), then the services in reverse
/// order of the list below: heartbeat listener → pool discovery → live feed → pool monitor → events consumer → delivery janitor → queue provisioner →
/// task-log retention → sync pools' connections → task log (the last events committed) → NATS connection → `tracing`
/// (the OTLP exporter `NeutrinoTracing.bootstrap` returned, if tracing is on: last, so the spans of the shutdown are
/// exported).
public func buildGateway(
    _ configuration: GatewayConfiguration, logger: Logger, tracing: (any Service)? = nil
) async throws -> some ApplicationProtocol {
    let manifest = try readManifest(configuration.manifestPath)
    let access = configuration.access
    let loopback = AccessConfiguration.isLoopback(configuration.host)
    if !loopback && access.apiKeysPath == nil && !access.insecureNoAuth {
        throw GatewayError(
            message:
                "refusing to listen on \(configuration.host) without API keys: give --api-keys PATH (see `neutrino keys create`), listen on 127.0.0.1, or pass --insecure-no-auth"
        )
    }
    let keys = try access.apiKeysPath.map { try KeyStore(path: $0, logger: logger) }
    let queue: GatewayQueue? =
        if let url = configuration.natsURL {
            try await GatewayQueue.connect(url: url, streamReplicas: configuration.streamReplicas, auth: configuration.natsAuth, logger: logger)
        } else { nil }

    var pools: [String: WorkerPool] = [:]
    for (name, urls) in configuration.httpPools {
        let endpoints = try urls.map { url in
            guard let e = WorkerPool.Endpoint(url: url) else { throw GatewayError(message: "--http-pool \(name): '\(url)' is not http://HOST:PORT") }
            return e
        }
        pools[name] = WorkerPool(
            name: name, endpoints: endpoints, maxConnections: configuration.workerConnections,
            maxAnswerBytes: configuration.maxWorkerAnswerBytes, recordsCalls: configuration.taskLogPath != nil,
            joinWait: configuration.workerJoinWait, maxWaiting: configuration.maxWaitingCalls, logger: logger)
    }
    // With NATS every sync pool of the manifest is elastic: its workers join from their heartbeats (PoolDiscovery),
    // beside the static ones given.
    for (pool, mode) in manifest.pools where mode == .sync && pools[pool] == nil {
        if queue != nil {
            pools[pool] = WorkerPool(
                name: pool, endpoints: [], maxConnections: configuration.workerConnections,
                maxAnswerBytes: configuration.maxWorkerAnswerBytes, recordsCalls: configuration.taskLogPath != nil,
                joinWait: configuration.workerJoinWait, maxWaiting: configuration.maxWaitingCalls, logger: logger)
        } else {
            logger.warning(
                "no --http-pool given for a sync pool of the manifest and no --nats to discover its workers; its tasks will answer 503",
                metadata: ["pool": "\(pool)"])
        }
    }

    var taskLog: (any TaskEventSink)?
    var reader: TaskLogReader?
    var eventsConsumer: EventStreamConsumer?
    if let path = configuration.taskLogPath {
        let writer = try TaskLogWriter(path: path, logger: logger)
        if configuration.eventsViaNATS {
            guard let queue else { throw GatewayError(message: "--events-via-nats needs --nats") }
            // Workers' events arrive on NEUTRINO_EVENTS and are committed here; this gateway's own events are
            // committed at once and published for the other replicas (applying one twice is harmless).
            let published = NATSEventPublisher(jetStream: queue.js, origin: .gateway(configuration.gatewayID), logger: logger)
            taskLog = TeeSink(local: writer, published: published)
            eventsConsumer = EventStreamConsumer(jetStream: queue.js, id: configuration.gatewayID, sink: writer, logger: logger)
        } else {
            taskLog = writer
        }
        reader = try TaskLogReader(path: path)
    }

    // With keys, the queued/pending events carry the submitting key's id.
    if keys != nil { taskLog = taskLog.map { SubmitterTaggingSink($0) } }

    var policies: [String: ScalingPolicy] = [:]
    for (pool, text) in configuration.scaling {
        guard let mode = manifest.pools[pool] else {
            throw GatewayError(message: "--scale \(pool)=\(text): the manifest has no pool '\(pool)'")
        }
        do { policies[pool] = try ScalingPolicy.parse(text, mode: mode) } catch {
            throw GatewayError(message: "--scale \(pool)=\(text): \(error)")
        }
    }
    let workers = WorkerRegistry(timeout: configuration.heartbeatTimeout, logger: logger)
    let monitor = PoolMonitor(
        pools: manifest.pools, policies: policies, registry: workers, queue: queue, reader: reader,
        staticPools: pools, logger: logger)
    let feed = reader.map {
        EventFeed(reader: $0, logger: logger, maxSubscribers: configuration.maxSSESubscribers, backlogLimit: configuration.sseBacklog)
    }
    let waiters = reader.map { TaskWaiters(reader: $0, maxWaiters: configuration.maxLongPollWaiters) }
    let components = GatewayComponents(
        configuration: configuration, manifest: manifest, pools: pools, taskLog: taskLog, reader: reader,
        waiters: waiters, queue: queue,
        workers: workers, monitor: monitor, feed: feed,
        catchUp: configuration.eventsViaNATS ? ReplicaCatchUp(lagBound: configuration.replicationLagBound) : .none,
        logger: logger)

    let router = Router(context: GatewayRequestContext.self)
    // Hummingbird applies a middleware to the routes added after it. With tracing on, first the request span (so it
    // covers the access checks too); then the one error shape for what no handler answers (404, 405, an unreadable
    // request target), then the request counter.
    if NeutrinoTracing.isEnabled { router.add(middleware: TracedRoutesMiddleware()) }
    router.add(middleware: ErrorBodyMiddleware(routes: gatewayRoutes))
    router.add(middleware: RequestMetricsMiddleware())
    // Access control, in this order: Host (DNS rebinding) → Origin and CSRF → CORS preflight → API key → scopes
    // and per-key limits. See AccessConfiguration and the README's "Authentication".
    let hostGuard = loopback || !access.allowedHosts.isEmpty ? HostGuard(host: configuration.host, extra: access.allowedHosts) : nil
    if let hostGuard { router.add(middleware: HostGuardMiddleware(hostGuard)) }
    router.add(middleware: OriginGuardMiddleware(corsOrigins: access.corsOrigins))
    if !access.corsOrigins.isEmpty {
        router.add(
            middleware: CORSMiddleware(
                allowOrigin: .originBased,
                allowHeaders: [.accept, .authorization, .contentType, .origin, TasksController.lastEventID, TaskSubmitter.idempotencyKey],
                allowMethods: [.get, .head, .post, .delete, .options],
                exposedHeaders: ["Retry-After", "Location", "WWW-Authenticate", NeutrinoHeader.taskID.canonicalName],
                maxAge: .seconds(600)))
    }
    let forwarding = ASGIForwardingRule(mounted: manifest.asgi != nil)
    if let keys { router.add(middleware: APIKeyAuthenticator(store: keys, metricsToken: access.metricsToken, forwarding: forwarding)) }
    // The dashboard's login: a session cookie stands for its key (after the bearer key, which wins).
    let sessions = keys.map { _ in SessionStore(lifetime: access.sessionLifetime) }
    if let keys, let sessions { router.add(middleware: SessionAuthenticator(sessions: sessions, keys: keys)) }
    let limits = KeyLimits(defaultRate: access.defaultRate)
    let policy = KeyPolicy(limits: limits, manifest: manifest)
    router.add(
        middleware: AccessPolicyMiddleware(
            keysEnabled: keys != nil, metricsToken: access.metricsToken, policy: policy, forwarding: forwarding))
    let submitter = TaskSubmitter(components: components)
    let operations = OperationsController(components: components)
    operations.addRoutes(to: router)
    SessionController(sessions: sessions, keys: keys).addRoutes(to: router)
    // Whether each connection's client is still there, for the requests the router serves (CallHandler tells its
    // own calls): a sync call or a forwarded ASGI request waiting for room leaves the line when its client hangs up.
    let presences = ConnectionPresences()
    let submit = SubmitController(components: components, submitter: submitter, presences: presences)
    submit.addRoutes(to: router)
    TasksController(components: components, submitter: submitter).addRoutes(to: router)
    operations.addDashboard(to: router, under: manifest.asgi == nil ? nil : ASGIConflicts.dashboardPrefix)
    if let mount = manifest.asgi {
        // Innermost, after every route and the dashboard's files: only requests none of them answers get here.
        for conflict in ASGIConflicts.find(mount, routes: gatewayRoutes) {
            logger.warning(
                "route of the mounted ASGI app is shadowed: Neutrino's routes win, requests to it never reach the app; move it",
                metadata: ["conflict": "\(conflict)", "app": "\(mount.app)"])
        }
        router.add(
            middleware: ASGIFallback(
                mount: mount, pool: pools[mount.pool], maxBodyBytes: configuration.maxBodyBytes, headTimeout: configuration.asgiHeadTimeout,
                server: "\(configuration.host):\(configuration.port)", presences: presences, logger: logger))
    }

    // Stopped in reverse order of this list, after the server.
    var services: [any Service] = []
    if let tracing { services.append(tracing) }
    if let queue { services.append(LifecycleService("NATS connection", stop: { await queue.close() })) }
    services.append(
        LifecycleService(
            "task log",
            stop: { [taskLog, reader] in
                await taskLog?.close()
                await reader?.shutdown()
            }))
    services.append(LifecycleService("sync pools", stop: { [pools] in for pool in pools.values { pool.close() } }))
    if let path = configuration.taskLogPath, let retention = configuration.retention {
        services.append(
            try TaskLogRetention(
                path: path,
                configuration: .init(
                    retention: retention,
                    idempotencyWindow: TaskSubmitter.idempotencyWindow),
                logger: logger))
    }
    if let queue {
        services.append(QueueProvisioner(queue: queue, manifest: manifest, ackWait: configuration.ackWait, logger: logger))
        services.append(DeliveryJanitor(queue: queue, manifest: manifest, taskLog: taskLog, reader: reader, logger: logger))
    }
    if let eventsConsumer {
        services.append(LifecycleService("events consumer", start: { eventsConsumer.start() }, stop: { await eventsConsumer.stop() }))
    }
    services.append(monitor)
    if let feed { services.append(feed) }
    if let queue {
        let discovery = PoolDiscovery(pools: pools, registry: workers, logger: logger)
        services.append(discovery)
        services.append(HeartbeatListener(connection: queue.connection, registry: workers, discovery: discovery, logger: logger))
        if let waiters { services.append(FinishedNoticeListener(connection: queue.connection, waiters: waiters, logger: logger)) }
    }
    if let keys { services.append(KeyFileWatcher(store: keys, interval: access.keyFilePollInterval)) }
    if keys != nil, let reader { services.append(InFlightReaper(limits: limits, reader: reader, interval: access.inFlightPollInterval)) }
    if !loopback && keys == nil {
        services.append(InsecureWarning(host: configuration.host, interval: access.insecureWarningInterval, logger: logger))
    }

    // Stopped first after the server: a sync call or a submit `CallHandler` took whose client hung up (nothing holds
    // the server's drain open for it) is still recorded before the task log, the worker connections and NATS close.
    // The router's requests are the drain's. A submit ends within its publish budget.
    let claimedSubmits = components.claimedSubmits
    let longestCall = max(
        Duration.milliseconds(
            (manifest.tasks.values.filter { $0.spec.mode == .sync }.map(\.spec.timeoutMs).max() ?? 0) + configuration.timeoutGraceMs),
        queue == nil ? .zero : GatewayQueue.publishBudget + .seconds(1))
    services.append(
        LifecycleService(
            "sync calls",
            stop: { [logger] in
                if !(await waitUntil(within: longestCall + .seconds(1)) { claimedSubmits.count == 0 }) {
                    logger.error("calls still running at shutdown", metadata: ["calls": "\(claimedSubmits.count)"])
                }
            }))

    logger.info(
        "gateway starting",
        metadata: [
            "tasks": "\(manifest.tasks.keys.sorted().joined(separator: ","))",
            "pools": "\(configuration.httpPools.map { "\($0.key)=\($0.value.count)" }.sorted().joined(separator: ","))",
        ])
    var gatewayLimits = serverLimits(configuration)
    // Submits are answered outside the router when no middleware would refuse or decorate them: no tracing, no
    // Origin, and with API keys only those whose key may submit the task (the same checks, run by the handler).
    if !NeutrinoTracing.isEnabled {
        let callAccess = keys.map { CallAccess(keys: $0, policy: policy) }
        let calls = CallHandler.Calls(
            claim: { head in SubmitController.claimedTask(head, manifest: manifest, hostGuard: hostGuard, access: callAccess) },
            maxBodyBytes: configuration.maxBodyBytes, serverName: "neutrino-gateway", route: "/api/{task}", presences: presences,
            start: { task, head, body, executor, caller, answer in
                submit.start(task: task, head: head, body: body, access: callAccess, executor: executor, caller: caller, answer: answer)
            })
        gatewayLimits.requestHandlers = { CallHandler.handlers(calls) }
    } else {
        gatewayLimits.requestHandlers = { [presences.handler()] }
    }
    return makeApplication(
        router: router, host: configuration.host, port: configuration.port,
        serverName: "neutrino-gateway", services: services, limits: gatewayLimits, logger: logger)
}

/// The connection limits of the gateway's server: Hummingbird's idle timeout and header size, the connection guard
/// (header and body timeouts, the connection limit, JSON answers to malformed requests), and an accept pause a little
/// above the connection limit, which bounds file descriptors even against clients that never send a byte (to the
/// pause plus `ServerLimits.acceptsPerWakeup` less one: the pause is checked between wake-ups).
func serverLimits(_ configuration: GatewayConfiguration) -> ServerLimits {
    var limits = ServerLimits()
    limits.idleTimeout = configuration.idleTimeout
    limits.maxHeaderBytes = configuration.maxHeaderBytes
    let settings = ConnectionGuardSettings(
        headerTimeout: TimeAmount(configuration.headerTimeout),
        bodyTimeout: TimeAmount(configuration.bodyTimeout),
        counter: ConnectionCounter(limit: configuration.maxConnections))
    limits.channelHandlers = { settings.handlers() }
    let (quarter, _) = configuration.maxConnections.dividedReportingOverflow(by: 4)
    limits.maxAcceptedConnections = configuration.maxConnections.addingReportingOverflow(quarter + 16).partialValue
    return limits
}

/// Every route the controllers add (what `ErrorBodyMiddleware` answers 405 for when the method differs). A test checks
/// that each one is served.
let gatewayRoutes = RouteTable([
    (.get, "/healthz"), (.get, "/readyz"), (.get, "/openapi.json"), (.get, "/pools"), (.get, "/metrics"),
    (.post, "/api/:task"),
    (.get, "/tasks"), (.get, "/tasks/:id"), (.delete, "/tasks/:id"), (.post, "/tasks/:id/retry"), (.get, "/events"),
    (.post, "/auth/session"), (.get, "/auth/session"), (.delete, "/auth/session"),
])

/// The manifest `neutrino openapi APP` wrote.
func readManifest(_ path: String) throws -> Manifest {
    guard let data = FileManager.default.contents(atPath: path) else {
        throw GatewayError(message: "cannot read the manifest \(path): no such readable file")
    }
    do { return try Manifest(json: Array(data)) } catch { throw GatewayError(message: "\(path): \(error)") }
}

/// A configuration the gateway cannot start with.
public struct GatewayError: Error, CustomStringConvertible {
    public var message: String
    public var description: String { message }
}
