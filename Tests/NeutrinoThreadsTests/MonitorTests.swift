import NeutrinoThreads
import Testing

struct MonitorTests {
    @Test func aTimedWaitWithNoSignalEndsAtItsDeadlineAndSaysSo() {
        let monitor = Monitor()
        let deadline = monotonicDeadline(after: .milliseconds(20))
        monitor.lock()
        var rounds = 0
        while monitor.wait(untilNanos: deadline) { rounds += 1 }  // spurious wake-ups go round again
        monitor.unlock()
        #expect(monotonicNanos() >= deadline)
        // A deadline already past returns at once, without waiting.
        monitor.lock()
        #expect(!monitor.wait(untilNanos: deadline))
        monitor.unlock()
    }

    @Test func aBroadcastFromAnotherThreadWakesTheWaiterBeforeItsDeadline() {
        /// State guarded by the monitor's lock.
        final class Flag: @unchecked Sendable { var ready = false }
        let monitor = Monitor()
        let flag = Flag()
        let deadline = monotonicDeadline(after: .seconds(60))
        monitor.lock()
        let started = startThread(name: "monitor-test") {
            monitor.withLock { flag.ready = true }
            monitor.broadcast()
        }
        #expect(started == 0)
        while !flag.ready && monitor.wait(untilNanos: deadline) {}
        let ready = flag.ready
        monitor.unlock()
        #expect(ready)
        #expect(monotonicNanos() < deadline)
    }

    @Test func deadlinesSaturate() {
        #expect(monotonicDeadline(after: .seconds(Int64.max)) == .max)
        let before = monotonicNanos()
        let now = monotonicDeadline(after: .seconds(-5))
        #expect(now >= before && now <= monotonicNanos())
        let soon = monotonicDeadline(after: .milliseconds(2))
        #expect(soon >= before + 2_000_000)
    }
}

struct ChildProcessTests {
    @Test func capturesTheOutputAndTheExitStatus() throws {
        let (status, output) = try #require(ChildProcess.run(["sh", "-c", "echo GPU 0: fake; echo hidden >&2; exit 3"]))
        #expect(status == 3)
        #expect(output == "GPU 0: fake\n")
    }

    @Test func aProgramThatIsNotThereIsNil() {
        #expect(ChildProcess.run(["neutrino-no-such-program-\(monotonicNanos())"]) == nil)
        #expect(ChildProcess.run([]) == nil)
    }

    @Test func aProgramEndedByASignalFailsAndALongOutputIsCutWithoutBlockingIt() throws {
        #expect(try #require(ChildProcess.run(["sh", "-c", "kill -9 $$"])).status == -1)
        let (status, output) = try #require(ChildProcess.run(["sh", "-c", "head -c 3000000 /dev/zero"]))
        #expect(status == 0)
        #expect(output.utf8.count == 1 << 20)
    }
}
