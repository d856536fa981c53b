import Testing

@testable import NeutrinoCore

/// Where a gateway's or worker's NATS credentials come from, and that the password never shows.
struct NATSAuthTests {
    func resolve(
        user: String? = nil, passwordFile: String? = nil, cert: String? = nil, key: String? = nil,
        env: [String: String] = [:], files: [String: String] = [:]
    ) throws(NATSAuth.Problem) -> NATSAuth {
        try NATSAuth.resolve(
            user: user, passwordFile: passwordFile, tlsCA: nil, tlsCert: cert, tlsKey: key, environment: env,
            readFile: { files[$0] })
    }

    @Test func nothingGivenIsNoCredentials() throws {
        let auth = try resolve()
        #expect(auth == NATSAuth() && auth.inboxPrefix == nil && !auth.usesTLS)
        #expect(auth.description == "no credentials")
    }

    @Test func userAndPasswordFromTheEnvironment() throws {
        let auth = try resolve(env: ["NEUTRINO_NATS_USER": "worker_fast", "NEUTRINO_NATS_PASSWORD": "s3cret"])
        #expect(auth.user == "worker_fast" && auth.password == "s3cret")
        #expect(auth.inboxPrefix == "_INBOX_worker_fast")
        #expect(!auth.description.contains("s3cret"))
    }

    @Test func flagsWinAndAPasswordFileIsTrimmed() throws {
        let auth = try resolve(
            user: "gateway", passwordFile: "/run/pw",
            env: ["NEUTRINO_NATS_USER": "other", "NEUTRINO_NATS_PASSWORD": "env"], files: ["/run/pw": "from-file\n"])
        #expect(auth.user == "gateway" && auth.password == "from-file")
        let viaEnv = try resolve(env: ["NEUTRINO_NATS_USER": "u", "NEUTRINO_NATS_PASSWORD_FILE": "/p"], files: ["/p": "x\r\n"])
        #expect(viaEnv.password == "x")
    }

    @Test func incompleteCredentialsAreRefusedWithoutTheSecret() {
        #expect(throws: NATSAuth.Problem.self) { try resolve(user: "gateway") }
        #expect(throws: NATSAuth.Problem.self) { try resolve(env: ["NEUTRINO_NATS_PASSWORD": "pw"]) }
        #expect(throws: NATSAuth.Problem.self) { try resolve(user: "u", passwordFile: "/missing") }
        #expect(throws: NATSAuth.Problem.self) { try resolve(user: "u", passwordFile: "/empty", files: ["/empty": "\n"]) }
        #expect(throws: NATSAuth.Problem.self) { try resolve(cert: "c.pem") }
        do {
            _ = try resolve(env: ["NEUTRINO_NATS_PASSWORD": "hunter2"])
        } catch {
            #expect(!error.description.contains("hunter2"))
        }
    }

    @Test func inboxPrefixIsOneSubjectToken() {
        #expect(NATSAuth.inboxPrefix(user: "a.b*c>d e") == "_INBOX_a_b_c_d_e")
    }

    @Test func urlsAreRedactedForLogs() {
        #expect(NATSServers.redacted("nats://u:p@a:4222,nats://b:4222") == "nats://***@a:4222,nats://b:4222")
        #expect(NATSServers.redacted("tok@h:4222") == "***@h:4222")
    }
}
