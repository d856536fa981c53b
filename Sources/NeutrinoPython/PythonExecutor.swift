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
    /// It was running when the interpreter wedged (a thread holding the GIL past its hard limit): the worker stops,
    /// and this call may have had effects. A sync caller gets a terminal failure; a queued task is handed back.
    case abandoned(reason: String)

    /// How the call ended, in one word (`completed`, `failed`, `timed_out`, `cancelled`, `rejected`, `abandoned`).
    public var statusName: String {
        switch self {
        case .completed: "completed"
        case .failed: "failed"
        case .timedOut: "timed_out"
        case .cancelled: "cancelled"
        case .rejected: "rejected"
        case .abandoned: "abandoned"
        }
    }
}

/// How the executor restores capacity that a task keeps past its timeout (soft, then hard).
public struct HardTimeoutPolicy: Sendable {
    /// After the soft timeout (an exception raised in the task), how long the task may take to return before its
    /// thread is given up on.
    public var grace: Duration
    /// Threads given up on that are still blocked (with the GIL released: a `time.sleep`, a blocking C call). Past
    /// this many, the worker should be recycled to get them back.
    public var maxLeakedThreads: Int

    public init(grace: Duration = .seconds(5), maxLeakedThreads: Int = 8) {
        self.grace = grace
        self.maxLeakedThreads = maxLeakedThreads
    }
}

/// What the executor tells its owner about capacity it could not get back by itself.
public enum ExecutorAlarm: Sendable {
    /// Too many abandoned threads are still blocked: recycle the worker.
    case tooManyLeakedThreads(Int)
    /// A thread has held the GIL past its hard limit: no Python runs in this process any more. Exit so the
    /// supervisor starts a fresh worker.
    case wedged(String)
    /// The event loop of the `async def` tasks is lost (blocked past a hard limit in a call that does not return,
    /// or too many coroutines ignore their cancellation): recycle the worker.
    case eventLoop(String)
}

/// Runs Python on `threads` dedicated OS threads, never on NIO event loops or Swift's cooperative pool.
///
/// Each thread keeps its own Python thread state and holds the GIL only while it runs calls
/// (`PyEval_RestoreThread` / `PyEval_SaveThread`): from one queued call to the next without letting go, and never while
/// it waits for work (see `workerLoop`). A watchdog thread enforces timeouts: at the deadline it answers
/// the caller with `.timedOut` and raises `TimeoutError` in the task's thread with `PyThreadState_SetAsyncExc`, so a
/// pure-Python loop stops at once and blocking C calls (`time.sleep`) stop when they return to the interpreter.
/// Cancellation (`cancel(tag:)`) works the same way with `neutrino._runtime.CancelledByRequest`.
///
/// Hard limits (Celery's hard time limit): a task that has not returned `grace` after its exception was raised is
/// given up on. If its thread released the GIL (blocked in `time.sleep(1e9)`, a socket, a C call), the thread is
/// abandoned and a new one takes its place, so the pool's capacity comes back (`leaked` counts them; too many raise
/// `.tooManyLeakedThreads`). If the exception could not even be raised because a thread holds the GIL (a C loop such as
/// a catastrophic regex), the interpreter is wedged: every running call ends `.abandoned`, nothing more runs, and
/// `.wedged` tells the worker to exit. The watchdog never takes the GIL itself (it would block on a wedged one);
/// an interrupter thread does, and a request it cannot complete within `grace` is how a wedge is seen.
public final class PythonExecutor: Sendable {
    // Every mutable field of Job and State is read and written under `lock` only; the completion is called
    // once, taken out under the lock.
    final class Job: @unchecked Sendable {
        enum Phase { case queued, running(UInt), done, interrupted(UInt) }
        let task: String
        let tag: String?
        let payload: [UInt8]
        let timeoutNanos: UInt64
        let onStart: @Sendable () -> Void
        let onOutput: @Sendable ([UInt8]) -> Void
        /// Called once with how the call ended (on whichever thread ended it: a Python thread, the watchdog, a
        /// shutdown), then cleared.
        var completion: (@Sendable (PythonOutcome) -> Void)?
        var phase: Phase = .queued
        var startNanos: UInt64 = 0
        /// When the soft timeout or the cancel was raised in it.
        var interruptedNanos: UInt64 = 0
        /// Given up on: its thread left the pool (a replacement took its place), or its coroutine stopped counting.
        var abandoned = false
        /// An `async def` task: runs on the event loop, not on a thread of its own.
        let coroutine: Bool
        /// The coroutine's number on the loop (`neutrino._loop`), set when it is handed over.
        var loopID: UInt64 = 0
        /// When its caller stops waiting for the answer (monotonic ns; 0: never): a job still queued then is not run.
        var startBy: UInt64 = 0
        /// Its caller's connection, where the call came over one: a job still queued once it closed is not run.
        var caller: CallerPresence?

