// `make bench-tasklog`: builds a task log of TASKLOG_BENCH_TASKS tasks (default 1M) with a realistic mix, then times
// every query the API and the dashboard make, event ingest while queries run, and retention pruning half of it.
//
// Knobs (environment): TASKLOG_BENCH_TASKS (1000000), TASKLOG_BENCH_QUERIES (200 timed runs per query),
// TASKLOG_BENCH_SECONDS (10 per ingest phase), TASKLOG_BENCH_PACE (3000 events/s for the pruning comparison),
// TASKLOG_BENCH_DIR (/tmp/neutrino-tasklog-bench), TASKLOG_BENCH_REUSE=1 (keep a file generated before; it is
// changed by the ingest and pruning phases, so figures after the first run differ), TASKLOG_BENCH_COMMIT (printed),
// TASKLOG_BENCH_PHASES (queries,ingest,processes,latency,prune; also ingest-alone, and migrate: the 3 -> 4 migration
// of a copy, which needs the file's size again in free disk; processes: three processes writing the file at once,
// SharedWriters.swift), TASKLOG_BENCH_RETENTION_HOURS (the latency phase's retention;
// half the span by default), TASKLOG_BENCH_PRUNE_PAUSE_MS (its pause between pruning transactions; 5 by default).
import CSQLite
import Foundation
import Logging
import Metrics
import NeutrinoCore
import NeutrinoTaskLog
import Synchronization

@main
struct TaskLogBench {
    static func main() async throws {
        let env = ProcessInfo.processInfo.environment
        MetricsSystem.bootstrap(capture)
        if let role = env["TASKLOG_BENCH_ROLE"], let path = env["TASKLOG_BENCH_PATH"] {
            // One of the `processes` phase's writers, started by the bench itself.
            let result = try await SharedWriterRole.run(
                role: role, path: path, seconds: Double(env["TASKLOG_BENCH_SECONDS"] ?? "") ?? 10,
                nonce: UInt32(env["TASKLOG_BENCH_NONCE"] ?? "") ?? 1)
            print(result.line)
            return
        }
        let config = BenchConfig(
            tasks: Int(env["TASKLOG_BENCH_TASKS"] ?? "") ?? 1_000_000,
            iterations: Int(env["TASKLOG_BENCH_QUERIES"] ?? "") ?? 200,
            seconds: Double(env["TASKLOG_BENCH_SECONDS"] ?? "") ?? 10,
            pace: Int(env["TASKLOG_BENCH_PACE"] ?? "") ?? 3_000,
            dir: env["TASKLOG_BENCH_DIR"] ?? "/tmp/neutrino-tasklog-bench",
            reuse: env["TASKLOG_BENCH_REUSE"] == "1",
            phases: Set((env["TASKLOG_BENCH_PHASES"] ?? "queries,ingest,processes,latency,prune").split(separator: ",").map(String.init)),
            commit: env["TASKLOG_BENCH_COMMIT"] ?? "?")
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = .warning
            return handler
        }
        try await Bench(config).run()
    }
}

struct BenchConfig: Sendable {
    var tasks: Int
    var iterations: Int
    var seconds: Double
    var pace: Int
    var dir: String
    var reuse: Bool
    /// Which parts run: queries, ingest, processes, latency, prune (all by default; the rest for profiling one part).
    var phases: Set<String>
    var commit: String
    /// The generated tasks' creation times span this window, ending a minute ago.
    var spanMs: Int64 { 7 * 86_400_000 }
    var path: String { "\(dir)/tasks-\(tasks).db" }
}

// MARK: - The run

final class Bench: Sendable {
    let config: BenchConfig
    let end: Int64
    var start: Int64 { end - config.spanMs }

    init(_ config: BenchConfig) {
        self.config = config
        end = Timestamp.now().millis - 60_000
    }

    func run() async throws {
        try FileManager.default.createDirectory(atPath: config.dir, withIntermediateDirectories: true)
        print("# Task log benchmark: \(config.tasks.formatted()) tasks")
        print("")
        print(
            "date \(Timestamp.now().iso8601), commit \(config.commit), SQLite \(String(cString: sqlite3_libversion())), "
                + "\(ProcessInfo.processInfo.activeProcessorCount) CPUs, \(ProcessInfo.processInfo.physicalMemory >> 30) GiB RAM, file \(config.path)"
        )
        print("")
        if !(config.reuse && FileManager.default.fileExists(atPath: config.path)) {
            try await Generator(config: config, end: end).generate()
        }
        let ids = try sampleIDs(1000)
        print("")
        printSizes("after generation")

        let reader = try TaskLogReader(path: config.path, threads: 2)
        let queries = QuerySet(ids: ids, start: start, end: end)
        print("")
        if config.phases.contains("queries") {
            print("## Queries, nothing writing (\(config.iterations) timed runs each, after 10 untimed; warm page cache)")
            print("")
            printQueryTable(try await measureQueries(reader, queries))
        }

        // Ingest as fast as the writer commits, while a reader loops over the list queries.
        if config.phases.contains("ingest") {
            print("")
            print("## Ingest at full speed for \(Int(config.seconds)) s while queries run")
            print("")
            let fast = try await ingest(reader: reader, queries: queries, pace: nil, prune: false)
            printIngest(fast)
            printQueryTable(fast.queries, title: "query under ingest")
        }
        if config.phases.contains("ingest-alone") {
            print("")
            print("## Ingest at full speed for \(Int(config.seconds)) s, nothing else running")
            print("")
            printIngest(try await ingest(reader: reader, queries: queries, pace: nil, prune: false, queriesRun: false))
        }

        if config.phases.contains("processes") { try await sharedWriters() }
        // The same paced load without and with retention pruning (half the tasks are past its cutoff).
        if config.phases.contains("latency") { try await latency(reader, queries) }
        if config.phases.contains("prune") { try await pruneHalf(reader) }
        if config.phases.contains("migrate") { try await migrate() }
        await reader.shutdown()
    }

