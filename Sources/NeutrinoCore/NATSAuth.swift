/// How a gateway or worker proves who it is to NATS, and how it checks the server (issue 12): a user and password
/// (the server's `authorization { users [...] }`, each user with its own publish/subscribe permissions), and
/// optionally TLS with a private CA and a client certificate.
///
/// The password never comes from the command line (it would show in `ps`): `NEUTRINO_NATS_PASSWORD`, or a file
/// named by `--nats-password-file` / `NEUTRINO_NATS_PASSWORD_FILE` (a mounted Kubernetes Secret). The description
/// never shows it.
///
/// With a user, the connection's reply inboxes are `_INBOX_<user>.…` instead of `_INBOX.…`, so the server can let
/// each user subscribe to its own replies only (a worker of pool A cannot read the tasks fetched by pool B).
public struct NATSAuth: Sendable, Equatable, CustomStringConvertible {
    public var user: String?
    public var password: String?
    /// PEM file of the CA that signed the server's certificate; turns TLS on.
    public var tlsCA: String?
    /// PEM client certificate and key (mutual TLS), both or neither.
    public var tlsCert: String?
    public var tlsKey: String?

    public init(user: String? = nil, password: String? = nil, tlsCA: String? = nil, tlsCert: String? = nil, tlsKey: String? = nil) {
        self.user = user
        self.password = password
        self.tlsCA = tlsCA
        self.tlsCert = tlsCert
        self.tlsKey = tlsKey
    }

    /// Whether TLS is asked for.
    public var usesTLS: Bool { tlsCA != nil || tlsCert != nil }

    /// The reply-inbox prefix of a connection as `user`: `_INBOX_<user>` (bytes outside `[A-Za-z0-9_-]` as `_`),
    /// or nil without a user (cnats's `_INBOX`).
    public var inboxPrefix: String? { user.map(Self.inboxPrefix(user:)) }

    public static func inboxPrefix(user: String) -> String {
        "_INBOX_" + String(decoding: user.utf8.map { Self.isTokenByte($0) ? $0 : 0x5F }, as: UTF8.self)
    }

    private static func isTokenByte(_ c: UInt8) -> Bool {
        (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A) || c == 0x5F || c == 0x2D
    }

    public var description: String {
        var parts: [String] = []
        if let user { parts.append("user=\(user) password=\(password == nil ? "none" : "***")") }
        if let tlsCA { parts.append("tls-ca=\(tlsCA)") }
        if let tlsCert { parts.append("tls-cert=\(tlsCert)") }
        return parts.isEmpty ? "no credentials" : parts.joined(separator: " ")
    }

    public struct Problem: Error, CustomStringConvertible, Equatable {
        public var description: String
        public init(_ description: String) { self.description = description }
    }

    /// The credentials from the flags (`user`, `passwordFile`, TLS files) and the environment
    /// (`NEUTRINO_NATS_USER`, `NEUTRINO_NATS_PASSWORD`, `NEUTRINO_NATS_PASSWORD_FILE`); a flag wins over its
    /// variable. `readFile` returns a file's text or nil when it cannot be read. Throws, with a message that names
    /// the flag or variable and never the secret, for a password without a user, a user without a password, an
    /// unreadable or empty password file, or a client certificate without its key.
    public static func resolve(
        user userFlag: String?, passwordFile passwordFileFlag: String?, tlsCA: String?, tlsCert: String?, tlsKey: String?,
        environment: [String: String], readFile: (String) -> String?
    ) throws(Problem) -> NATSAuth {
        func nonEmpty(_ text: String?) -> String? { text.flatMap { $0.isEmpty ? nil : $0 } }
        let user = nonEmpty(userFlag) ?? nonEmpty(environment["NEUTRINO_NATS_USER"])
        var password: String?
        if let file = nonEmpty(passwordFileFlag) ?? nonEmpty(environment["NEUTRINO_NATS_PASSWORD_FILE"]) {
            guard let text = readFile(file) else { throw Problem("cannot read the NATS password file \(file)") }
            let trimmed = String(text.reversed().drop(while: { $0.isNewline }).reversed())
            guard !trimmed.isEmpty else { throw Problem("the NATS password file \(file) is empty") }
            password = trimmed
        } else {
            password = nonEmpty(environment["NEUTRINO_NATS_PASSWORD"])
        }
        if user == nil && password != nil {
            throw Problem("a NATS password is set but no user (--nats-user or NEUTRINO_NATS_USER)")
        }
        if user != nil && password == nil {
            throw Problem("--nats-user needs a password: NEUTRINO_NATS_PASSWORD, or --nats-password-file / NEUTRINO_NATS_PASSWORD_FILE")
        }
        if (tlsCert == nil) != (tlsKey == nil) { throw Problem("--nats-tls-cert and --nats-tls-key go together") }
        return NATSAuth(user: user, password: password, tlsCA: nonEmpty(tlsCA), tlsCert: nonEmpty(tlsCert), tlsKey: nonEmpty(tlsKey))
    }
}