        /// Why it is no longer wanted, else nil: its caller has stopped waiting (see `submit`'s `callerWaitsMs`) or
        /// has closed its connection. Starting it would spend a thread or a coroutine slot on an answer nobody reads.
        var unwanted: String? {
            if let caller, caller.hasLeft { return PythonExecutor.callerLeft }
            if startBy != 0 && monotonicNanos() > startBy { return PythonExecutor.callerGone }
            return nil
        }

        init(
            task: String, tag: String?, payload: [UInt8], timeoutMs: Int, coroutine: Bool = false,
            onStart: @escaping @Sendable () -> Void, onOutput: @escaping @Sendable ([UInt8]) -> Void
        ) {
            self.coroutine = coroutine
            self.onOutput = onOutput
            self.task = task
            self.tag = tag
            self.payload = payload
            self.timeoutNanos = UInt64(max(1, timeoutMs)) * 1_000_000
            self.onStart = onStart
        }

        var deadline: UInt64 { startNanos + timeoutNanos }
    }

    final class State: @unchecked Sendable {
        var queue: [Job] = []
        var queueHead = 0
        var running: [ObjectIdentifier: Job] = [:]
        var stopping = false
        var busy = 0
        var stuck = 0
        /// Interrupts (job, exception) waiting for the interrupter thread, and since when it has had any.
        var interrupts: [(Job, Interrupt)] = []
        var interruptsPendingSince: UInt64?
        var leaked = 0
        var wedged: String?
        var threadSerial = 0
        /// When the sleeping watchdog wakes up on its own (monotonic ns); 0 while it is awake (it rescans every
        /// running job before it sleeps again).
        var watchdogWakesAt: UInt64 = 0
        /// Python threads waiting for work, and how many of them were signalled and have not taken a job yet: a job
        /// queued while a signalled thread is on its way wakes nobody else (that thread, or a thread finishing its
        /// call, takes it), so a burst of calls does not wake a thread per call to fight over the GIL.
        var idleThreads = 0
        var wakesPending = 0
        // The event loop's side (see PythonExecutor+Coroutines.swift).
        /// Coroutine slots taken (running, or being handed over), at most `maxCoroutines`.
        var coroutinesRunning = 0
        /// Coroutine calls waiting for a slot, oldest first.
        var coroutineWaiting: [Job] = []
        /// What the loop takes at its next wake-up (`bridge(TAKE)`), and whether a wake-up byte is in the pipe.
        var loopOutbox: [LoopItem] = []
        var loopWakePending = false
        /// Coroutines on the loop by number, abandoned ones included, until the loop says they are done.
        var coroutineJobs: [UInt64: Job] = [:]
        var nextLoopID: UInt64 = 0
        /// Coroutines given up on past their hard limit (still on the loop, ignoring their cancellation).
        var leakedCoroutines = 0
        /// Why the event loop cannot run coroutines any more (blocked past a hard limit, or failed to start).
        var loopLost: String?
        var loopIdent: UInt = 0
        // The mounted ASGI app's side (see PythonExecutor+ASGI.swift).
        /// Requests waiting for a coroutine slot, oldest first.
        var asgiWaiting: [ASGIExchange] = []
        /// Requests on the loop by number, until the loop says their coroutine ended.
        var asgiRunning: [UInt64: ASGIExchange] = [:]
        /// The lifespan startup's and shutdown's outcomes once the loop reported them, and who waits for them.
        var lifespan: [Int: (ok: Bool, message: String)] = [:]
        var lifespanWaiters: [Int: [CheckedContinuation<(ok: Bool, message: String), Never>]] = [:]
    }