    /// One paced load for 2 × `seconds`, cut into 1-second segments that alternate pruning off and on (so both see
    /// the same background load on a shared machine), the writer's commit times and a caller's record→committed
    /// times gathered per condition.
    func latency(_ reader: TaskLogReader, _ queries: QuerySet) async throws {
        print("")
        print("## Write latency at \(config.pace.formatted()) events/s, pruning off and on in alternate seconds")
        print("")
        let writer = try TaskLogWriter(path: config.path)
        let retentionMs = Int64(
            ProcessInfo.processInfo.environment["TASKLOG_BENCH_RETENTION_HOURS"].flatMap(Double.init).map { $0 * 3_600_000 }
                ?? Double(config.spanMs / 2))
        print("Retention \(retentionMs / 3_600_000) h (the tasks are spread over \(config.spanMs / 3_600_000) h).")
        print("")
        var retentionConfig = TaskLogRetention.Configuration(retention: .milliseconds(retentionMs), vacuum: false)
        if let pause = ProcessInfo.processInfo.environment["TASKLOG_BENCH_PRUNE_PAUSE_MS"].flatMap(Int.init) {
            retentionConfig.pause = .milliseconds(pause)
            print("Pruning pause \(pause) ms.")
            print("")
        }
        let retention = try TaskLogRetention(path: config.path, configuration: retentionConfig)
        capture.reset()
        let stop = Shared(false)
        let pace = config.pace
        let producer = Thread {
            var rng = SplitMix(seed: 99)
            var ring: [(String, Fn)] = []
            var recorded = 0
            let began = ContinuousClock.now
            while !stop.value {
                let fn = Fn.all[Fn.pick(&rng)]
                let id = TaskID.make()
                ring.append((id, fn))
                writer.record(
                    TaskEvent(
                        taskID: id, kind: fn.mode == .sync ? .pending : .queued, function: fn.name, pool: fn.pool, mode: fn.mode,
                        args: #"{"x":1,"label":"bench"}"#))
                recorded += 1
                if ring.count > 200 {
                    let (rid, rfn) = ring[ring.count - 201]
                    writer.record(
                        TaskEvent(taskID: rid, kind: .running, function: rfn.name, pool: rfn.pool, mode: rfn.mode, workerID: "b", attempt: 1))
                    recorded += 1
                }
                if ring.count > 400 {
                    let (rid, rfn) = ring.removeFirst()
                    writer.record(
                        TaskEvent(
                            taskID: rid, kind: .completed, function: rfn.name, pool: rfn.pool, mode: rfn.mode, workerID: "b",
                            attempt: 1, result: #"{"ok":true}"#, durationMs: 12))
                    recorded += 1
                }
                let due = Double(recorded) / Double(pace)
                let now = (ContinuousClock.now - began).seconds
                if due > now { usleep(UInt32((due - now) * 1_000_000)) }
            }
        }
        producer.start()
        var commits: [Bool: [Double]] = [:]
        var lockWaits: [Bool: [Double]] = [:]
        var flushes: [Bool: [Double]] = [:]
        var pruned = 0
        var prunedSeconds = 0.0
        var pruneTransactions: [Double] = []
        let segments = max(2, Int(config.seconds) * 2)
        for segment in 0..<segments {
            let pruning = segment % 2 == 1
            let task: Task<Void, Never>? = pruning ? Task { _ = try? await retention.prune(now: Timestamp(millis: end)) } : nil
            let until = ContinuousClock.now + .seconds(1)
            while ContinuousClock.now < until {
                let t = ContinuousClock.now
                writer.record(TaskEvent(taskID: TaskID.make(), kind: .completed, function: "echo", pool: "fast", mode: .sync, attempt: 1))
                await writer.flush()
                flushes[pruning, default: []].append((ContinuousClock.now - t).seconds)
                try await Task.sleep(for: .milliseconds(10))
            }
            task?.cancel()
            await task?.value
            commits[pruning, default: []] += capture.drain("neutrino_tasklog_write_seconds")
            lockWaits[pruning, default: []] += capture.drain("neutrino_tasklog_lock_wait_seconds")
            if pruning {
                pruneTransactions += capture.drain("neutrino_tasklog_prune_transaction_seconds")
                pruned += capture.counter("neutrino_tasklog_pruned_tasks_total")
                prunedSeconds += 1
            }
            capture.reset()
        }
        stop.value = true
        await writer.flush()
        await writer.close()
        print(
            "| pruning | batch commits | commit p50 | p99 | max | of which waiting for the lock: p99 | max | record→committed p50 | p99 | max | pruned tasks/s |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for on in [false, true] {
            let c = Percentiles(commits[on] ?? [])
            let f = Percentiles(flushes[on] ?? [])
            let l = Percentiles(lockWaits[on] ?? [])
            print(
                "| \(on ? "on (≤ 500 tasks and ~0.5 ms a transaction, \(retentionConfig.pause.wholeMilliseconds) ms pauses)" : "off") | \(c.count) | \(ms(c.p50)) | \(ms(c.p99)) | \(ms(c.max)) | "
                    + "\(ms(l.p99)) | \(ms(l.max)) | "
                    + "\(ms(f.p50)) | \(ms(f.p99)) | \(ms(f.max)) | \(on ? Int(Double(pruned) / prunedSeconds).formatted() : "") |")
        }
        let t = Percentiles(pruneTransactions)
        print("")
        print("Pruning transactions (the write lock held for them): \(t.count), p50 \(ms(t.p50)), p99 \(ms(t.p99)), max \(ms(t.max)).")
    }

    /// A copy of the file taken back to schema version 3 (its five single-column indexes, no group table), then
    /// opened by the task log: the time the migration to version 4 takes on this many tasks.
    func migrate() async throws {
        let copy = config.path + ".v3"
        for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: copy + suffix) }
        try checkpoint()
        try FileManager.default.copyItem(atPath: config.path, toPath: copy)
        var clock = ContinuousClock.now
        do {
            let db = try RawDB(path: copy)
            try db.exec("PRAGMA journal_mode=WAL")
            for sql in [
                "DROP TRIGGER tasks_group_insert", "DROP TRIGGER tasks_group_update", "DROP TRIGGER tasks_group_delete",
                "DROP TABLE task_groups", "DROP INDEX idx_tasks_group", "DROP INDEX idx_tasks_completed", "DROP INDEX idx_idempotency_created",
                "CREATE INDEX idx_status ON tasks(status)", "CREATE INDEX idx_created_at ON tasks(created_at)",
                "CREATE INDEX idx_function_name ON tasks(function_name)", "CREATE INDEX idx_pool ON tasks(pool)",
                "CREATE INDEX idx_completed_at ON tasks(completed_at)", "PRAGMA user_version=3", "PRAGMA wal_checkpoint(TRUNCATE)",
            ] { try db.exec(sql) }
        }
        let downgrade = (ContinuousClock.now - clock).seconds
        clock = ContinuousClock.now
        let writer = try TaskLogWriter(path: copy)
        let seconds = (ContinuousClock.now - clock).seconds
        await writer.close()
        print("")
        print("## Migration from schema version 3")
        print("")
        print(
            "Opening a version-3 copy of this file (made in \(String(format: "%.0f", downgrade)) s) with the new code migrated it to version 4 in "
                + "\(String(format: "%.1f", seconds)) s (two CREATE INDEX, the group table filled from one of them, five indexes dropped).")
        for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: copy + suffix) }
    }

