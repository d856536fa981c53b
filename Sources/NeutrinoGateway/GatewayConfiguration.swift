import Foundation
import NeutrinoCore

/// Everything `neutrino-gateway` is told on its command line.
public struct GatewayConfiguration: Sendable {
    public var manifestPath: String
    /// Sync pool name → worker base URLs.
    public var httpPools: [String: [String]]
    /// Path of the SQLite task log, or nil to run without one (the polling API then answers 503).
    public var taskLogPath: String?
    public var host: String
    public var port: Int
    public var maxBodyBytes: Int
    /// Added to a task's timeout before the gateway gives up on its worker (the worker answers 504 first).
    public var timeoutGraceMs: Int
    /// NATS server URL(s) for async and gpu tasks; without it they answer 501.
    public var natsURL: String?
    /// AckWait of the pool consumers the gateway provisions.
    public var ackWait: Duration
    /// The folder `GET /` serves the dashboard from, if any.
    public var dashboardDirectory: String?
    /// A worker not heard from for this long leaves the live set.
    public var heartbeatTimeout: Duration = .seconds(6)
    /// `--scale POOL=MIN:MAX[:TARGET[:WINDOW]]` texts by pool, checked against the manifest's modes at start-up.
    public var scaling: [String: String] = [:]
    /// Cluster mode of the task log: consume NEUTRINO_EVENTS into this gateway's file and publish its own events there.
    public var eventsViaNATS = false
    /// Names this gateway's durable events consumer (`events_<id>`).
    public var gatewayID = "gateway"
    /// Access control (`--api-keys`, `--insecure-no-auth`, `--allowed-host`, `--cors-origin`, `--metrics-token`,
    /// `--default-rate`): see `AccessConfiguration`.
    public var access = AccessConfiguration()

    public init(manifestPath: String, httpPools: [String: [String]], taskLogPath: String?, host: String = "127.0.0.1",
                port: Int = 8080, maxBodyBytes: Int = 1 << 20, timeoutGraceMs: Int = 2000, natsURL: String? = nil,
                ackWait: Duration = .seconds(30)) {
        self.manifestPath = manifestPath
        self.httpPools = httpPools
        self.taskLogPath = taskLogPath
        self.host = host
        self.port = port
        self.maxBodyBytes = maxBodyBytes
        self.timeoutGraceMs = timeoutGraceMs
        self.natsURL = natsURL
        self.ackWait = ackWait
    }

    /// Parses one `--http-pool NAME=URL[,URL…]` flag.
    public static func parsePool(_ argument: String) -> (String, [String])? {
        guard let eq = argument.firstIndex(of: "=") else { return nil }
        let name = String(argument[..<eq])
        let urls = argument[argument.index(after: eq)...].split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
        guard TaskSpec.isValidName(name), !urls.isEmpty,
              urls.allSatisfy({ $0.hasPrefix("http://") || $0.hasPrefix("https://") }) else { return nil }
        return (name, urls)
    }
}