    enum LoopItem {
        case start(Job)
        case cancel(UInt64)
        case asgiRequest(ASGIExchange)
        case asgiDisconnect(UInt64)
        case asgiResume(UInt64)
        case asgiCancel(UInt64)
        case lifespanShutdown
    }

    /// `probe`: nothing is raised; the interrupter only shows it can take the GIL (a coroutine past its hard limit
    /// may be a loop thread that holds it).
    enum Interrupt { case timeout, cancel, probe }

    let runtime: PythonRuntime
    let lock = ConditionLock()
    private let workAvailable = ConditionLock.Condition()
    let watchdogWake = ConditionLock.Condition()
    let interruptWake = ConditionLock.Condition()
    let state = State()
    public let threadCount: Int
    public let maxQueued: Int
    /// How many `async def` tasks may be in flight on the event loop at once (0: the loop is not started).
    public let maxCoroutines: Int
    let hardLimit: HardTimeoutPolicy
    let alarm: @Sendable (ExecutorAlarm) -> Void
    /// The event loop's wake-up pipe (read end for the loop, write end for Swift); -1 without a loop.
    let wakeRead: Int32
    let wakeWrite: Int32
    /// The loop serves the app's mounted ASGI app (an HTTP worker of its pool): lifespan startup first.
    public let servesASGI: Bool

    /// `maxCoroutines`: the bound on `async def` tasks in flight on the event loop; the loop thread starts only when
    /// the app has such tasks and the bound is positive.
    public init(
        runtime: PythonRuntime, threads: Int, maxQueued: Int = 1024, maxCoroutines: Int = 0,
        serveASGI: Bool = false, hardLimit: HardTimeoutPolicy = HardTimeoutPolicy(),
        alarm: @escaping @Sendable (ExecutorAlarm) -> Void = { _ in }
    ) {
        self.runtime = runtime
        self.threadCount = max(1, threads)
        self.maxQueued = maxQueued
        self.hardLimit = hardLimit
        self.alarm = alarm
        let useLoop = runtime.loopRun != nil && maxCoroutines > 0
        self.maxCoroutines = useLoop ? maxCoroutines : 0
        self.servesASGI = useLoop && serveASGI && runtime.asgiPool != nil
        var fds: [Int32] = [-1, -1]
        if useLoop {
            let rc = pipe(&fds)
            precondition(rc == 0, "cannot create the event loop's wake-up pipe: errno \(errno)")
            for fd in fds {
                _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
                _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            }
        }
        wakeRead = fds[0]
        wakeWrite = fds[1]
        for _ in 0..<threadCount { startPythonThread() }
        if useLoop { startLoopThread() }
        var rc = startThread(name: "py-watchdog") { [self] in self.watchdogLoop() }
        precondition(rc == 0, "cannot start the timeout watchdog: pthread_create returned \(rc)")
        rc = startThread(name: "py-interrupt") { [self] in self.interrupterLoop() }
        precondition(rc == 0, "cannot start the interrupter: pthread_create returned \(rc)")
    }

    private func startPythonThread() {
        let serial = lock.withLock { () -> Int in
            state.threadSerial += 1
            return state.threadSerial
        }
        let rc = startThread(name: "py-\(serial)", stackBytes: 16 << 20) { [self] in self.workerLoop() }
        precondition(rc == 0, "cannot start a Python thread: pthread_create returned \(rc)")
    }

    /// Tasks running now, tasks queued behind them, tasks past their timeout that have not returned yet, and threads
    /// given up on that are still blocked.
    public var load: (busy: Int, queued: Int, stuck: Int) {
        lock.withLock {
            (state.busy, state.queue.count - state.queueHead + state.coroutineWaiting.count + state.asgiWaiting.count, state.stuck)
        }
    }

