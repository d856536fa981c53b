import ArgumentParser
import Logging
import NeutrinoCore
import Foundation
import NeutrinoGateway

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

    @Option(help: "NATS server URL for async and gpu tasks, e.g. nats://127.0.0.1:4222 (without it they answer 501).")
    var nats: String?

    @Option(name: .customLong("ack-wait"), help: "Seconds of AckWait for the pool consumers the gateway provisions.")
    var ackWait: Double = 30

    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error, critical.")
    var logLevel: String = "info"

    func validate() throws {
        for p in httpPools where GatewayConfiguration.parsePool(p) == nil {
            throw ValidationError("--http-pool '\(p)' must be NAME=http://HOST:PORT[,http://HOST:PORT...] with NAME in [a-z0-9_]+")
        }
        guard taskLog == "none" || (taskLog.hasPrefix("sqlite:") && taskLog.count > 7) else {
            throw ValidationError("--task-log must be sqlite:PATH or none")
        }
        guard (0...65535).contains(port) else { throw ValidationError("--port must be 0...65535") }
        guard maxBodyBytes > 0 else { throw ValidationError("--max-body-bytes must be positive") }
        guard Logger.Level(rawValue: logLevel) != nil else { throw ValidationError("unknown --log-level \(logLevel)") }
    }

    func run() async throws {
        var logger = Logger(label: "neutrino.gateway")
        logger.logLevel = Logger.Level(rawValue: logLevel) ?? .info
        var pools: [String: [String]] = [:]
        for p in httpPools {
            if let (name, urls) = GatewayConfiguration.parsePool(p) { pools[name, default: []] += urls }
        }
        let configuration = GatewayConfiguration(
            manifestPath: manifest, httpPools: pools,
            taskLogPath: taskLog.hasPrefix("sqlite:") ? String(taskLog.dropFirst(7)) : nil,
            host: host, port: port, maxBodyBytes: maxBodyBytes, natsURL: nats, ackWait: .milliseconds(Int64(ackWait * 1000)))
        do {
            var queue: GatewayQueue?
            if let nats {
                let manifestBytes = try readFile(manifest)
                queue = try await GatewayQueue.start(url: nats, manifest: try Manifest(json: manifestBytes), ackWait: configuration.ackWait,
                                                     logger: logger)
            }
            try await Gateway(configuration: configuration, queue: queue, logger: logger).run()
        } catch {
            logger.critical("gateway failed: \(error)")
            throw ExitCode(1)
        }
    }
}
