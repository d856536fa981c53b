import CPython
import Glibc
import NeutrinoCore
import NeutrinoThreads

/// `async def` tasks: one asyncio event loop per worker, on its own thread (`py-loop`, running
/// `neutrino._loop.run`), holding up to `maxCoroutines` coroutines in flight without a thread each.
///
/// Handing work over never takes the GIL on the caller's side: a call is queued here (`loopOutbox`) and a byte is
/// written to a pipe the loop watches; the loop takes what is queued through `LoopBridge` and reports each
/// coroutine's end the same way, which calls the caller's completion. Timeouts are the watchdog's, as for
/// threads, and do not need the loop: at the deadline the caller is answered `.timedOut` and a cancel is queued
/// (`CancelledError` inside the coroutine once the loop takes it), so a coroutine blocking the loop cannot hold back
/// other coroutines' timeouts. `grace` later a coroutine that has not ended is given up on (its slot comes back;
/// too many raise `.eventLoop`), and the loop's watcher thread raises `TimeoutError` in a coroutine that still
/// blocks the loop past its hard deadline, and reports the loop lost (`.eventLoop`) when even that fails.
extension PythonExecutor {
    func submitCoroutine(_ job: Job, completion: @escaping @Sendable (PythonOutcome) -> Void) {
        lock.lock()
        let reason: String? =
            if let wedged = state.wedged { "the interpreter is wedged: \(wedged)" } else if let lost = state.loopLost {
                "the event loop is lost: \(lost)"
            } else if state.stopping {
                "the worker is shutting down"
            } else if maxCoroutines == 0 {
                "this worker runs no async def tasks"
            } else if state.coroutineWaiting.count >= maxQueued {
                "the worker's queue is full (\(maxQueued) async def tasks waiting)"
            } else { nil }
        if let reason {
            lock.unlock()
            completion(.rejected(reason: reason))
            return
        }
        job.completion = completion
        state.coroutineWaiting.append(job)
        lock.unlock()
        startWaitingCoroutines()
    }

    /// Hands waiting coroutine calls to the loop while slots are free. `onStart` runs before the loop can see the
    /// call, so `running` is recorded before any outcome.
    func startWaitingCoroutines() {
        while true {
            let next = lock.withLock { () -> Job? in
                guard state.coroutinesRunning < maxCoroutines, !state.coroutineWaiting.isEmpty, !state.stopping else { return nil }
                state.coroutinesRunning += 1
                return state.coroutineWaiting.removeFirst()
            }
            guard let job = next else { return }
            if let unwanted = job.unwanted {
                // The slot goes back unused.
                lock.withLock {
                    state.coroutinesRunning -= 1
                    job.phase = .done
                }
                finish(job, .rejected(reason: unwanted))
                continue
            }
            job.onStart()
            let wake = lock.withLock { () -> Bool in
                state.nextLoopID &+= 1
                job.loopID = state.nextLoopID
                job.phase = .running(state.loopIdent)
                job.startNanos = monotonicNanos()
                state.running[ObjectIdentifier(job)] = job
                state.busy += 1
                state.coroutineJobs[job.loopID] = job
                wakeWatchdog(before: job.deadline)
                return queueForLoop(.start(job))
            }
            if wake { wakeTheLoop() }
        }
    }

    /// Queues `item` for the loop (lock held); true when the caller must write the wake-up byte.
    func queueForLoop(_ item: LoopItem) -> Bool {
        state.loopOutbox.append(item)
        if state.loopWakePending { return false }
        state.loopWakePending = true
        return true
    }

    func wakeTheLoop() {
        var byte: UInt8 = 1
        // A full pipe (EAGAIN) already holds a wake-up.
        _ = Glibc.write(wakeWrite, &byte, 1)
    }

    func startLoopThread() {
        LoopBridge.install(self)
        let rc = startThread(name: "py-loop", stackBytes: 16 << 20) { [self] in self.loopThread() }
        precondition(rc == 0, "cannot start the event loop thread: pthread_create returned \(rc)")
    }

    private func loopThread() {
        neutrino_precise_timers()
        _ = PyGILState_Ensure()
        lock.withLock { state.loopIdent = PyThread_get_thread_ident() }
        var failure: String?
        if let run = runtime.loopRun, let bridge = LoopBridge.makeFunction(), let args = PyTuple_New(4) {
            PyTuple_SetItem(args, 0, bridge)  // steals
            PyTuple_SetItem(args, 1, PyLong_FromLong(Int(wakeRead)))
            PyTuple_SetItem(args, 2, PyFloat_FromDouble(Double(max(0, hardLimit.grace.wholeMilliseconds)) / 1000))
            PyTuple_SetItem(args, 3, PyBool_FromLong(servesASGI ? 1 : 0))
            if let result = PyObject_CallObject(run.pointer, args) {
                Py_DecRef(result)
            } else {
                failure = PythonRuntime.takeErrorText()
            }
            Py_DecRef(args)
        } else {
            failure = "cannot call neutrino._loop.run: \(PythonRuntime.takeErrorText())"
        }
        _ = PyEval_SaveThread()
        loopLost("the event loop ended: \(failure ?? "run() returned")")
    }

