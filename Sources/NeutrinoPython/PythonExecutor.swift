import CPython
import Glibc
import NeutrinoCore
import NeutrinoThreads

/// How one call into Python ended.
public enum PythonOutcome: Sendable {
    /// The task returned; `result` is its JSON text.
    case completed(result: [UInt8], durationMs: Double)
    /// The task raised (or could not be called); `error` is JSON `{"type","message","traceback"}`.
    case failed(error: [UInt8], durationMs: Double)
    /// The task ran past its timeout; the caller is answered at the deadline, the thread is interrupted.
    case timedOut(durationMs: Double)
    /// `cancel(tag:)` stopped it (or it never started): the caller is answered at once, the thread is interrupted.
    case cancelled(durationMs: Double)
    /// Not run: the queue is full or the executor is stopping.
    case rejected(reason: String)
}

/// Runs Python on `threads` dedicated OS threads, never on NIO event loops or Swift's cooperative pool.
///
/// Each thread keeps its own Python thread state and takes the GIL only for the call itself
/// (`PyEval_RestoreThread` / `PyEval_SaveThread`). A watchdog thread enforces timeouts: at the deadline it answers
/// the caller with `.timedOut` and raises `TimeoutError` in the task's thread with `PyThreadState_SetAsyncExc`, so a
/// pure-Python loop stops at once and blocking C calls (`time.sleep`) stop when they return to the interpreter.
/// Cancellation (`cancel(tag:)`) works the same way with `neutrino._runtime.CancelledByRequest`.
public final class PythonExecutor: Sendable {
    private final class Job: @unchecked Sendable {
        enum Phase { case queued, running(UInt), done, interrupted }
        let task: String
        let tag: String?
        let payload: [UInt8]
        let timeoutNanos: UInt64
        let onStart: @Sendable () -> Void
        var continuation: CheckedContinuation<PythonOutcome, Never>?
        var phase: Phase = .queued
        var startNanos: UInt64 = 0

        init(task: String, tag: String?, payload: [UInt8], timeoutMs: Int, onStart: @escaping @Sendable () -> Void) {
            self.task = task
            self.tag = tag
            self.payload = payload
            self.timeoutNanos = UInt64(max(1, timeoutMs)) * 1_000_000
            self.onStart = onStart
        }

        var deadline: UInt64 { startNanos + timeoutNanos }
    }

    private final class State: @unchecked Sendable {
        var queue: [Job] = []
        var queueHead = 0
        var running: [ObjectIdentifier: Job] = [:]
        var stopping = false
        var busy = 0
        var stuck = 0
        var cancelRequests: [Job] = []
    }

    private let runtime: PythonRuntime
    private let lock = ConditionLock()
    private let workAvailable = ConditionLock.Condition()
    private let watchdogWake = ConditionLock.Condition()
    private let state = State()
    public let threadCount: Int
    public let maxQueued: Int

    public init(runtime: PythonRuntime, threads: Int, maxQueued: Int = 1024) {
        self.runtime = runtime
        self.threadCount = max(1, threads)
        self.maxQueued = maxQueued
        for i in 0..<threadCount {
            let rc = startThread(name: "neutrino-py-\(i)", stackBytes: 16 << 20) { [self] in self.workerLoop() }
            precondition(rc == 0, "cannot start Python thread \(i): pthread_create returned \(rc)")
        }
        let rc = startThread(name: "neutrino-py-wd") { [self] in self.watchdogLoop() }
        precondition(rc == 0, "cannot start the timeout watchdog: pthread_create returned \(rc)")
    }

    /// Tasks running now, and tasks queued behind them.
    public var load: (busy: Int, queued: Int, stuck: Int) {
        lock.withLock { (state.busy, state.queue.count - state.queueHead, state.stuck) }
    }