    /// Busy Python threads and taken coroutine slots, apart (heartbeats report each kind's utilisation).
    public var busyByKind: (threads: Int, coroutines: Int) {
        lock.withLock { (max(0, state.busy - state.coroutinesRunning), state.coroutinesRunning) }
    }

    /// What this executor runs at once: its threads, plus its coroutine slots when the loop runs.
    public var slots: Int { threadCount + maxCoroutines }

    /// How many calls of plain-function tasks one caller (a gateway) does well to keep in flight here: a call per
    /// thread, and a quarter more so that a thread which finishes finds its next call already queued instead of idling
    /// through the caller's round trip. More only queue here, behind calls the caller could have sent to whichever
    /// worker frees a thread first: on 2 cores, echo at 1,024 connections had a p99 of 1.2-1.4 s with 128 calls per
    /// worker and 0.27-0.42 s with 20 (bench/README.md, twenty-eighth round).
    public var threadCallsAtOnce: Int { threadCount + (threadCount + 3) / 4 }

    /// How many calls of every kind one caller does well to keep in flight here: `threadCallsAtOnce` and the coroutine
    /// slots.
    public var callsAtOnce: Int { threadCallsAtOnce + maxCoroutines }

    /// Threads given up on (past their hard limit) that have not returned.
    public var leakedThreads: Int { lock.withLock { state.leaked } }

    /// Why the interpreter is wedged, once it is (liveness fails from then on).
    public var wedged: String? { lock.withLock { state.wedged } }

    /// Why a queued call whose caller stopped waiting was not run.
    public static let callerGone = "its caller stopped waiting before a Python thread was free; it did not run"
    /// Why a queued call whose caller closed its connection was not run.
    public static let callerLeft = "its caller closed the connection before a Python thread was free; it did not run"

    /// Runs `task` with `payload` (JSON `{"args":…,"task_id":…}`) and returns how it ended. `onStart` runs on the
    /// Python thread just before the call (to record `running` at the moment it starts).
    /// `tag` (the task id) lets `cancel(tag:)` find the call.
    public func run(
        task: String, tag: String? = nil, payload: [UInt8], timeoutMs: Int,
        onStart: @escaping @Sendable () -> Void = {},
        onOutput: @escaping @Sendable ([UInt8]) -> Void = { _ in }
    ) async -> PythonOutcome {
        await withCheckedContinuation { continuation in
            submit(
                task: task, tag: tag, payload: payload, timeoutMs: timeoutMs, onStart: onStart, onOutput: onOutput,
                completion: { continuation.resume(returning: $0) })
        }
    }

    /// `run` without a Swift task: `completion` is called once with how the call ended, on the thread that ended it
    /// (a Python thread, the watchdog, or this one when the call is refused at once). It must not block. For callers
    /// that live on an event loop (the worker's sync-call handler), so a call costs no task and no executor hops.
    ///
    /// `callerWaitsMs`: how long the caller waits for the answer. A call still queued when that has passed is not
    /// run: it ends `.rejected` without Python (the caller has gone, and a backlog of such calls would hold every
    /// thread long after a burst). Likewise a call still queued once `caller` has left (its connection closed).
    public func submit(
        task: String, tag: String? = nil, payload: [UInt8], timeoutMs: Int, callerWaitsMs: Int? = nil, caller: CallerPresence? = nil,
        onStart: @escaping @Sendable () -> Void = {},
        onOutput: @escaping @Sendable ([UInt8]) -> Void = { _ in },
        completion: @escaping @Sendable (PythonOutcome) -> Void
    ) {
        let coroutine = runtime.coroutineTasks.contains(task)
        let job = Job(task: task, tag: tag, payload: payload, timeoutMs: timeoutMs, coroutine: coroutine, onStart: onStart, onOutput: onOutput)
        if let callerWaitsMs { job.startBy = monotonicNanos() &+ UInt64(min(max(1, callerWaitsMs), 86_400_000)) * 1_000_000 }
        job.caller = caller
        if coroutine { return submitCoroutine(job, completion: completion) }
        lock.lock()
        if state.stopping || state.wedged != nil || state.queue.count - state.queueHead >= maxQueued {
            let reason =
                state.wedged.map { "the interpreter is wedged: \($0)" }
                ?? (state.stopping ? "the worker is shutting down" : "the worker's queue is full (\(maxQueued) waiting)")
            lock.unlock()
            completion(.rejected(reason: reason))
            return
        }
        job.completion = completion
        state.queue.append(job)
        wakeThreadIfNeeded()
        lock.unlock()
    }