    /// The loop takes what is queued for it (GIL held): `[(op, id, name, payload, hard_deadline_s)]`.
    func takeForLoop() -> UnsafeMutablePointer<PyObject>? {
        let items = lock.withLock { () -> [LoopItem] in
            defer {
                state.loopOutbox.removeAll(keepingCapacity: true)
                state.loopWakePending = false
            }
            return state.loopOutbox
        }
        guard let list = PyList_New(0) else { return nil }
        let graceSeconds = Double(max(0, hardLimit.grace.wholeMilliseconds)) / 1000
        for item in items {
            guard let tuple = PyTuple_New(5) else { continue }
            switch item {
            case .start(let job):
                PyTuple_SetItem(tuple, 0, PyLong_FromLong(0))
                PyTuple_SetItem(tuple, 1, PyLong_FromUnsignedLongLong(job.loopID))
                PyTuple_SetItem(tuple, 2, PyUnicode_FromString(job.task))
                let payload = job.payload.withUnsafeBytes { raw in
                    PyBytes_FromStringAndSize(raw.baseAddress?.assumingMemoryBound(to: CChar.self), Py_ssize_t(raw.count))
                }
                PyTuple_SetItem(tuple, 3, payload)
                PyTuple_SetItem(tuple, 4, PyFloat_FromDouble(Double(job.timeoutNanos) / 1e9 + graceSeconds))
            case .cancel(let id):
                Self.fillControl(tuple, op: 1, id: id)
            case .asgiRequest(let exchange):
                PyTuple_SetItem(tuple, 0, PyLong_FromLong(2))
                PyTuple_SetItem(tuple, 1, PyLong_FromUnsignedLongLong(exchange.id))
                PyTuple_SetItem(tuple, 2, Self.pyBytes(exchange.head))
                PyTuple_SetItem(tuple, 3, Self.pyBytes(exchange.body))
                PyTuple_SetItem(tuple, 4, PyFloat_FromDouble(0))
            case .asgiDisconnect(let id):
                Self.fillControl(tuple, op: 3, id: id)
            case .asgiResume(let id):
                Self.fillControl(tuple, op: 4, id: id)
            case .lifespanShutdown:
                Self.fillControl(tuple, op: 5, id: 0)
            case .asgiCancel(let id):
                Self.fillControl(tuple, op: 6, id: id)
            }
            PyList_Append(list, tuple)
            Py_DecRef(tuple)
        }
        return list
    }

    /// `(op, id, None, None, 0.0)` (GIL held).
    static func fillControl(_ tuple: UnsafeMutablePointer<PyObject>, op: Int, id: UInt64) {
        PyTuple_SetItem(tuple, 0, PyLong_FromLong(op))
        PyTuple_SetItem(tuple, 1, PyLong_FromUnsignedLongLong(id))
        for i in 2..<4 {
            let none = neutrino_py_none()
            Py_IncRef(none)
            PyTuple_SetItem(tuple, i, none)
        }
        PyTuple_SetItem(tuple, 4, PyFloat_FromDouble(0))
    }

    /// A new `bytes` object (GIL held).
    static func pyBytes(_ bytes: [UInt8]) -> UnsafeMutablePointer<PyObject>? {
        bytes.withUnsafeBytes { raw in
            PyBytes_FromStringAndSize(raw.baseAddress?.assumingMemoryBound(to: CChar.self), Py_ssize_t(raw.count))
        }
    }

    /// A coroutine ended (on the loop thread, GIL held): `ok` with its result JSON, or its error payload.
    func coroutineDone(id: UInt64, ok: Bool, data: [UInt8], output: [UInt8]?) {
        let ended = lock.withLock { () -> Job? in
            guard let job = state.coroutineJobs.removeValue(forKey: id) else { return nil }
            if job.abandoned {
                state.leakedCoroutines -= 1
            } else {
                if case .interrupted = job.phase { state.stuck -= 1 }
                state.running[ObjectIdentifier(job)] = nil
                state.busy -= 1
                state.coroutinesRunning -= 1
            }
            job.phase = .done
            return job
        }
        guard let job = ended else { return }
        if let output { job.onOutput(output) }
        let ms = Double(monotonicNanos() - job.startNanos) / 1e6
        finish(job, ok ? .completed(result: data, durationMs: ms) : .failed(error: data, durationMs: ms))
        startWaitingCoroutines()
        startWaitingRequests()
    }

    /// Raises `TimeoutError` in the loop thread (GIL held): the watcher's hard stop for a coroutine that blocks it.
    func interruptLoopThread() {
        let ident = lock.withLock { state.loopIdent }
        PyThreadState_SetAsyncExc(ident, neutrino_py_timeout_error())
    }

    /// The loop cannot run coroutines any more: refuse new ones, answer the waiting ones, and ask for a recycle.
    func loopLost(_ reason: String) {
        let waiting = lock.withLock { () -> [Job] in
            if state.loopLost == nil { state.loopLost = reason }
            defer { state.coroutineWaiting.removeAll() }
            return state.coroutineWaiting
        }
        for job in waiting { finish(job, .rejected(reason: "the event loop is lost: \(reason)")) }
        asgiLoopLost(reason)
        alarm(.eventLoop(reason))
    }
}
