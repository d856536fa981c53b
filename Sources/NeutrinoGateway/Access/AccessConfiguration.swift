import FoundationEssentials

/// Who may call the gateway: API keys, the names it answers to, the origins it shares its API with, the token of
/// `/metrics`, the default per-key rate (`--api-keys`, `--insecure-no-auth`, `--allowed-host`, `--cors-origin`,
/// `--metrics-token`, `--default-rate`). The README's "Authentication" section is the user-facing description.
public struct AccessConfiguration: Sendable {
    /// The keys file (JSON, mode 0600, hashes only); nil = no keys: every route is open.
    public var apiKeysPath: String?
    /// Lets a gateway on a non-loopback address start without `--api-keys` (it then warns every `insecureWarningInterval`).
    public var insecureNoAuth = false
    /// Host names accepted besides localhost, 127.0.0.1, [::1] and `--host` (DNS-rebinding protection).
    public var allowedHosts: [String] = []
    /// Origins other than the gateway's own that may call it from a browser (CORS); `*` allows any.
    public var corsOrigins: [String] = []
    /// A bearer token that also opens `GET /metrics` (for a scraper that holds no API key).
    public var metricsToken: String?
    /// Requests per second of a key whose entry sets no `rate_per_second`; nil = unlimited.
    public var defaultRate: Double?
    /// How often the keys file's modification time, size and inode are checked (changes apply without a restart).
    public var keyFilePollInterval: Duration = .seconds(1)
    /// How often the in-flight quota looks up the tasks it counts in the task log.
    public var inFlightPollInterval: Duration = .seconds(1)
    public var insecureWarningInterval: Duration = .seconds(60)
    /// How long a dashboard login (`POST /auth/session`) lasts.
    public var sessionLifetime: Duration = .seconds(12 * 3600)

    public init() {}

    /// Whether `host` (a listening address or a Host header's name) is a loopback name.
    public static func isLoopback(_ host: String) -> Bool {
        let h = host.lowercased()
        if h == "localhost" || h == "::1" || h == "[::1]" || h.hasSuffix(".localhost") { return true }
        let parts = h.split(separator: ".", omittingEmptySubsequences: false)
        return parts.count == 4 && parts[0] == "127" && parts.allSatisfy { UInt8($0) != nil }
    }
}
