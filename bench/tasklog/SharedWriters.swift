// The `processes` phase: the task log written by three processes at once, as `neutrino up` runs it (the gateway and
// two queued workers each with a `TaskLogWriter` on the same file, each committing its own batches under SQLite's
// write lock). The bench re-runs its own executable three times with TASKLOG_BENCH_ROLE set; each child writes as
// fast as its writer takes events for TASKLOG_BENCH_SECONDS and prints one RESULT line, which the parent adds up.
import Foundation
import NeutrinoCore
import NeutrinoTaskLog

/// What one writing process did.
struct WriterProcessResult: Sendable {
    var role: String
    var events = 0
    var dropped = 0
    var seconds = 0.0
    var writerCPU = 0.0
    var commits = 0
    var commitSeconds = 0.0
    var lockWaitSeconds = 0.0

    /// `RESULT role events dropped seconds writerCPU commits commitSeconds lockWaitSeconds`
    var line: String {
        "RESULT \(role) \(events) \(dropped) \(seconds) \(writerCPU) \(commits) \(commitSeconds) \(lockWaitSeconds)"
    }

    init(role: String) { self.role = role }

    init?(line: Substring) {
        let f = line.split(separator: " ")
        guard f.count == 9, f[0] == "RESULT", let events = Int(f[2]), let dropped = Int(f[3]), let seconds = Double(f[4]),
            let cpu = Double(f[5]), let commits = Int(f[6]), let commitSeconds = Double(f[7]), let lockWait = Double(f[8])
        else { return nil }
        role = String(f[1])
        self.events = events
        self.dropped = dropped
        self.seconds = seconds
        writerCPU = cpu
        self.commits = commits
        self.commitSeconds = commitSeconds
        lockWaitSeconds = lockWait
    }
}

/// The roles, each a process of its own: the gateway records each new task's `queued`; worker k records `running`
/// and then the outcome of every task whose number is k modulo 2. Task ids are derived from the task's number (and a
/// run nonce), so the three processes write the same rows without talking to each other; a worker that runs ahead
/// of the gateway creates the row, and the late `queued` still lands in the task's events (events apply in any order).
enum SharedWriterRole {
    static let roles = ["gateway", "worker-1", "worker-2"]

    static func taskID(nonce: UInt32, number: Int) -> String {
        String(format: "%08x-0000-7000-8000-%012lx", nonce, number)
    }

