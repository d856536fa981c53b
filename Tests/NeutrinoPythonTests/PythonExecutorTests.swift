import Foundation
import NeutrinoCore
import Synchronization
import Testing

@testable import NeutrinoPython

/// The interpreter can start once per process, so every test shares one runtime and one executor.
/// One serialized suite around the three below: they share the executor, and a coroutine test must not race a
/// neighbouring suite's timeout or cancel on the same event loop.
@Suite(.serialized)
enum Embedded {
    static let repo: String = {
        var parts = #filePath.split(separator: "/", omittingEmptySubsequences: false)
        parts.removeLast(3)  // Tests/NeutrinoPythonTests/<file>
        return parts.joined(separator: "/")
    }()
    static let runtime = Result { try PythonRuntime.start(app: repo + "/examples/app.py", paths: [repo + "/python"]) }
    static let executor = runtime.map { PythonExecutor(runtime: $0, threads: 3, maxQueued: 64, maxCoroutines: 256) }
}

extension Embedded {
    @Suite(.serialized)
    struct PythonExecutorTests {
        func run(_ task: String, _ args: String, timeoutMs: Int = 5000) async throws -> PythonOutcome {
            let executor = try Embedded.executor.get()
            let payload = Array(#"{"args":\#(args),"task_id":"t-1","attempt":1,"pool":"fast"}"#.utf8)
            return await executor.run(task: task, payload: payload, timeoutMs: timeoutMs)
        }

        func errorObject(_ outcome: PythonOutcome) throws -> JSONValue {
            guard case .failed(let bytes, _) = outcome else { Issue.record("expected failure, got \(outcome)"); return .null }
            return try JSONParser.parse(bytes)
        }

        @Test func loadsTheAppsTasks() throws {
            let runtime = try Embedded.runtime.get()
            let echo = try #require(runtime.tasks.first { $0.name == "echo" })
            #expect(echo == TaskSpec(name: "echo", mode: .sync, pool: "fast", timeoutMs: 5000, retries: 0))
            #expect(runtime.tasks.contains { $0.name == "generate_report" && $0.mode == .async && $0.retries == 3 })
        }

        @Test func returnsTheResultAsJSON() async throws {
            guard case .completed(let bytes, let ms) = try await run("echo", #"{"x":3,"label":"é"}"#) else {
                Issue.record("echo did not complete"); return
            }
            #expect(try JSONParser.parse(bytes) == .object(["x": .number("3"), "label": .string("é")]))
            #expect(ms >= 0)
        }

        @Test func taskSeesItsContext() async throws {
            guard case .completed(let bytes, _) = try await run("whoami", "{}") else { Issue.record("whoami failed"); return }
            #expect(try JSONParser.parse(bytes)["task_id"]?.stringValue == "t-1")
        }

        @Test func exceptionsCarryTypeMessageAndTraceback() async throws {
            let error = try errorObject(try await run("boom", #"{"message":"kaput"}"#))
            #expect(error["type"]?.stringValue == "RuntimeError")
            #expect(error["message"]?.stringValue == "kaput")
            #expect(error["traceback"]?.stringValue?.contains("raise RuntimeError(message)") == true)
        }

        @Test func badArgumentsAreReported() async throws {
            let error = try errorObject(try await run("echo", #"{"nope":1}"#))
            #expect(error["type"]?.stringValue == "InvalidArguments")
        }

        @Test func timeoutInterruptsAPurePythonLoopAndTheThreadServesAgain() async throws {
            // spin's own timeout is 500 ms; more calls than threads show every thread came back.
            for _ in 0..<4 {
                guard case .timedOut(let ms) = try await run("spin", "{}", timeoutMs: 200) else {
                    Issue.record("spin did not time out"); return
                }
                #expect(ms >= 200)
            }
            let executor = try Embedded.executor.get()
            for _ in 0..<50 where executor.load.stuck > 0 { try await Task.sleep(for: .milliseconds(20)) }
            #expect(executor.load.stuck == 0, "every interrupted thread is free again")
            guard case .completed = try await run("echo", #"{"x":1}"#) else { Issue.record("echo after timeouts failed"); return }
        }

        @Test func callsRunConcurrentlyOnTheThreads() async throws {
            // Three threads, three 300 ms sleeps: together well under three times 300 ms would be a timing assertion,
            // so check instead that all three were running at once.
            let executor = try Embedded.executor.get()
            async let a = run("sleepy", #"{"seconds":0.3}"#)
            async let b = run("sleepy", #"{"seconds":0.3}"#)
            async let c = run("sleepy", #"{"seconds":0.3}"#)
            var sawThreeBusy = false
            for _ in 0..<100 {
                if executor.load.busy == 3 { sawThreeBusy = true; break }
                try await Task.sleep(for: .milliseconds(5))
            }
            let outcomes = [try await a, try await b, try await c]
            #expect(sawThreeBusy)
            for o in outcomes { guard case .completed = o else { Issue.record("sleepy failed: \(o)"); continue } }
        }

        final class StartCount: Sendable {
            private let count = Mutex(0)
            var value: Int { count.withLock { $0 } }
            func add() { count.withLock { $0 += 1 } }
        }

        static func submit(
            _ executor: PythonExecutor, _ payload: [UInt8], waitsMs: Int? = nil, caller: CallerPresence? = nil, started: StartCount
        ) async -> PythonOutcome {
            await withCheckedContinuation { continuation in
                executor.submit(
                    task: "echo", payload: payload, timeoutMs: 5000, callerWaitsMs: waitsMs, caller: caller, onStart: { started.add() },
                    completion: { continuation.resume(returning: $0) })
            }
        }

        /// Three sleeps of `seconds` on the three threads; `body` runs while they are all busy.
        func whileEveryThreadIsBusy(seconds: Double, _ body: (PythonExecutor) async throws -> Void) async throws {
            let executor = try Embedded.executor.get()
            let args = #"{"seconds":\#(seconds)}"#
            async let a = run("sleepy", args)
            async let b = run("sleepy", args)
            async let c = run("sleepy", args)
            for _ in 0..<200 where executor.load.busy < 3 { try await Task.sleep(for: .milliseconds(5)) }
            #expect(executor.load.busy == 3)
            try await body(executor)
            for o in [try await a, try await b, try await c] {
                guard case .completed = o else { Issue.record("sleepy failed: \(o)"); continue }
            }
        }

        /// A call still queued when its caller stopped waiting is not run (a backlog after a burst must not hold every
        /// thread for answers nobody reads); one whose caller still waits runs when a thread is free.
        @Test func aQueuedCallWhoseCallerStoppedWaitingDoesNotRun() async throws {
            try await whileEveryThreadIsBusy(seconds: 1.0) { executor in
                let payload = Array(#"{"args":{"x":1},"task_id":"t-gone","attempt":1,"pool":"fast"}"#.utf8)
                let started = StartCount()
                async let gone = Self.submit(executor, payload, waitsMs: 20, started: started)
                async let waiting = Self.submit(executor, payload, waitsMs: 60_000, started: started)
                Self.expectNotRun(await gone, because: PythonExecutor.callerGone)
                if case .completed = await waiting {} else { Issue.record("the call whose caller waits should run, got \(await waiting)") }
                #expect(started.value == 1)
            }
        }

        /// A call still queued when its caller closes the connection is not run; the one queued beside it, whose
        /// caller is still there, runs when a thread is free.
        @Test func aQueuedCallWhoseCallerLeftDoesNotRun() async throws {
            try await whileEveryThreadIsBusy(seconds: 1.0) { executor in
                let payload = Array(#"{"args":{"x":1},"task_id":"t-left","attempt":1,"pool":"fast"}"#.utf8)
                let started = StartCount()
                let left = CallerPresence()
                async let gone = Self.submit(executor, payload, caller: left, started: started)
                async let waiting = Self.submit(executor, payload, caller: CallerPresence(), started: started)
                left.leave()
                Self.expectNotRun(await gone, because: PythonExecutor.callerLeft)
                if case .completed = await waiting {} else { Issue.record("the call whose caller stays should run, got \(await waiting)") }
                #expect(started.value == 1)
            }
        }

        static func expectNotRun(_ outcome: PythonOutcome, because reason: String) {
            if case .rejected(let why) = outcome {
                #expect(why == reason)
            } else {
                Issue.record("expected the call not to run, got \(outcome)")
            }
        }

        @Test func pythonThreadsWakeAtTheirTimersDeadlineWithoutTheKernelsSlack() async throws {
            // Each Python thread (and the coroutine loop's) sets its timer slack to 1 ns, so a task's `time.sleep`
            // returns at its deadline rather than up to 50 µs after it. Read from /proc, not timed.
            _ = try Embedded.executor.get()
            guard case .completed = try await run("echo", #"{"x":1}"#) else { Issue.record("echo failed"); return }
            var slack: [String: String] = [:]
            for _ in 0..<100 {
                slack = Self.timerSlackOfPythonThreads()
                if !slack.isEmpty, slack.values.allSatisfy({ $0 == "1" }) { break }
                try await Task.sleep(for: .milliseconds(10))
            }
            #expect(slack.keys.filter { $0 != "py-loop" }.count >= 3, "the executor's three Python threads: \(slack)")
            #expect(slack.keys.contains("py-loop"), "the coroutine loop's thread: \(slack)")
            #expect(slack.values.allSatisfy { $0 == "1" }, "timer slack in ns by thread: \(slack)")
        }

        /// `timerslack_ns` of this process's Python threads (`py-<n>`, `py-loop`), by name (`name#tid` for a second
        /// thread of one name: another suite's executor).
        static func timerSlackOfPythonThreads() -> [String: String] {
            func read(_ path: String) -> String? {
                (try? String(contentsOfFile: path, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
            }
            var found: [String: String] = [:]
            for tid in (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task")) ?? [] {
                // A thread's timer slack is only at /proc/<tid>/ (not listed in /proc, but there for every thread).
                guard let name = read("/proc/self/task/\(tid)/comm"), let ns = read("/proc/\(tid)/timerslack_ns") else { continue }
                let isPython = name == "py-loop" || (name.hasPrefix("py-") && Int(name.dropFirst(3)) != nil)
                if isPython { found[found[name] == nil ? name : "\(name)#\(tid)"] = ns }
            }
            return found
        }

        @Test func aBurstOfShortCallsAllCompleteAndBlockingCallsStillGetEveryThread() async throws {
            // A thread that finishes a call takes the next queued one under the same GIL, and a burst wakes threads
            // one after another: every call of the burst completes with its own result, and right after it three
            // blocking calls still run on the three threads at once (no thread was left waiting unsignalled).
            let results = try await withThrowingTaskGroup(of: (Int, PythonOutcome).self) { group in
                for i in 0..<60 { group.addTask { (i, try await run("echo", #"{"x":\#(i)}"#)) } }
                var all: [Int: PythonOutcome] = [:]
                for try await (i, outcome) in group { all[i] = outcome }
                return all
            }
            #expect(results.count == 60)
            for (i, outcome) in results {
                guard case .completed(let bytes, _) = outcome else { Issue.record("call \(i) did not complete: \(outcome)"); continue }
                #expect(try JSONParser.parse(bytes)["x"] == .number("\(i)"))
            }
            try await callsRunConcurrentlyOnTheThreads()
        }

        @Test func unknownTaskFailsCleanly() async throws {
            let error = try errorObject(try await run("does_not_exist", "{}"))
            #expect(error["type"]?.stringValue == "UnknownTask")
        }
    }

    @Suite(.serialized)
    struct PythonCancelTests {
        @Test func cancelStopsARunningTaskAndTheThreadServesAgain() async throws {
            let executor = try Embedded.executor.get()
            let payload = Array(#"{"args":{"iterations":1000000000000},"task_id":"c-1"}"#.utf8)
            async let outcome = executor.run(task: "spin", tag: "c-1", payload: payload, timeoutMs: 60_000)
            var cancelled = false
            for _ in 0..<200 where !cancelled {
                cancelled = executor.cancel(tag: "c-1")
                if !cancelled { try await Task.sleep(for: .milliseconds(10)) }
            }
            #expect(cancelled)
            guard case .cancelled = await outcome else { Issue.record("spin was not cancelled"); return }
            for _ in 0..<100 where executor.load.stuck > 0 { try await Task.sleep(for: .milliseconds(20)) }
            #expect(executor.load.stuck == 0)
            #expect(!executor.cancel(tag: "c-1"), "nothing left to cancel")
        }
    }

    /// `async def` tasks (examples/app.py's `lookup`) on the executor's event loop.
    @Suite(.serialized)
    struct PythonCoroutineTests {
        func payload(_ args: String, id: String) -> [UInt8] {
            Array(#"{"args":\#(args),"task_id":"\#(id)","attempt":1,"pool":"fast"}"#.utf8)
        }

        @Test func aCoroutineTaskRunsOnTheLoopWithItsContext() async throws {
            let executor = try Embedded.executor.get()
            #expect(try Embedded.runtime.get().coroutineTasks.contains("lookup"))
            #expect(executor.slots == 3 + 256)
            let outcome = await executor.run(
                task: "lookup", tag: "co-1", payload: payload(#"{"key":"ab","delay_s":0.01}"#, id: "co-1"), timeoutMs: 5000)
            guard case .completed(let bytes, _) = outcome else { Issue.record("lookup: \(outcome)"); return }
            let result = try JSONParser.parse(bytes)
            #expect(result["value"]?.stringValue == "AB")
            #expect(result["task_id"]?.stringValue == "co-1")
        }

        @Test func twoHundredCoroutinesRunAtOnceOnThreeThreads() async throws {
            let executor = try Embedded.executor.get()
            let started = ContinuousClock.now
            let outcomes = await withTaskGroup(of: PythonOutcome.self) { group in
                for i in 0..<200 {
                    group.addTask {
                        await executor.run(
                            task: "lookup", payload: self.payload(#"{"key":"k","delay_s":0.5}"#, id: "many-\(i)"), timeoutMs: 30_000)
                    }
                }
                return await group.reduce(into: [PythonOutcome]()) { $0.append($1) }
            }
            let elapsed = ContinuousClock.now - started
            #expect(outcomes.allSatisfy { if case .completed = $0 { true } else { false } })
            // 200 × 0.5 s on 3 threads would take over 30 s; on the loop they overlap (generous bound: a loaded machine).
            #expect(elapsed < .seconds(15), "200 coroutines took \(elapsed)")
        }

        @Test func aTimeoutAnswersAtTheDeadlineAndTheSlotComesBack() async throws {
            let executor = try Embedded.executor.get()
            let outcome = await executor.run(
                task: "lookup", tag: "co-t", payload: payload(#"{"key":"k","delay_s":60}"#, id: "co-t"), timeoutMs: 200)
            guard case .timedOut = outcome else { Issue.record("expected a timeout, got \(outcome)"); return }
            // (The other suites share the executor: wait until nothing at all runs.)
            for _ in 0..<500 where executor.load.busy > 0 || executor.load.stuck > 0 { try await Task.sleep(for: .milliseconds(20)) }
            #expect(executor.load.busy == 0 && executor.load.stuck == 0, "the cancelled coroutine did not end: \(executor.load)")
        }

        @Test func cancelStopsARunningCoroutine() async throws {
            let executor = try Embedded.executor.get()
            async let outcome = executor.run(
                task: "lookup", tag: "co-c", payload: payload(#"{"key":"k","delay_s":60}"#, id: "co-c"), timeoutMs: 60_000)
            var cancelled = false
            for _ in 0..<200 where !cancelled {
                cancelled = executor.cancel(tag: "co-c")
                if !cancelled { try await Task.sleep(for: .milliseconds(10)) }
            }
            #expect(cancelled)
            let ended = await outcome
            guard case .cancelled = ended else { Issue.record("lookup was not cancelled: \(ended)"); return }
            for _ in 0..<500 where executor.load.busy > 0 { try await Task.sleep(for: .milliseconds(20)) }
            #expect(executor.load.busy == 0)
        }

        @Test func badArgumentsOfACoroutineAreReported() async throws {
            let executor = try Embedded.executor.get()
            let outcome = await executor.run(task: "lookup", payload: payload(#"{"nope":1}"#, id: "co-b"), timeoutMs: 5000)
            guard case .failed(let bytes, _) = outcome else { Issue.record("expected a failure, got \(outcome)"); return }
            #expect(try JSONParser.parse(bytes)["type"]?.stringValue == "InvalidArguments")
        }
    }
}