    func pruneHalf(_ reader: TaskLogReader) async throws {
        // Prune the older half at full speed, then give the pages back.
        print("")
        print("## Pruning half (retention \(config.spanMs / 2 / 3_600_000) h, nothing else running)")
        print("")
        printSizes("before pruning")
        let retention = try TaskLogRetention(
            path: config.path,
            configuration: .init(
                retention: .milliseconds(config.spanMs / 2), maxBatch: 500, maxTransaction: .milliseconds(20), pause: .zero,
                maxVacuumPages: 8192, vacuum: false))
        var clock = ContinuousClock.now
        let report = try await retention.prune(now: Timestamp(millis: end))
        let pruneSeconds = (ContinuousClock.now - clock).seconds
        clock = ContinuousClock.now
        let pages = try await retention.vacuum()
        let vacuumSeconds = (ContinuousClock.now - clock).seconds
        print("")
        print("| step | time | what |")
        print("|---|---:|---|")
        print(
            "| delete | \(String(format: "%.1f", pruneSeconds)) s | \(report.tasks.formatted()) tasks (\(Int(Double(report.tasks) / pruneSeconds).formatted())/s), "
                + "\(report.events.formatted()) events, \(report.transactions.formatted()) transactions |")
        print("| incremental_vacuum | \(String(format: "%.1f", vacuumSeconds)) s | \(pages.formatted()) pages (\(mib(Int64(pages) * 4096))) |")
        try checkpoint()
        print("")
        printSizes("after pruning and vacuum")

        print("")
        print("## Queries after pruning")
        print("")
        printQueryTable(try await measureQueries(reader, QuerySet(ids: try sampleIDs(1000), start: end - config.spanMs / 2, end: end)))
    }