    /// Stops taking work; queued jobs are rejected, running ones finish.
    public func shutdown() {
        lock.lock()
        state.stopping = true
        let queued = Array(state.queue[state.queueHead...]) + state.coroutineWaiting
        state.queue.removeAll()
        state.coroutineWaiting.removeAll()
        state.queueHead = 0
        let requests = state.asgiWaiting
        state.asgiWaiting.removeAll()
        for exchange in requests { exchange.deliver(.rejected("the worker is shutting down"), final: true) }
        workAvailable.broadcast()
        watchdogWake.signal()
        interruptWake.signal()
        lock.unlock()
        for job in queued { finish(job, .rejected(reason: "the worker is shutting down")) }
    }

    /// Answers every running call `.rejected` without waiting for Python (their threads run on until the process
    /// exits). For a drain whose grace period ran out: the callers hand their tasks back to the queue.
    public func abandonRunning(reason: String) {
        let running = lock.withLock { Array(state.running.values) }
        for job in running { finish(job, .rejected(reason: reason)) }
    }

    func finish(_ job: Job, _ outcome: PythonOutcome) {
        let completion = lock.withLock { () -> (@Sendable (PythonOutcome) -> Void)? in
            defer { job.completion = nil }
            return job.completion
        }
        completion?(outcome)
    }

    /// Signals a waiting Python thread for the queued jobs, unless one already signalled is on its way (lock held).
    /// A thread that takes a job signals the next one while jobs remain, so threads join one after another as long
    /// as work is queued: blocking tasks still get every thread, a burst of short ones does not wake them all.
    private func wakeThreadIfNeeded() {
        guard state.queueHead < state.queue.count, state.idleThreads > 0, state.wakesPending == 0 else { return }
        state.wakesPending += 1
        workAvailable.signal()
    }

    /// Each Python thread takes the oldest queued job; after a call, it takes the next queued one while it still
    /// holds the GIL (no release, wake-up and re-acquire between two calls), and releases the GIL only before it waits.
    private func workerLoop() {
        neutrino_precise_timers()
        let gil = PyGILState_Ensure()
        _ = gil
        let ident = PyThread_get_thread_ident()
        guard let threadState = PyEval_SaveThread() else { return }
        var holdsGIL = false
        while true {
            lock.lock()
            if holdsGIL && (state.queueHead == state.queue.count || state.stopping) {
                // Nothing to run next: let go of the GIL before waiting (lock order is GIL, then lock).
                lock.unlock()
                _ = PyEval_SaveThread()
                holdsGIL = false
                lock.lock()
            }
            while state.queueHead == state.queue.count && !state.stopping {
                state.idleThreads += 1
                lock.wait(workAvailable)
                state.idleThreads -= 1
                state.wakesPending = max(0, state.wakesPending - 1)
            }
            if state.queueHead == state.queue.count {
                lock.unlock()
                if holdsGIL { _ = PyEval_SaveThread() }
                return
            }
            let job = state.queue[state.queueHead]
            state.queueHead += 1
            if state.queueHead > 1024 && state.queueHead * 2 > state.queue.count {
                state.queue.removeFirst(state.queueHead)
                state.queueHead = 0
            }
            if let unwanted = job.unwanted {
                job.phase = .done
                lock.unlock()
                finish(job, .rejected(reason: unwanted))
                continue
            }
            job.phase = .running(ident)
            job.startNanos = monotonicNanos()
            state.running[ObjectIdentifier(job)] = job
            state.busy += 1
            wakeWatchdog(before: job.deadline)
            wakeThreadIfNeeded()
            lock.unlock()

            job.onStart()
            if !holdsGIL {
                PyEval_RestoreThread(threadState)
                holdsGIL = true
            }
            let outcome = call(job)
            let output = runtime.takeOutput()
            // Still holding the GIL: the interrupter cannot be between its check and its SetAsyncExc now.
            let (wasInterrupted, abandoned) = lock.withLock { () -> (Bool, Bool) in
                let wasInterrupted: Bool
                if case .interrupted = job.phase { wasInterrupted = true } else { wasInterrupted = false }
                if wasInterrupted && !job.abandoned { state.stuck -= 1 }
                job.phase = .done
                if job.abandoned {
                    state.leaked -= 1
                } else {
                    state.running[ObjectIdentifier(job)] = nil
                    state.busy -= 1
                }
                return (wasInterrupted, job.abandoned)
            }
            if wasInterrupted {
                // Clear an exception that was injected but not raised yet, so it cannot hit the next task.
                PyThreadState_SetAsyncExc(ident, nil)
            }
            if abandoned {
                // A replacement took this thread's place while it was blocked: leave the pool.
                PyThreadState_Clear(threadState)
                PyThreadState_DeleteCurrent()
                return
            }
            if let output { job.onOutput(output) }
            finish(job, outcome)
        }
    }