    /// Runs `role` against the file at `path` for `seconds` and returns what it committed.
    static func run(role: String, path: String, seconds: Double, nonce: UInt32) async throws -> WriterProcessResult {
        let writer = try TaskLogWriter(path: path)
        capture.reset()
        let writerBefore = Bench.threadCPU("tasklog-writer")
        let stop = Shared(false)
        let produced = Shared(-1)
        let worker = role.hasPrefix("worker-") ? Int(role.dropFirst("worker-".count)).map { $0 - 1 } : nil
        let t0 = ContinuousClock.now
        let producer = Thread {
            var rng = SplitMix(seed: UInt64(nonce) &+ UInt64(worker ?? 7))
            var count = 0
            var number = worker ?? 0
            while !stop.value {
                let fn = Fn.all[Fn.pick(&rng)]
                let id = taskID(nonce: nonce, number: number)
                if let worker {
                    writer.record(
                        TaskEvent(
                            taskID: id, kind: .running, function: fn.name, pool: fn.pool, mode: fn.mode,
                            workerID: "bench-\(worker + 1)", attempt: 1))
                    writer.record(
                        TaskEvent(
                            taskID: id, kind: .completed, function: fn.name, pool: fn.pool, mode: fn.mode,
                            workerID: "bench-\(worker + 1)", attempt: 1, result: #"{"ok":true}"#, durationMs: 12))
                    count += 2
                    number += 2
                } else {
                    writer.record(
                        TaskEvent(
                            taskID: id, kind: .queued, function: fn.name, pool: fn.pool, mode: fn.mode,
                            args: #"{"x":\#(number),"label":"bench"}"#))
                    count += 1
                    number += 1
                }
            }
            produced.value = count
        }
        producer.start()
        try await Task.sleep(for: .seconds(seconds))
        stop.value = true
        while produced.value < 0 { usleep(1000) }
        await writer.flush()
        var result = WriterProcessResult(role: role)
        result.seconds = (ContinuousClock.now - t0).seconds
        result.dropped = Int(writer.droppedEventCount)
        result.events = produced.value - result.dropped
        let commits = capture.timer("neutrino_tasklog_write_seconds")
        result.commits = commits.count
        result.commitSeconds = commits.reduce(0, +)
        result.lockWaitSeconds = capture.timer("neutrino_tasklog_lock_wait_seconds").reduce(0, +)
        // Read before close: the thread ends with it, and its time leaves /proc with it.
        result.writerCPU = Bench.cpuSince(writerBefore, "tasklog-writer")
        await writer.close()
        return result
    }
}

extension Bench {
    /// Starts the three writing processes together on the task log, waits for them and prints their table.
    func sharedWriters() async throws {
        print("")
        print("## Three processes writing the task log at once for \(Int(config.seconds)) s (gateway + 2 workers)")
        print("")
        let nonce = UInt32.random(in: 1...UInt32.max)
        let executable = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        var children: [(Process, Pipe)] = []
        for role in SharedWriterRole.roles {
            let process = Process()
            let pipe = Pipe()
            process.executableURL = executable
            var environment = ProcessInfo.processInfo.environment
            environment["TASKLOG_BENCH_ROLE"] = role
            environment["TASKLOG_BENCH_NONCE"] = String(nonce)
            environment["TASKLOG_BENCH_PATH"] = config.path
            environment["TASKLOG_BENCH_SECONDS"] = String(config.seconds)
            process.environment = environment
            process.standardOutput = pipe
            try process.run()
            children.append((process, pipe))
        }
        // Every child is waited for before any failure is reported, so none outlives the phase.
        var results: [WriterProcessResult] = []
        var failures: [String] = []
        for (process, pipe) in children {
            let output = pipe.fileHandleForReading.readDataToEndOfFile()
            process.waitUntilExit()
            let text = String(decoding: output, as: UTF8.self)
            if process.terminationStatus == 0,
                let result = text.split(separator: "\n").lazy.compactMap({ WriterProcessResult(line: $0) }).first
            {
                results.append(result)
            } else {
                failures.append("A writing process failed (status \(process.terminationStatus)): \(text)")
            }
        }
        guard failures.isEmpty else {
            failures.forEach { print($0) }
            return
        }
        print(
            "| process | events committed | events/s | writer CPU per event | mean batch | commit mean | of it waiting for the write lock | dropped |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for r in results {
            print(
                "| \(r.role) | \(r.events.formatted()) | \(Int(Double(r.events) / r.seconds).formatted()) | "
                    + "\(String(format: "%.1f µs", r.writerCPU / Double(max(1, r.events)) * 1e6)) | "
                    + "\(r.events / max(1, r.commits)) | \(ms(r.commitSeconds / Double(max(1, r.commits)))) | "
                    + "\(String(format: "%.0f %%", r.lockWaitSeconds / max(r.commitSeconds, 1e-9) * 100)) | \(r.dropped) |")
        }
        let events = results.reduce(0) { $0 + $1.events }
        let seconds = results.map(\.seconds).max() ?? 1
        let cpu = results.reduce(0) { $0 + $1.writerCPU }
        let rate = Double(events) / seconds
        print(
            "| all three | \(events.formatted()) | \(Int(rate).formatted()) | "
                + "\(String(format: "%.1f µs", cpu / Double(max(1, events)) * 1e6)) | | | | \(results.reduce(0) { $0 + $1.dropped }) |")
        print("")
        print("Target (issue 14): ≥ 20,000 events/s sustained with the gateway and two workers writing: \(rate >= 20_000 ? "met" : "not met").")
    }
}