    /// Runs `task` with `payload` (JSON `{"args":…,"task_id":…}`) and returns how it ended. `onStart` runs on the
    /// Python thread just before the call (to record `running` at the moment it starts).
    /// `tag` (the task id) lets `cancel(tag:)` find the call.
    public func run(task: String, tag: String? = nil, payload: [UInt8], timeoutMs: Int,
                    onStart: @escaping @Sendable () -> Void = {}) async -> PythonOutcome {
        let job = Job(task: task, tag: tag, payload: payload, timeoutMs: timeoutMs, onStart: onStart)
        return await withCheckedContinuation { continuation in
            lock.lock()
            if state.stopping || state.queue.count - state.queueHead >= maxQueued {
                let reason = state.stopping ? "the worker is shutting down" : "the worker's queue is full (\(maxQueued) waiting)"
                lock.unlock()
                continuation.resume(returning: .rejected(reason: reason))
                return
            }
            job.continuation = continuation
            state.queue.append(job)
            workAvailable.signal()
            lock.unlock()
        }
    }

    /// Stops taking work; queued jobs are rejected, running ones finish.
    public func shutdown() {
        lock.lock()
        state.stopping = true
        let queued = state.queue[state.queueHead...]
        state.queue.removeAll()
        state.queueHead = 0
        workAvailable.broadcast()
        watchdogWake.signal()
        lock.unlock()
        for job in queued { finish(job, .rejected(reason: "the worker is shutting down")) }
    }

    /// Answers every running call `.rejected` without waiting for Python (their threads run on until the process
    /// exits). For a drain whose grace period ran out: the callers hand their tasks back to the queue.
    public func abandonRunning(reason: String) {
        let running = lock.withLock { Array(state.running.values) }
        for job in running { finish(job, .rejected(reason: reason)) }
    }

    private func finish(_ job: Job, _ outcome: PythonOutcome) {
        let continuation = lock.withLock { () -> CheckedContinuation<PythonOutcome, Never>? in
            defer { job.continuation = nil }
            return job.continuation
        }
        continuation?.resume(returning: outcome)
    }

    private func workerLoop() {
        let gil = PyGILState_Ensure()
        _ = gil
        let ident = PyThread_get_thread_ident()
        guard let threadState = PyEval_SaveThread() else { return }
        while true {
            lock.lock()
            while state.queueHead == state.queue.count && !state.stopping { lock.wait(workAvailable) }
            if state.queueHead == state.queue.count {
                lock.unlock()
                return
            }
            let job = state.queue[state.queueHead]
            state.queueHead += 1
            if state.queueHead > 1024 && state.queueHead * 2 > state.queue.count {
                state.queue.removeFirst(state.queueHead)
                state.queueHead = 0
            }
            job.phase = .running(ident)
            job.startNanos = monotonicNanos()
            state.running[ObjectIdentifier(job)] = job
            state.busy += 1
            watchdogWake.signal()
            lock.unlock()

            job.onStart()
            PyEval_RestoreThread(threadState)
            let outcome = call(job)
            // Still holding the GIL: the watchdog cannot be between its check and its SetAsyncExc now.
            let timedOut = lock.withLock { () -> Bool in
                let wasTimedOut: Bool
                if case .interrupted = job.phase { wasTimedOut = true; state.stuck -= 1 } else { wasTimedOut = false }
                job.phase = .done
                state.running[ObjectIdentifier(job)] = nil
                state.busy -= 1
                return wasTimedOut
            }
            if timedOut {
                // Clear a TimeoutError that was injected but not raised yet, so it cannot hit the next task.
                PyThreadState_SetAsyncExc(ident, nil)
            }
            _ = PyEval_SaveThread()
            finish(job, outcome)
        }
    }

    private func watchdogLoop() {
        _ = PyGILState_Ensure()
        guard let threadState = PyEval_SaveThread() else { return }
        while true {
            lock.lock()
            if state.stopping && state.running.isEmpty {
                lock.unlock()
                return
            }
            let now = monotonicNanos()
            var expired: [Job] = []
            var next: UInt64?
            for job in state.running.values {
                guard case .running = job.phase else { continue }
                if job.deadline <= now { expired.append(job) } else { next = min(next ?? .max, job.deadline) }
            }
            let cancels = state.cancelRequests
            state.cancelRequests.removeAll()
            if expired.isEmpty && cancels.isEmpty {
                lock.wait(watchdogWake, untilNanos: next ?? now + 1_000_000_000)
                lock.unlock()
                continue
            }
            lock.unlock()
            PyEval_RestoreThread(threadState)
            for job in expired where interrupt(job, with: neutrino_py_timeout_error()) {
                finish(job, .timedOut(durationMs: Double(monotonicNanos() - job.startNanos) / 1e6))
            }
            for job in cancels where interrupt(job, with: runtime.cancelClass.pointer) {
                finish(job, .cancelled(durationMs: Double(monotonicNanos() - job.startNanos) / 1e6))
            }
            _ = PyEval_SaveThread()
        }
    }