    // MARK: Queries

    func measureQueries(_ reader: TaskLogReader, _ queries: QuerySet) async throws -> [QueryResult] {
        var results: [QueryResult] = []
        var rng = SplitMix(seed: 42)
        for q in queries.all {
            for _ in 0..<10 { _ = try await q.run(reader, &rng) }
            var times: [Double] = []
            var rows = 0
            for _ in 0..<config.iterations {
                let t0 = ContinuousClock.now
                rows += try await q.run(reader, &rng)
                times.append((ContinuousClock.now - t0).seconds)
            }
            results.append(QueryResult(name: q.name, latency: Percentiles(times), rows: Double(rows) / Double(config.iterations)))
        }
        return results
    }

    func printQueryTable(_ results: [QueryResult], title: String = "query") {
        print("| \(title) | p50 | p99 | max | rows |")
        print("|---|---:|---:|---:|---:|")
        for r in results {
            print(
                "| \(r.name) | \(ms(r.latency.p50)) | \(ms(r.latency.p99)) | \(ms(r.latency.max)) | \(r.rows < 10 ? String(format: "%.1f", r.rows) : String(Int(r.rows))) |"
            )
        }
    }

    // MARK: Ingest

    struct IngestResult {
        var events = 0
        var seconds = 0.0
        var eventsPerSecond: Double { Double(events) / seconds }
        var commit = Percentiles([])
        var batchMean = 0.0
        var flush = Percentiles([])
        var checkpoints = Percentiles([])
        var maxWAL: Int64 = 0
        var queries: [QueryResult] = []
        var pruned = 0
        var prunedPerSecond: Double { Double(pruned) / seconds }
        var dropped: UInt64 = 0
        /// Bytes this process wrote to files meanwhile (WAL frames and checkpoints).
        var bytesWritten: Int64 = 0
        /// Times the writer waited for a checkpoint to let the WAL start over (seconds each).
        var yields: [Double] = []
        /// CPU seconds of the writer thread and the checkpoint thread.
        var writerCPU = 0.0
        var checkpointCPU = 0.0
    }

    /// CPU seconds (user + system) of this process's threads that carry `name`, by thread id.
    static func threadCPU(_ name: String) -> [String: Double] {
        var out: [String: Double] = [:]
        let ticks = Double(sysconf(Int32(_SC_CLK_TCK)))
        for tid in (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task")) ?? [] {
            guard let stat = try? String(contentsOfFile: "/proc/self/task/\(tid)/stat", encoding: .utf8),
                let open = stat.firstIndex(of: "("), let close = stat.lastIndex(of: ")"),
                stat[stat.index(after: open)..<close] == name
            else { continue }
            let fields = stat[stat.index(close, offsetBy: 2)...].split(separator: " ")
            guard fields.count > 13, let user = Double(fields[11]), let system = Double(fields[12]) else { continue }
            out[tid] = (user + system) / ticks
        }
        return out
    }

    /// CPU seconds the threads named `name` spent since `before` (threads that ended meanwhile are not counted).
    static func cpuSince(_ before: [String: Double], _ name: String) -> Double {
        threadCPU(name).reduce(0) { $0 + $1.value - (before[$1.key] ?? 0) }
    }

    /// `wchar` of /proc/self/io: bytes passed to write calls.
    static func bytesWritten() -> Int64 {
        guard let text = try? String(contentsOfFile: "/proc/self/io", encoding: .utf8) else { return 0 }
        for line in text.split(separator: "\n") where line.hasPrefix("wchar:") {
            return Int64(line.dropFirst(6).trimmingCharacters(in: .whitespaces)) ?? 0
        }
        return 0
    }

    func printIngest(_ r: IngestResult) {
        print(
            "| events | time | events/s | writer CPU per event | ⇒ events/s per core | checkpoint CPU per event | batch commit p50 | p99 | mean batch | checkpoints | checkpoint p50 / p99 | writer waited for them | WAL max | written per event | dropped |"
        )
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        let perEvent = r.writerCPU / Double(max(1, r.events))
        print(
            "| \(r.events.formatted()) | \(String(format: "%.1f", r.seconds)) s | \(Int(r.eventsPerSecond).formatted()) | "
                + "\(String(format: "%.1f µs", perEvent * 1e6)) | \(Int(1 / max(perEvent, 1e-9)).formatted()) | "
                + "\(String(format: "%.1f µs", r.checkpointCPU / Double(max(1, r.events)) * 1e6)) | \(ms(r.commit.p50)) | "
                + "\(ms(r.commit.p99)) | \(Int(r.batchMean)) | \(r.checkpoints.count) | \(ms(r.checkpoints.p50)) / \(ms(r.checkpoints.p99)) | \(r.yields.count)× \(ms(r.yields.reduce(0, +))) | \(mib(r.maxWAL)) | \(r.bytesWritten / Int64(max(1, r.events))) B | \(r.dropped) |"
        )
        print("")
    }

