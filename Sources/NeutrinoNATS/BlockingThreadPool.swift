import CNats
import Glibc
import NeutrinoThreads

/// A fixed set of dedicated OS threads with a FIFO job queue, for the cnats calls that block (requests to the
/// JetStream API, `Fetch`, `AckSync`). They never run on Swift's cooperative pool or on NIO event loops.
///
/// `run` suspends the caller until its job has run on one of the threads. `shutdown()` stops taking jobs; jobs
/// already queued still run, then the threads call `nats_ReleaseThreadMemory()` and exit. Dropping the last
/// reference to the pool shuts it down.
final class BlockingThreadPool: Sendable {
    private final class State: @unchecked Sendable {
        let lock = PThreadLock()
        let workAvailable = PThreadLock.Condition()
        var queue: [@Sendable () -> Void] = []
        var head = 0
        var stopping = false
        var running = 0
    }

    private let state = State()
    let name: String
    let threadCount: Int

    /// Starts `threads` threads; throws when the system refuses a thread (those already started exit again).
    init(name: String, threads: Int) throws {
        self.name = name
        self.threadCount = max(1, threads)
        for i in 0..<threadCount {
            let state = self.state
            let rc = startThread(name: threadCount == 1 ? name : "\(name)-\(i)") { Self.loop(state) }
            if rc != 0 {
                shutdown()
                throw NATSError.local("pthread_create", "cannot start thread \(i) of '\(name)': \(String(cString: strerror(rc)))")
            }
        }
    }

    deinit { shutdown() }

    /// Stops taking new jobs; queued jobs still run.
    func shutdown() {
        state.lock.withLock {
            state.stopping = true
            state.workAvailable.broadcast()
        }
    }

    /// Threads still alive (they exit after `shutdown()` once the queue is empty).
    var liveThreads: Int { state.lock.withLock { state.running } }

    /// Queues `job`; false when the pool is shut down (the job was not queued).
    @discardableResult
    func submit(_ job: @escaping @Sendable () -> Void) -> Bool {
        state.lock.withLock {
            guard !state.stopping else { return false }
            state.queue.append(job)
            state.workAvailable.signal()
            return true
        }
    }

    /// Runs `body` on one of the pool's threads and returns its result.
    func run<T: Sendable>(_ operation: String, _ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, any Error>) in
            let queued = submit {
                do { continuation.resume(returning: try body()) } catch { continuation.resume(throwing: error) }
            }
            if !queued { continuation.resume(throwing: NATSError.closed(operation, "the blocking thread pool '\(name)' is shut down")) }
        }
    }

    private static func loop(_ state: State) {
        state.lock.withLock { state.running += 1 }
        while true {
            state.lock.lock()
            while state.head == state.queue.count && !state.stopping { state.lock.wait(state.workAvailable) }
            if state.head == state.queue.count {
                state.running -= 1
                state.lock.unlock()
                break
            }
            let job = state.queue[state.head]
            state.head += 1
            if state.head == state.queue.count {
                state.queue.removeAll(keepingCapacity: true)
                state.head = 0
            } else if state.head > 1024 && state.head * 2 > state.queue.count {
                state.queue.removeFirst(state.head)
                state.head = 0
            }
            state.lock.unlock()
            job()
        }
        // cnats keeps per-thread state (the last-error text); free it before the thread goes away.
        nats_ReleaseThreadMemory()
    }
}

/// Runs `body` on a new OS thread of its own (for a rare call that must not wait behind a busy pool, such as
/// closing the connection) and returns its result.
func runOnNewThread<T: Sendable>(_ operation: String, _ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, any Error>) in
        let rc = startThread(name: operation) {
            do { continuation.resume(returning: try body()) } catch { continuation.resume(throwing: error) }
            nats_ReleaseThreadMemory()
        }
        if rc != 0 {
            continuation.resume(throwing: NATSError.local(operation, "cannot start a thread: \(String(cString: strerror(rc)))"))
        }
    }
}