    /// Raises `exception` in `job`'s thread if it is still running it (GIL held by the caller).
    private func interrupt(_ job: Job, with exception: UnsafeMutablePointer<PyObject>?) -> Bool {
        lock.withLock { () -> Bool in
            guard case .running(let ident) = job.phase else { return false }
            PyThreadState_SetAsyncExc(ident, exception)
            job.phase = .interrupted
            state.stuck += 1
            return true
        }
    }

    /// Cancels the call tagged `tag`: a queued one is dropped, a running one gets `CancelledByRequest` raised in its
    /// thread. Either way its caller is answered `.cancelled` at once. False when no such call is here.
    @discardableResult
    public func cancel(tag: String) -> Bool {
        let queued = lock.withLock { () -> Job? in
            guard let i = state.queue[state.queueHead...].firstIndex(where: { $0.tag == tag }) else { return nil }
            let job = state.queue.remove(at: i)
            job.phase = .done
            return job
        }
        if let queued {
            finish(queued, .cancelled(durationMs: 0))
            return true
        }
        // The interrupt needs the GIL: leave it to the watchdog thread, never block the caller's thread on it.
        return lock.withLock { () -> Bool in
            guard let running = state.running.values.first(where: { $0.tag == tag }) else { return false }
            state.cancelRequests.append(running)
            watchdogWake.signal()
            return true
        }
    }

    /// One call into `neutrino._runtime.invoke` (GIL held).
    private func call(_ job: Job) -> PythonOutcome {
        func elapsed() -> Double { Double(monotonicNanos() - job.startNanos) / 1e6 }
        guard let name = runtime.taskNames[job.task] else {
            return .failed(error: JSONWriter.taskError(type: APIError.unknownTask.type, message: "no task named '\(job.task)' in this app", traceback: nil),
                           durationMs: elapsed())
        }
        let payload = job.payload.withUnsafeBytes { raw in
            PyBytes_FromStringAndSize(raw.baseAddress?.assumingMemoryBound(to: CChar.self), Py_ssize_t(raw.count))
        }
        guard let payload, let args = PyTuple_New(2) else {
            PyErr_Clear()
            return .failed(error: JSONWriter.taskError(type: APIError.memoryError.type, message: "cannot build the call", traceback: nil), durationMs: elapsed())
        }
        Py_IncRef(name.pointer)
        PyTuple_SetItem(args, 0, name.pointer)
        PyTuple_SetItem(args, 1, payload)
        let result = PyObject_CallObject(runtime.invoke.pointer, args)
        Py_DecRef(args)
        if let result {
            defer { Py_DecRef(result) }
            if let bytes = PythonRuntime.bytes(of: result) { return .completed(result: bytes, durationMs: elapsed()) }
            return .failed(error: JSONWriter.taskError(type: APIError.resultNotSerializable.type, message: "the runtime returned no bytes", traceback: nil),
                           durationMs: elapsed())
        }
        let (type, value, traceback) = PythonRuntime.fetchError()
        defer { [type, value, traceback].forEach { Py_DecRef($0) } }
        if let value, PyObject_IsInstance(value, runtime.taskErrorClass.pointer) == 1,
           let payloadObject = PyObject_GetAttrString(value, "payload") {
            defer { Py_DecRef(payloadObject) }
            if let bytes = PythonRuntime.bytes(of: payloadObject) { return .failed(error: bytes, durationMs: elapsed()) }
        }
        PyErr_Clear()
        // Raised outside the runtime's own handler (e.g. an injected TimeoutError landing between two lines of it).
        let text = PythonRuntime.formatException(type: type, value: value, traceback: traceback)
        return .failed(error: JSONWriter.taskError(type: PythonRuntime.typeName(type), message: PythonRuntime.string(of: value), traceback: text),
                       durationMs: elapsed())
    }

}