    /// New tasks for `config.seconds`: each task's three events go in apart (its `running` 1,000 tasks later, its
    /// outcome 2,000 later), so they land in different batches and each task costs an insert and two updates, as
    /// when tasks take a while. `pace` nil: as fast as the writer takes them (the bounded queue pushes back).
    func ingest(reader: TaskLogReader, queries: QuerySet, pace: Int?, prune: Bool, queriesRun: Bool = true) async throws -> IngestResult {
        let writer = try TaskLogWriter(path: config.path)
        capture.reset()
        let writtenBefore = Self.bytesWritten()
        let writerBefore = Self.threadCPU("tasklog-writer")
        let checkpointBefore = Self.threadCPU("tasklog-ckpt")
        let stop = Shared(false)
        let produced = Shared(-1)
        let seconds = config.seconds
        let t0 = ContinuousClock.now
        let producer = Thread {
            var rng = SplitMix(seed: UInt64(Timestamp.now().millis))
            var ring: [(String, Fn)] = []
            ring.reserveCapacity(2001)
            var count = 0
            let began = ContinuousClock.now
            while !stop.value {
                let fn = Fn.all[Fn.pick(&rng)]
                let id = TaskID.make()
                ring.append((id, fn))
                writer.record(
                    TaskEvent(
                        taskID: id, kind: fn.mode == .sync ? .pending : .queued, function: fn.name, pool: fn.pool,
                        mode: fn.mode, args: #"{"x":\#(count),"label":"bench"}"#))
                if ring.count > 1000 {
                    let (rid, rfn) = ring[ring.count - 1001]
                    writer.record(
                        TaskEvent(
                            taskID: rid, kind: .running, function: rfn.name, pool: rfn.pool, mode: rfn.mode,
                            workerID: "bench-1", attempt: 1))
                }
                if ring.count > 2000 {
                    let (rid, rfn) = ring.removeFirst()
                    writer.record(
                        TaskEvent(
                            taskID: rid, kind: .completed, function: rfn.name, pool: rfn.pool, mode: rfn.mode,
                            workerID: "bench-1", attempt: 1, result: #"{"ok":true}"#, durationMs: 12))
                }
                count += 1
                let events = count * 3
                if let pace, events % 30 == 0 {
                    let due = Double(events) / Double(pace)
                    let now = (ContinuousClock.now - began).seconds
                    if due > now { usleep(UInt32((due - now) * 1_000_000)) }
                }
            }
            produced.value = count + max(0, count - 1000) + max(0, count - 2000)
        }
        producer.start()
        // While it runs: a reader loops over the list queries, a caller waits for its own commits, the files are sampled.
        let maxWAL = Shared<Int64>(0)
        let path = config.path
        let sampler = Thread {
            while !stop.value {
                let wal = TaskLogFiles.sizes(path: path).walBytes
                if wal > maxWAL.value { maxWAL.value = wal }
                usleep(10_000)
            }
        }
        sampler.start()
        async let flushes: [Double] = {
            var times: [Double] = []
            while !stop.value {
                let id = TaskID.make()
                let t = ContinuousClock.now
                writer.record(TaskEvent(taskID: id, kind: .completed, function: "echo", pool: "fast", mode: .sync, attempt: 1))
                await writer.flush()
                times.append((ContinuousClock.now - t).seconds)
                try? await Task.sleep(for: .milliseconds(20))
            }
            return times
        }()
        async let queried: [QueryResult] = {
            guard pace == nil && queriesRun else { return [] }
            var rng = SplitMix(seed: 7)
            var times: [String: [Double]] = [:]
            var rows: [String: Int] = [:]
            let list = queries.underIngest
            var i = 0
            while !stop.value {
                let q = list[i % list.count]
                i += 1
                let t = ContinuousClock.now
                rows[q.name, default: 0] += (try? await q.run(reader, &rng)) ?? 0
                times[q.name, default: []].append((ContinuousClock.now - t).seconds)
            }
            return list.map { q in
                let ts = times[q.name] ?? []
                return QueryResult(
                    name: q.name + " (\(ts.count) runs)", latency: Percentiles(ts), rows: Double(rows[q.name] ?? 0) / Double(max(1, ts.count)))
            }
        }()
        async let pruned: Int = { [config, end] in
            guard prune else { return 0 }
            let retention = try? TaskLogRetention(path: config.path, configuration: .init(retention: .milliseconds(config.spanMs / 2), vacuum: false))
            let task = Task { try await retention?.prune(now: Timestamp(millis: end)) }
            while !stop.value { try? await Task.sleep(for: .milliseconds(20)) }
            task.cancel()
            _ = try? await task.value
            return capture.counter("neutrino_tasklog_pruned_tasks_total")
        }()
        try await Task.sleep(for: .seconds(seconds))
        stop.value = true
        await writer.flush()
        let elapsed = (ContinuousClock.now - t0).seconds
        var result = IngestResult()
        result.queries = await queried
        result.flush = Percentiles(await flushes)
        result.pruned = await pruned
        // The producer sets its count once it has seen `stop`; flush again for what it recorded last.
        while produced.value < 0 { usleep(1000) }
        await writer.flush()
        result.events = produced.value + result.flush.count
        result.seconds = elapsed
        result.commit = Percentiles(capture.timer("neutrino_tasklog_write_seconds"))
        let batches = capture.timer("neutrino_tasklog_batch_size")
        result.batchMean = batches.isEmpty ? 0 : batches.reduce(0, +) / Double(batches.count) * 1e9
        result.checkpoints = Percentiles(capture.timer("neutrino_tasklog_checkpoint_seconds"))
        result.yields = capture.timer("neutrino_tasklog_checkpoint_yield_seconds")
        result.maxWAL = maxWAL.value
        result.dropped = writer.droppedEventCount
        // Read before close: the threads end with it, and their time leaves /proc with them.
        result.writerCPU = Self.cpuSince(writerBefore, "tasklog-writer")
        result.checkpointCPU = Self.cpuSince(checkpointBefore, "tasklog-ckpt")
        await writer.close()
        result.bytesWritten = Self.bytesWritten() - writtenBefore
        return result
    }

    // MARK: Files

    func sampleIDs(_ n: Int) throws -> [String] {
        let db = try RawDB(path: config.path)
        let maxRow = try db.int("SELECT MAX(rowid) FROM tasks")
        var rng = SplitMix(seed: 1)
        var ids: [String] = []
        let stmt = try db.prepare("SELECT id FROM tasks WHERE rowid = ?1")
        while ids.count < n {
            sqlite3_bind_int64(stmt, 1, Int64(1 + rng.next() % UInt64(max(1, maxRow))))
            if sqlite3_step(stmt) == SQLITE_ROW, let text = sqlite3_column_text(stmt, 0) { ids.append(String(cString: text)) }
            sqlite3_reset(stmt)
        }
        sqlite3_finalize(stmt)
        return ids
    }

    func checkpoint() throws {
        try RawDB(path: config.path).exec("PRAGMA wal_checkpoint(TRUNCATE)")
    }

    func printSizes(_ when: String) {
        let sizes = TaskLogFiles.sizes(path: config.path)
        let counts = (try? RawDB(path: config.path)).flatMap { db in
            try? (
                db.int("SELECT SUM(n) FROM task_groups"), db.int("SELECT MAX(id) - MIN(id) + 1 FROM task_events"),
                db.int("PRAGMA freelist_count"), db.int("PRAGMA page_size")
            )
        }
        let tasks = counts?.0 ?? 0
        let perMillion = tasks > 0 ? mib(Int64(Double(sizes.databaseBytes) / Double(tasks) * 1_000_000)) : "-"
        print(
            "- \(when): \(tasks.formatted()) tasks; file \(mib(sizes.databaseBytes)) (\(perMillion) per million tasks), "
                + "WAL \(mib(sizes.walBytes)), free pages \((counts?.2 ?? 0).formatted())")
    }
}

// MARK: - The queries

struct Query: Sendable {
    var name: String
    var run: @Sendable (TaskLogReader, inout SplitMix) async throws -> Int
}

struct QueryResult {
    var name: String
    var latency: Percentiles
    var rows: Double
}

struct QuerySet {
    var all: [Query] = []
    var underIngest: [Query] = []

    init(ids: [String], start: Int64, end: Int64) {
        @Sendable func id(_ rng: inout SplitMix) -> String { ids[Int(rng.next() % UInt64(ids.count))] }
        @Sendable func hourWindow(_ rng: inout SplitMix) -> (Timestamp, Timestamp) {
            let from = start + Int64(rng.next() % UInt64(max(1, end - start - 3_600_000)))
            return (Timestamp(millis: from), Timestamp(millis: from + 3_600_000))
        }
        func list(_ name: String, _ make: @escaping @Sendable (inout SplitMix) -> TaskListFilter) -> Query {
            Query(name: name) { reader, rng in try await reader.list(make(&rng)).count }
        }
        let oldest = ids.min() ?? ""
        all = [
            Query(name: "`GET /tasks/<id>` (record + events, random ids)") { reader, rng in
                try await reader.recordWithEvents(id: id(&rng)) == nil ? 0 : 1
            },
            Query(name: "record only (random ids)") { reader, rng in try await reader.record(id: id(&rng)) == nil ? 0 : 1 },
            list("`GET /tasks?limit=50` (newest)") { _ in TaskListFilter() },
            list("`?limit=500` (newest)") { _ in TaskListFilter(limit: 500) },
            list("`?before=<random id>`") { rng in TaskListFilter(before: id(&rng)) },
            list("`?before=<oldest sampled id>` (deepest page)") { _ in TaskListFilter(before: oldest) },
            list("`?status=failed` (7 %)") { _ in TaskListFilter(status: .failed) },
            list("`?status=failed&before=<random id>`") { rng in TaskListFilter(status: .failed, before: id(&rng)) },
            list("`?status=cancelled` (3 %)") { _ in TaskListFilter(status: .cancelled) },
            list("`?status=queued`") { _ in TaskListFilter(status: .queued) },
            list("`?function=boom` (12.5 %)") { _ in TaskListFilter(function: "boom") },
            list("`?pool=gpu`") { _ in TaskListFilter(pool: "gpu") },
            list("`?mode=async&before=<random id>`") { rng in TaskListFilter(mode: .async, before: id(&rng)) },
            list("`?status=cancelled&function=crunch`") { _ in TaskListFilter(status: .cancelled, function: "crunch") },
            list("`?status=failed&function=train_model&pool=gpu&mode=gpu`") { _ in
                TaskListFilter(status: .failed, function: "train_model", pool: "gpu", mode: .gpu)
            },
            list("`?status=timed_out&function=send_email` (rare: 0.05 %)") { _ in TaskListFilter(status: .timedOut, function: "send_email") },
            list("`?status=failed&pool=fast&mode=gpu` (matches nothing)") { _ in TaskListFilter(status: .failed, pool: "fast", mode: .gpu) },
            list("`?since&until` (random 1-hour window)") { rng in
                let (a, b) = hourWindow(&rng)
                return TaskListFilter(since: a, until: b)
            },
            list("`?since&until&status=failed`") { rng in
                let (a, b) = hourWindow(&rng)
                return TaskListFilter(status: .failed, since: a, until: b)
            },
            list("`?since&until&function=crunch&before=<id>`") { rng in
                let (a, b) = hourWindow(&rng)
                return TaskListFilter(function: "crunch", since: a, until: b, before: TaskIDPrefix.of(millis: b.millis - 600_000))
            },
            list("`?q=re` (2 of 8 names)") { _ in TaskListFilter(nameContains: "re") },
            list("`?q=e&status=failed` (6 of 8 names)") { _ in TaskListFilter(status: .failed, nameContains: "e") },
            list("`?q=zzz` (no name)") { _ in TaskListFilter(nameContains: "zzz") },
            list("every filter at once") { rng in
                let (a, b) = hourWindow(&rng)
                return TaskListFilter(
                    status: .completed, function: "train_model", pool: "gpu", mode: .gpu, since: a, until: b,
                    nameContains: "train", before: id(&rng))
            },
            Query(name: "`GET /pools` (poolStats, last minute)") { reader, _ in
                try await reader.poolStats(since: Timestamp(millis: Timestamp.now().millis - 60_000)).count
            },
            Query(name: "SSE backlog: `events(afterID: last − 1000)`") { reader, _ in
                let last = try await reader.lastEventID()
                return try await reader.events(afterID: max(0, last - 1000), limit: 1000).count
            },
            Query(name: "SSE backlog from a random old event (1,000)") { reader, rng in
                let last = try await reader.lastEventID()
                return try await reader.events(afterID: Int64(rng.next() % UInt64(max(1, last))), limit: 1000).count
            },
            Query(name: "`lastEventID()`") { reader, _ in Int(try await reader.lastEventID() > 0 ? 1 : 0) },
            Query(name: "`terminal(among:)` 100 random ids") { reader, rng in
                try await reader.terminal(among: (0..<100).map { _ in id(&rng) }).count
            },
        ]
        let wanted = [
            "`GET /tasks/<id>` (record + events, random ids)", "`GET /tasks?limit=50` (newest)", "`?status=failed` (7 %)",
            "`?function=boom` (12.5 %)", "`?status=cancelled&function=crunch`", "`?since&until` (random 1-hour window)",
            "`?q=re` (2 of 8 names)", "`GET /pools` (poolStats, last minute)", "SSE backlog: `events(afterID: last − 1000)`",
        ]
        underIngest = all.filter { wanted.contains($0.name) }
    }
}

/// The id text every UUIDv7 made at `millis` or later sorts at or above.
enum TaskIDPrefix {
    static func of(millis: Int64) -> String {
        var hex = String(UInt64(max(0, millis)), radix: 16)
        if hex.count < 12 { hex = String(repeating: "0", count: 12 - hex.count) + hex }
        return String(hex.prefix(8)) + "-" + String(hex.suffix(4))
    }
}

/// A value several threads read and write.
final class Shared<T: Sendable>: Sendable {
    private let mutex: Mutex<T>
    init(_ value: T) { mutex = Mutex(value) }
    var value: T {
        get { mutex.withLock { $0 } }
        set { mutex.withLock { $0 = newValue } }
    }
}

// MARK: - Figures

struct Percentiles {
    var count: Int
    var p50: Double
    var p99: Double
    var max: Double

    init(_ values: [Double]) {
        let sorted = values.sorted()
        count = sorted.count
        func rank(_ p: Double) -> Double {
            sorted.isEmpty ? 0 : sorted[Swift.min(sorted.count - 1, Swift.max(0, Int((p * Double(sorted.count)).rounded(.up)) - 1))]
        }
        p50 = rank(0.5)
        p99 = rank(0.99)
        max = sorted.last ?? 0
    }
}

func ms(_ seconds: Double) -> String {
    let v = seconds * 1000
    return v < 10 ? String(format: "%.2f ms", v) : String(format: "%.0f ms", v)
}

func mib(_ bytes: Int64) -> String {
    bytes >= 1 << 30 ? String(format: "%.2f GiB", Double(bytes) / Double(1 << 30)) : String(format: "%.1f MiB", Double(bytes) / Double(1 << 20))
}

extension Duration {
    var seconds: Double { Double(components.seconds) + Double(components.attoseconds) / 1e18 }
}

// MARK: - Metrics captured from the writer and retention

let capture = Capture()

final class Capture: MetricsFactory, Sendable {
    private let state = Mutex<(timers: [String: [Double]], counters: [String: Int])>(([:], [:]))

    func reset() { state.withLock { $0 = ([:], [:]) } }
    func drain(_ label: String) -> [Double] { state.withLock { $0.timers.removeValue(forKey: label) ?? [] } }
    func timer(_ label: String) -> [Double] { state.withLock { $0.timers[label] ?? [] } }
    func counter(_ label: String) -> Int { state.withLock { $0.counters[label] ?? 0 } }
    func add(_ label: String, _ seconds: Double) { state.withLock { $0.timers[label, default: []].append(seconds) } }
    func count(_ label: String, _ by: Int) { state.withLock { $0.counters[label, default: 0] += by } }

    func makeCounter(label: String, dimensions: [(String, String)]) -> any CounterHandler { Handler(label, self) }
    func makeRecorder(label: String, dimensions: [(String, String)], aggregate: Bool) -> any RecorderHandler { Handler(label, self) }
    func makeTimer(label: String, dimensions: [(String, String)]) -> any TimerHandler { Handler(label, self) }
    func destroyCounter(_ handler: any CounterHandler) {}
    func destroyRecorder(_ handler: any RecorderHandler) {}
    func destroyTimer(_ handler: any TimerHandler) {}

    /// Timers keep every value in seconds; recorders (batch sizes, gauges) too, as value × 1e-9.
    final class Handler: CounterHandler, RecorderHandler, TimerHandler, Sendable {
        let label: String
        let capture: Capture
        init(_ label: String, _ capture: Capture) { self.label = label; self.capture = capture }
        func increment(by: Int64) { capture.count(label, Int(by)) }
        func reset() {}
        func record(_ value: Int64) { capture.add(label, Double(value) / 1e9) }
        func record(_ value: Double) { capture.add(label, value / 1e9) }
        func recordNanoseconds(_ duration: Int64) { capture.add(label, Double(duration) / 1e9) }
    }
}

// MARK: - Raw SQLite for generation and sampling

final class RawDB {
    let handle: OpaquePointer

    init(path: String) throws {
        var db: OpaquePointer?
        guard sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, nil) == SQLITE_OK, let db else {
            throw BenchError("cannot open \(path)")
        }
        handle = db
        sqlite3_busy_timeout(db, 10_000)
    }

    deinit { sqlite3_close_v2(handle) }

    func exec(_ sql: String) throws {
        var err: UnsafeMutablePointer<CChar>?
        if sqlite3_exec(handle, sql, nil, nil, &err) != SQLITE_OK {
            let message = err.map { String(cString: $0) } ?? "?"
            sqlite3_free(err)
            throw BenchError("\(sql): \(message)")
        }
    }

    func prepare(_ sql: String) throws -> OpaquePointer {
        var stmt: OpaquePointer?
        guard sqlite3_prepare_v2(handle, sql, -1, &stmt, nil) == SQLITE_OK, let stmt else {
            throw BenchError("\(sql): \(String(cString: sqlite3_errmsg(handle)))")
        }
        return stmt
    }

    func int(_ sql: String) throws -> Int {
        let stmt = try prepare(sql)
        defer { sqlite3_finalize(stmt) }
        return sqlite3_step(stmt) == SQLITE_ROW ? Int(sqlite3_column_int64(stmt, 0)) : 0
    }
}

struct BenchError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// A small deterministic generator.
struct SplitMix: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
