import NeutrinoCore
import Testing

struct NATSServersTests {
    @Test func oneServerOrAClustersMembersCommaSeparated() {
        #expect(NATSServers.parse("nats://127.0.0.1:4222") == ["nats://127.0.0.1:4222"])
        #expect(
            NATSServers.parse("nats://a:4222, nats://b:4222 ,nats://c:4222")
                == ["nats://a:4222", "nats://b:4222", "nats://c:4222"])
        #expect(NATSServers.parse("tls://user:pw@nats-0.nats-headless:4222") == ["tls://user:pw@nats-0.nats-headless:4222"])
        #expect(NATSServers.parse("nats-0:4222") == ["nats-0:4222"])
    }

    @Test(arguments: [
        "", ",", "nats://a:4222,", "nats://a:4222,,nats://b:4222", "http://a:8222", "nats://", "nats:///x",
        "nats://a b:4222", ":4222",
    ])
    func rejectsWhatIsNotAServerList(_ text: String) {
        #expect(NATSServers.parse(text) == nil)
    }
}

struct WhitespaceTests {
    @Test func trimmingWhitespaceDropsBlanksTabsAndLineBreaksAroundTheTextOnly() {
        #expect("  nats://a:4222 \t".trimmingWhitespace() == "nats://a:4222")
        #expect("\n id-1 2 \r\n".trimmingWhitespace() == "id-1 2")
        #expect(" \t\n ".trimmingWhitespace() == "")
        #expect("".trimmingWhitespace() == "")
        #expect("x"[...].trimmingWhitespace() == "x")
    }
}