    /// Soft timeouts, hard limits and wedge detection. Never takes the GIL.
    private func watchdogLoop() {
        let graceNanos = UInt64(max(0, hardLimit.grace.wholeMilliseconds)) * 1_000_000
        while true {
            lock.lock()
            if (state.stopping && state.running.isEmpty) || state.wedged != nil {
                interruptWake.signal()
                lock.unlock()
                return
            }
            let now = monotonicNanos()
            var timedOut: [Job] = []
            var giveUp: [Job] = []
            var wakeLoop = false
            var next = now + 1_000_000_000
            for job in state.running.values {
                switch job.phase {
                case .running(let ident):
                    if job.deadline <= now {
                        job.phase = .interrupted(ident)
                        job.interruptedNanos = now
                        state.stuck += 1
                        if job.coroutine {
                            // The caller is answered now, whether or not the loop is free; CancelledError follows
                            // inside the coroutine when the loop takes the cancel.
                            wakeLoop = queueForLoop(.cancel(job.loopID)) || wakeLoop
                        } else {
                            state.interrupts.append((job, .timeout))
                        }
                        timedOut.append(job)
                    } else {
                        next = min(next, job.deadline)
                    }
                case .interrupted:
                    if job.interruptedNanos + graceNanos <= now { giveUp.append(job) } else { next = min(next, job.interruptedNanos + graceNanos) }
                default:
                    break
                }
            }
            if !state.interrupts.isEmpty {
                if state.interruptsPendingSince == nil { state.interruptsPendingSince = now }
                interruptWake.signal()
            }
            // An interrupt the interrupter could not deliver within the grace: it cannot get the GIL.
            if let since = state.interruptsPendingSince, since + graceNanos <= now {
                let names = state.running.values.filter { if case .interrupted = $0.phase { true } else { false } }.map(\.task)
                let reason =
                    "a thread has held the GIL for over \(hardLimit.grace) past its task's timeout (\(names.sorted().joined(separator: ", ")))"
                state.wedged = reason
                let running = Array(state.running.values)
                let queued = Array(state.queue[state.queueHead...]) + state.coroutineWaiting
                state.queue.removeAll()
                state.coroutineWaiting.removeAll()
                state.queueHead = 0
                lock.unlock()
                for job in running { finish(job, .abandoned(reason: reason)) }
                for job in queued { finish(job, .rejected(reason: "the interpreter is wedged")) }
                alarm(.wedged(reason))
                return
            }
            if let since = state.interruptsPendingSince { next = min(next, since + graceNanos) }
            // Past the hard limit with the GIL available (the interrupter keeps up): the thread is blocked outside
            // Python. Give it up and start another in its place.
            var leakedNow = 0
            var coroutinesGivenUp = 0
            for job in giveUp where state.interruptsPendingSince == nil {
                job.abandoned = true
                state.running[ObjectIdentifier(job)] = nil
                state.busy -= 1
                state.stuck -= 1
                if job.coroutine {
                    // Its slot comes back; the coroutine stays on the loop until it ends. If the loop thread holds
                    // the GIL and never lets go, this probe is how the wedge is seen.
                    state.coroutinesRunning -= 1
                    state.leakedCoroutines += 1
                    coroutinesGivenUp += 1
                    state.interrupts.append((job, .probe))
                    if state.interruptsPendingSince == nil { state.interruptsPendingSince = now }
                    interruptWake.signal()
                } else {
                    state.leaked += 1
                    leakedNow += 1
                }
            }
            let leaked = state.leaked
            let leakedCoroutines = state.leakedCoroutines
            if timedOut.isEmpty && leakedNow == 0 && coroutinesGivenUp == 0 && !wakeLoop {
                state.watchdogWakesAt = next
                lock.wait(watchdogWake, untilNanos: next)
                state.watchdogWakesAt = 0
                lock.unlock()
                continue
            }
            lock.unlock()
            // Answered before the loop is woken: the loop would end a timed-out coroutine with CancelledError (a
            // failure) as soon as it gets the cancel, and the first answer is the one the caller gets.
            for job in timedOut { finish(job, .timedOut(durationMs: Double(monotonicNanos() - job.startNanos) / 1e6)) }
            if wakeLoop { wakeTheLoop() }
            for _ in 0..<leakedNow { startPythonThread() }
            if leakedNow > 0 && leaked > hardLimit.maxLeakedThreads { alarm(.tooManyLeakedThreads(leaked)) }
            if coroutinesGivenUp > 0 {
                startWaitingCoroutines()
                if leakedCoroutines > hardLimit.maxLeakedThreads * 8 {
                    alarm(.eventLoop("\(leakedCoroutines) async def tasks ignore their cancellation past their hard timeout"))
                }
            }
        }
    }

