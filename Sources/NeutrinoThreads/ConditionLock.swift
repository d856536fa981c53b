import Glibc

/// A pthread mutex with condition variables on the monotonic clock, for the modules that must avoid Foundation
/// (NeutrinoPython, NeutrinoNATS: Dispatch's headers and their C modules can disagree on `fd_set`), and for threads
/// that must wait off the cooperative pool (`Synchronization.Mutex` has no condition variable).
///
/// `@unchecked Sendable` (here and on `Condition`): they own a heap-allocated `pthread_mutex_t` / `pthread_cond_t`,
/// which are made to be shared between threads; the pointers never change after `init`.
public final class ConditionLock: @unchecked Sendable {
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)

    public final class Condition: @unchecked Sendable {
        fileprivate let cond = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
        public init() {
            var attr = pthread_condattr_t()
            pthread_condattr_init(&attr)
            pthread_condattr_setclock(&attr, CLOCK_MONOTONIC)
            pthread_cond_init(cond, &attr)
            pthread_condattr_destroy(&attr)
        }
        deinit {
            pthread_cond_destroy(cond)
            cond.deallocate()
        }
        public func signal() { pthread_cond_signal(cond) }
        public func broadcast() { pthread_cond_broadcast(cond) }
    }

    public init() { pthread_mutex_init(mutex, nil) }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    public func lock() { pthread_mutex_lock(mutex) }
    public func unlock() { pthread_mutex_unlock(mutex) }

    public func withLock<T>(_ body: () throws -> T) rethrows -> T {
        lock()
        defer { unlock() }
        return try body()
    }

    /// Waits on `condition` (lock held); with a deadline in monotonic nanoseconds, returns by then at the latest.
    public func wait(_ condition: Condition, untilNanos deadline: UInt64? = nil) {
        guard let deadline else {
            pthread_cond_wait(condition.cond, mutex)
            return
        }
        var ts = timespec(tv_sec: Int(deadline / 1_000_000_000), tv_nsec: Int(deadline % 1_000_000_000))
        pthread_cond_timedwait(condition.cond, mutex, &ts)
    }
}

/// One lock and one condition, the shape of Foundation's `NSCondition`, but on the monotonic clock and without
/// Foundation: a process that never calls into Foundation keeps about 1 MB fewer resident pages (bench/README.md,
/// twenty-third round). For threads that wait off the cooperative pool (the task log's writer and checkpointer).
public final class Monitor: @unchecked Sendable {
    // @unchecked: both members are thread-safe by construction (see ConditionLock) and never replaced.
    private let base = ConditionLock()
    private let changed = ConditionLock.Condition()

    public init() {}

    public func lock() { base.lock() }
    public func unlock() { base.unlock() }

    public func withLock<T>(_ body: () throws -> T) rethrows -> T { try base.withLock(body) }

    /// Waits (lock held) until signalled; may wake spuriously, so wait in a loop on the state.
    public func wait() { base.wait(changed) }

    /// Waits (lock held) until signalled or until `deadline` (monotonic nanoseconds, see `monotonicDeadline`).
    /// Returns false once the deadline has passed, like `NSCondition.wait(until:)`: `while !ready && m.wait(untilNanos: d) {}`.
    @discardableResult
    public func wait(untilNanos deadline: UInt64) -> Bool {
        guard monotonicNanos() < deadline else { return false }
        base.wait(changed, untilNanos: deadline)
        return monotonicNanos() < deadline
    }

    public func signal() { changed.signal() }
    public func broadcast() { changed.broadcast() }
}

/// The monotonic instant `duration` from now, in nanoseconds (saturating; a negative duration is now).
public func monotonicDeadline(after duration: Duration) -> UInt64 {
    let (seconds, attoseconds) = duration.components
    guard seconds >= 0, attoseconds >= 0 else { return monotonicNanos() }
    let (secondsNanos, overflow) = UInt64(seconds).multipliedReportingOverflow(by: 1_000_000_000)
    if overflow { return .max }
    let nanos = secondsNanos.addingReportingOverflow(UInt64(attoseconds / 1_000_000_000))
    if nanos.overflow { return .max }
    let (deadline, late) = monotonicNanos().addingReportingOverflow(nanos.partialValue)
    return late ? .max : deadline
}

/// Monotonic nanoseconds.
public func monotonicNanos() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

/// Starts a detached OS thread running `body`; returns pthread_create's result (0 on success).
/// `stackBytes` matters for Python threads (deep recursion); nil keeps the system default.
@discardableResult
public func startThread(name: String, stackBytes: Int? = nil, _ body: @escaping @Sendable () -> Void) -> Int32 {
    final class Box: Sendable {
        let body: @Sendable () -> Void
        let name: String
        init(_ body: @escaping @Sendable () -> Void, name: String) {
            self.body = body
            self.name = name
        }
    }
    var attr = pthread_attr_t()
    pthread_attr_init(&attr)
    if let stackBytes { pthread_attr_setstacksize(&attr, stackBytes) }
    pthread_attr_setdetachstate(&attr, Int32(PTHREAD_CREATE_DETACHED))
    let context = Unmanaged.passRetained(Box(body, name: name)).toOpaque()
    var thread = pthread_t()
    let rc = pthread_create(
        &thread, &attr,
        { raw in
            guard let raw else { return nil }
            let box = Unmanaged<Box>.fromOpaque(raw).takeRetainedValue()
            nameThisThread(box.name)
            box.body()
            return nil
        }, context)
    pthread_attr_destroy(&attr)
    if rc != 0 { Unmanaged<Box>.fromOpaque(context).release() }
    return rc
}

/// Names the calling thread as `top -H`, `perf` and `/proc/PID/task/*/comm` show it (at most 15 bytes, cut beyond):
/// written to /proc/thread-self/comm, since glibc's pthread_setname_np is not visible to Swift. Best effort.
func nameThisThread(_ name: String) {
    let fd = open("/proc/thread-self/comm", O_WRONLY)
    guard fd >= 0 else { return }
    defer { close(fd) }
    let bytes = Array(name.utf8.prefix(15))
    _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
}
