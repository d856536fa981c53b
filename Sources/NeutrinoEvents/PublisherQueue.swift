import NeutrinoCore
import NeutrinoThreads

/// The publisher's bounded FIFO of events not yet acknowledged by the stream, and the callers waiting on it.
///
/// Every recorded event gets a sequence number. Events leave the queue in windows (in order) to be published,
/// and the ones that failed go back to its front, so the queue stays sorted by sequence. Everything below the
/// lowest sequence still queued or in flight is settled (acknowledged by the stream, or dropped), which is what
/// `flush` waits for.
///
/// `@unchecked Sendable`: every stored var is read and written with `lock` held; it is a pthread condition lock (not a
/// `Mutex`) because the publisher's pump thread waits on it for events, off the cooperative pool.
final class PublisherQueue: @unchecked Sendable {
    struct Entry: Sendable {
        let seq: UInt64
        let event: TaskEvent
        /// Times the server (or the client library) refused this event for a reason other than the connection.
        var rejections = 0
    }

    struct Counters: Sendable {
        var published: UInt64 = 0
        var duplicates: UInt64 = 0
        var dropped: UInt64 = 0
    }

    private let lock = ConditionLock()
    private let capacity: Int
    private var queue: [Entry] = []
    private var head = 0
    /// The window being published: its lowest sequence and its size.
    private var inFlightFirst: UInt64?
    private var inFlightCount = 0
    private var nextSeq: UInt64 = 1
    private var accepting = true
    private var stopped = false
    private var pumpWaiter: CheckedContinuation<Void, Never>?
    private var flushWaiters: [UInt64: (target: UInt64, continuation: CheckedContinuation<Void, Never>)] = [:]
    private var cancelledWaiters: Set<UInt64> = []
    private var nextWaiterID: UInt64 = 0
    private var counters = Counters()

    init(capacity: Int) { self.capacity = max(1, capacity) }

    enum Admission { case queued, full, closed }

    /// Appends `events` (in order) as far as capacity allows; what does not fit, or comes after `close`, is dropped
    /// and counted. Returns what happened to the last one, with the number dropped.
    func append<C: Collection>(_ events: C) -> (dropped: Int, reason: Admission) where C.Element == TaskEvent {
        var wake: CheckedContinuation<Void, Never>?
        let outcome = lock.withLock { () -> (Int, Admission) in
            guard accepting else {
                counters.dropped += UInt64(events.count)
                return (events.count, .closed)
            }
            var dropped = 0
            for event in events {
                if queue.count - head + inFlightCount >= capacity {
                    dropped += 1
                    continue
                }
                queue.append(Entry(seq: nextSeq, event: event))
                nextSeq += 1
            }
            counters.dropped += UInt64(dropped)
            if queue.count > head, let waiter = pumpWaiter {
                wake = waiter
                pumpWaiter = nil
            }
            return (dropped, dropped > 0 ? .full : .queued)
        }
        wake?.resume()
        return outcome
    }

    /// The next window of at most `limit` events (oldest first), once there is one; nil once stopped.
    func nextWindow(limit: Int) async -> [Entry]? {
        while true {
            let taken = lock.withLock { () -> [Entry]?? in
                if stopped { return .some(nil) }
                guard queue.count > head else { return nil }
                let end = min(queue.count, head + max(1, limit))
                let window = Array(queue[head..<end])
                head = end
                if head == queue.count {
                    queue.removeAll(keepingCapacity: queue.capacity <= 4096)
                    head = 0
                } else if head > 4096 && head * 2 > queue.count {
                    queue.removeFirst(head)
                    head = 0
                }
                inFlightFirst = window.first?.seq
                inFlightCount = window.count
                return .some(window)
            }
            if let taken { return taken }
            await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
                let now = lock.withLock { () -> Bool in
                    if stopped || queue.count > head { return true }
                    pumpWaiter = c
                    return false
                }
                if now { c.resume() }
            }
        }
    }

    /// Ends the window in flight: `retry` (sorted by sequence) goes back to the front of the queue; the rest of the
    /// window was acknowledged (`published`, of which `duplicates` were already stored) or dropped (`dropped`).
    func complete(retry: [Entry], published: Int, duplicates: Int, dropped: Int) {
        let ready = lock.withLock { () -> [CheckedContinuation<Void, Never>] in
            counters.published += UInt64(published)
            counters.duplicates += UInt64(duplicates)
            counters.dropped += UInt64(dropped)
            if !retry.isEmpty {
                queue = retry + queue[head...]
                head = 0
            }
            inFlightFirst = nil
            inFlightCount = 0
            return takeSatisfiedWaiters()
        }
        for c in ready { c.resume() }
    }

    /// Stops taking events (those recorded later are dropped); the queue is still published.
    func stopAccepting() -> Bool {
        lock.withLock {
            defer { accepting = false }
            return accepting
        }
    }

    /// Stops the pump and releases every waiter; returns how many events were left unpublished (lost).
    func stop() -> Int {
        let (waiters, pump, left) = lock.withLock { () -> ([CheckedContinuation<Void, Never>], CheckedContinuation<Void, Never>?, Int) in
            stopped = true
            accepting = false
            let left = queue.count - head + inFlightCount
            let waiters = flushWaiters.values.map(\.continuation)
            flushWaiters.removeAll()
            defer { pumpWaiter = nil }
            return (waiters, pumpWaiter, left)
        }
        pump?.resume()
        for c in waiters { c.resume() }
        return left
    }

    /// Waits until everything recorded before the call is settled (or the publisher stopped, or the calling task
    /// is cancelled).
    func waitUntilSettled() async {
        let (target, id) = lock.withLock { () -> (UInt64?, UInt64) in
            let target = nextSeq - 1
            nextWaiterID += 1
            return (settled(target) || stopped ? nil : target, nextWaiterID)
        }
        guard let target else { return }
        await withTaskCancellationHandler {
            await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
                let now = lock.withLock { () -> Bool in
                    if settled(target) || stopped || cancelledWaiters.remove(id) != nil { return true }
                    flushWaiters[id] = (target, c)
                    return false
                }
                if now { c.resume() }
            }
        } onCancel: {
            let waiter = lock.withLock { () -> CheckedContinuation<Void, Never>? in
                if let w = flushWaiters.removeValue(forKey: id) { return w.continuation }
                cancelledWaiters.insert(id)
                return nil
            }
            waiter?.resume()
        }
        // A cancellation that came after the waiter was resumed leaves its id behind: forget it.
        lock.withLock { _ = cancelledWaiters.remove(id) }
    }

    /// Events queued or in flight.
    var pending: Int { lock.withLock { queue.count - head + inFlightCount } }

    var snapshot: Counters { lock.withLock { counters } }

    /// Lock held.
    private func settled(_ target: UInt64) -> Bool {
        let lowest = min(inFlightFirst ?? .max, queue.count > head ? queue[head].seq : .max)
        return target < lowest
    }

    /// Lock held.
    private func takeSatisfiedWaiters() -> [CheckedContinuation<Void, Never>] {
        var ready: [CheckedContinuation<Void, Never>] = []
        for (id, w) in flushWaiters where settled(w.target) {
            ready.append(w.continuation)
            flushWaiters.removeValue(forKey: id)
        }
        return ready
    }
}