    /// Delivers interrupts (`PyThreadState_SetAsyncExc` needs the GIL). If a thread holds the GIL and never lets go,
    /// this thread blocks here and the watchdog sees the request age past the grace: a wedge.
    private func interrupterLoop() {
        _ = PyGILState_Ensure()
        guard let threadState = PyEval_SaveThread() else { return }
        while true {
            lock.lock()
            while state.interrupts.isEmpty && !state.stopping && state.wedged == nil { lock.wait(interruptWake) }
            if state.interrupts.isEmpty {
                lock.unlock()
                return
            }
            lock.unlock()
            PyEval_RestoreThread(threadState)
            let batch = lock.withLock { () -> [(Job, Interrupt)] in
                defer { state.interrupts.removeAll() }
                return state.interrupts
            }
            for (job, kind) in batch {
                lock.withLock {
                    // Only while it still runs the call (a finished thread cleared its phase under the GIL we hold).
                    guard case .interrupted(let ident) = job.phase, !job.abandoned, kind != .probe, !job.coroutine else { return }
                    PyThreadState_SetAsyncExc(ident, kind == .timeout ? neutrino_py_timeout_error() : runtime.cancelClass.pointer)
                }
            }
            _ = PyEval_SaveThread()
            lock.withLock {
                if state.interrupts.isEmpty { state.interruptsPendingSince = nil }
                watchdogWake.signal()
            }
        }
    }

    /// Wakes the watchdog (lock held) only if it sleeps past `deadline`: a job that starts while the watchdog is
    /// awake, or whose deadline comes after its next wake-up (it wakes at least once a second), is seen at its next
    /// scan. Under load that saves a thread wake-up per call.
    func wakeWatchdog(before deadline: UInt64) {
        if state.watchdogWakesAt != 0 && deadline < state.watchdogWakesAt { watchdogWake.signal() }
    }

