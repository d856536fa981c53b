import Synchronization
import Testing

@testable import NeutrinoCore

/// A caller's presence runs what waits on it once, when the caller leaves; it holds one hook at a time, so a call
/// that waits again and again, or a connection that serves many requests, does not pile hooks up.
struct CallerPresenceTests {
    final class Runs: Sendable {
        let names = Mutex<[String]>([])
        func add(_ name: String) { names.withLock { $0.append(name) } }
        var all: [String] { names.withLock { $0 } }
    }

    @Test func theLatestHookRunsOnceWhenTheCallerLeaves() {
        let presence = CallerPresence()
        let runs = Runs()
        presence.onLeave { runs.add("first wait") }
        presence.onLeave { runs.add("second wait") }
        #expect(!presence.hasLeft)
        #expect(runs.all.isEmpty)
        presence.leave()
        presence.leave()
        #expect(presence.hasLeft)
        #expect(runs.all == ["second wait"])
    }

    @Test func aHookSetAfterTheCallerLeftRunsAtOnce() {
        let presence = CallerPresence()
        presence.leave()
        let runs = Runs()
        presence.onLeave { runs.add("late") }
        #expect(runs.all == ["late"])
    }
}
