import Glibc

/// A pthread mutex with condition variables on the monotonic clock. This module avoids Foundation (its Dispatch
/// headers and C modules that define `_GNU_SOURCE` can disagree on `fd_set`), so it uses pthreads directly.
final class PThreadLock: @unchecked Sendable {
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)

    final class Condition: @unchecked Sendable {
        fileprivate let cond = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)

        init() {
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

        func signal() { pthread_cond_signal(cond) }
        func broadcast() { pthread_cond_broadcast(cond) }
    }

    init() { pthread_mutex_init(mutex, nil) }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    func lock() { pthread_mutex_lock(mutex) }
    func unlock() { pthread_mutex_unlock(mutex) }

    func withLock<T>(_ body: () throws -> T) rethrows -> T {
        lock()
        defer { unlock() }
        return try body()
    }

    /// Waits on `condition` with the lock held; with a deadline (monotonic nanoseconds) returns by then at the latest.
    func wait(_ condition: Condition, untilNanos deadline: UInt64? = nil) {
        guard let deadline else {
            pthread_cond_wait(condition.cond, mutex)
            return
        }
        var ts = timespec(tv_sec: Int(deadline / 1_000_000_000), tv_nsec: Int(deadline % 1_000_000_000))
        pthread_cond_timedwait(condition.cond, mutex, &ts)
    }
}

/// Monotonic nanoseconds.
func monotonicNanos() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

extension Duration {
    /// Whole milliseconds, rounded up so that a positive duration never becomes 0 (cnats reads 0 as "default").
    var natsMilliseconds: Int64 {
        let (seconds, attoseconds) = components
        guard seconds >= 0, attoseconds >= 0 else { return 0 }
        let ms = attoseconds / 1_000_000_000_000_000
        let remainder = attoseconds % 1_000_000_000_000_000
        let (total, overflow) = seconds.multipliedReportingOverflow(by: 1000)
        let (sum, overflow2) = total.addingReportingOverflow(ms + (remainder > 0 ? 1 : 0))
        return overflow || overflow2 ? .max : sum
    }

    /// Whole nanoseconds (the unit of stream and consumer configuration), saturating.
    var natsNanoseconds: Int64 {
        let (seconds, attoseconds) = components
        guard seconds >= 0, attoseconds >= 0 else { return 0 }
        let (total, overflow) = seconds.multipliedReportingOverflow(by: 1_000_000_000)
        let (sum, overflow2) = total.addingReportingOverflow(attoseconds / 1_000_000_000)
        return overflow || overflow2 ? .max : sum
    }
}