    /// Cancels the call tagged `tag`: a queued one is dropped, a running one gets `CancelledByRequest` raised in its
    /// thread. Either way its caller is answered `.cancelled` at once. False when no such call is here.
    @discardableResult
    public func cancel(tag: String) -> Bool {
        let queued = lock.withLock { () -> Job? in
            if let i = state.coroutineWaiting.firstIndex(where: { $0.tag == tag }) {
                let job = state.coroutineWaiting.remove(at: i)
                job.phase = .done
                return job
            }
            guard let i = state.queue[state.queueHead...].firstIndex(where: { $0.tag == tag }) else { return nil }
            let job = state.queue.remove(at: i)
            job.phase = .done
            return job
        }
        if let queued {
            finish(queued, .cancelled(durationMs: 0))
            return true
        }
        // The interrupt needs the GIL: leave it to the interrupter thread, never block the caller's thread on it.
        var wakeLoop = false
        let running = lock.withLock { () -> Job? in
            guard let job = state.running.values.first(where: { $0.tag == tag }), case .running(let ident) = job.phase else { return nil }
            job.phase = .interrupted(ident)
            job.interruptedNanos = monotonicNanos()
            state.stuck += 1
            if job.coroutine {
                wakeLoop = queueForLoop(.cancel(job.loopID))
                watchdogWake.signal()
                return job
            }
            state.interrupts.append((job, .cancel))
            if state.interruptsPendingSince == nil { state.interruptsPendingSince = job.interruptedNanos }
            interruptWake.signal()
            watchdogWake.signal()
            return job
        }
        guard let running else { return false }
        // Answered before the loop is woken: the loop may deliver the cancel and end the coroutine (CancelledError,
        // a failure) before this thread runs again, and the first answer is the one the caller gets.
        finish(running, .cancelled(durationMs: Double(monotonicNanos() - running.startNanos) / 1e6))
        if wakeLoop { wakeTheLoop() }
        return true
    }

    /// One call into `neutrino._runtime.invoke` (GIL held).
    private func call(_ job: Job) -> PythonOutcome {
        func elapsed() -> Double { Double(monotonicNanos() - job.startNanos) / 1e6 }
        guard let name = runtime.taskNames[job.task] else {
            return .failed(
                error: JSONWriter.taskError(type: APIError.unknownTask.type, message: "no task named '\(job.task)' in this app", traceback: nil),
                durationMs: elapsed())
        }
        let payload = job.payload.withUnsafeBytes { raw in
            PyBytes_FromStringAndSize(raw.baseAddress?.assumingMemoryBound(to: CChar.self), Py_ssize_t(raw.count))
        }
        guard let payload, let args = PyTuple_New(2) else {
            PyErr_Clear()
            return .failed(
                error: JSONWriter.taskError(type: APIError.memoryError.type, message: "cannot build the call", traceback: nil), durationMs: elapsed())
        }
        Py_IncRef(name.pointer)
        PyTuple_SetItem(args, 0, name.pointer)
        PyTuple_SetItem(args, 1, payload)
        let result = PyObject_CallObject(runtime.invoke.pointer, args)
        Py_DecRef(args)
        if let result {
            defer { Py_DecRef(result) }
            if let bytes = PythonRuntime.bytes(of: result) { return .completed(result: bytes, durationMs: elapsed()) }
            return .failed(
                error: JSONWriter.taskError(type: APIError.resultNotSerializable.type, message: "the runtime returned no bytes", traceback: nil),
                durationMs: elapsed())
        }
        let (type, value, traceback) = PythonRuntime.fetchError()
        defer { [type, value, traceback].forEach { Py_DecRef($0) } }
        if let value, PyObject_IsInstance(value, runtime.taskErrorClass.pointer) == 1,
            let payloadObject = PyObject_GetAttrString(value, "payload")
        {
            defer { Py_DecRef(payloadObject) }
            if let bytes = PythonRuntime.bytes(of: payloadObject) { return .failed(error: bytes, durationMs: elapsed()) }
        }
        PyErr_Clear()
        // Raised outside the runtime's own handler (e.g. an injected TimeoutError landing between two lines of it).
        let text = PythonRuntime.formatException(type: type, value: value, traceback: traceback)
        return .failed(
            error: JSONWriter.taskError(type: PythonRuntime.typeName(type), message: PythonRuntime.string(of: value), traceback: text),
            durationMs: elapsed())
    }

}
