import NIOCore
import NIOPosix
import NeutrinoCore
import Synchronization
import Testing

@testable import NeutrinoGateway

/// The line of sync calls waiting for room in a pool whose workers are all busy: order, bounds, deadlines and the
/// wake-ups, on real event loops (waits bounded by their deadlines, nothing asserted about how long anything took).
struct PoolCapacityQueueTests {
    static let far = TimeAmount.seconds(60)

    /// What the waiters got, in the order they got it.
    final class Outcomes: Sendable {
        private let list = Mutex<[(String, PoolCapacityQueue.Wait)]>([])
        func add(_ name: String, _ outcome: PoolCapacityQueue.Wait) { list.withLock { $0.append((name, outcome)) } }
        var names: [String] { list.withLock { $0.map(\.0) } }
        var all: [(String, PoolCapacityQueue.Wait)] { list.withLock { $0 } }
        var count: Int { list.withLock { $0.count } }
    }

    /// Waits (bounded) until `check` holds.
    static func eventually(_ what: Comment, _ check: () -> Bool) async throws {
        for _ in 0..<2000 where !check() { try await Task.sleep(for: .milliseconds(5)) }
        #expect(check(), what)
    }

    /// Starts a waiter and returns once it is in the line; its outcome lands in `outcomes` under `name`.
    static func enqueue(
        _ queue: PoolCapacityQueue, _ name: String, into outcomes: Outcomes, first: Bool = false
    ) async throws -> Task<Void, Never> {
        let before = queue.waiting
        let ticket = queue.ticket()
        let task = Task {
            let outcome = await queue.wait(after: ticket, until: .now() + far, first: first)
            outcomes.add(name, outcome)
        }
        try await eventually("\(name) waits") { queue.waiting == before + 1 }
        return task
    }

    @Test func roomGoesToTheWaitersInArrivalOrder() async throws {
        let queue = PoolCapacityQueue(limit: 8, group: MultiThreadedEventLoopGroup.singleton, lookAgain: Self.far)
        let outcomes = Outcomes()
        var tasks: [Task<Void, Never>] = []
        for name in ["a", "b", "c"] { tasks.append(try await Self.enqueue(queue, name, into: outcomes)) }
        for n in 1...3 {
            queue.roomMade()
            try await Self.eventually("wake-up \(n)") { outcomes.count == n }
        }
        for t in tasks { await t.value }
        #expect(outcomes.names == ["a", "b", "c"])
        #expect(outcomes.all.allSatisfy { $0.1 == .tryAgain })
        #expect(queue.waiting == 0)
        queue.roomMade()  // nobody waits: nothing to wake
    }

    @Test func roomMadeSinceTheTicketIsNotSleptThrough() async {
        let queue = PoolCapacityQueue(limit: 8, group: MultiThreadedEventLoopGroup.singleton, lookAgain: Self.far)
        let ticket = queue.ticket()
        queue.roomMade()  // a connection came back while the call was trying the (busy) workers
        let outcome = await queue.wait(after: ticket, until: .now() + Self.far)
        #expect(outcome == .tryAgain)
        #expect(queue.waiting == 0)
    }

    @Test func theLineIsBoundedButAWokenCallKeepsItsPlace() async throws {
        let queue = PoolCapacityQueue(limit: 1, group: MultiThreadedEventLoopGroup.singleton, lookAgain: Self.far)
        let outcomes = Outcomes()
        let a = try await Self.enqueue(queue, "a", into: outcomes)
        #expect(await queue.wait(after: queue.ticket(), until: .now() + Self.far) == .full)
        // A call woken for room it then did not get goes back to the front, even past the limit.
        let b = try await Self.enqueue(queue, "b", into: outcomes, first: true)
        queue.roomMade()
        try await Self.eventually("the first wake-up") { outcomes.count == 1 }
        #expect(outcomes.names == ["b"])
        queue.roomMade()
        await a.value
        await b.value
        #expect(outcomes.names == ["b", "a"])

        let none = PoolCapacityQueue(limit: 0, group: MultiThreadedEventLoopGroup.singleton, lookAgain: Self.far)
        #expect(await none.wait(after: none.ticket(), until: .now() + Self.far) == .full)
        #expect(await none.wait(after: none.ticket(), until: .now() + Self.far, first: true) == .full)
    }

    @Test func aWaiterLeavesAtItsDeadline() async {
        let queue = PoolCapacityQueue(limit: 8, group: MultiThreadedEventLoopGroup.singleton, lookAgain: Self.far)
        #expect(await queue.wait(after: queue.ticket(), until: .now() + .milliseconds(50)) == .expired)
        #expect(queue.waiting == 0)
        #expect(await queue.wait(after: queue.ticket(), until: .now() - .milliseconds(1)) == .expired)
    }

    @Test func aCancelledWaiterLeavesTheLine() async throws {
        let queue = PoolCapacityQueue(limit: 8, group: MultiThreadedEventLoopGroup.singleton, lookAgain: Self.far)
        let outcomes = Outcomes()
        let a = try await Self.enqueue(queue, "a", into: outcomes)
        let b = try await Self.enqueue(queue, "b", into: outcomes)
        a.cancel()
        await a.value
        #expect(outcomes.names == ["a"])
        #expect(outcomes.all.first?.1 == .expired)
        #expect(queue.waiting == 1)
        // The next room goes to the one still waiting, not to the one that left.
        queue.roomMade()
        await b.value
        #expect(outcomes.names.last == "b")
        #expect(outcomes.all.last?.1 == .tryAgain)
        // A task cancelled before it waits does not wait.
        let early = Task {
            withUnsafeCurrentTask { $0?.cancel() }
            return await queue.wait(after: queue.ticket(), until: .now() + Self.far)
        }
        #expect(await early.value == .expired)
        #expect(queue.waiting == 0)
    }

    @Test func aCallerThatLeavesTakesItsCallOutOfTheLine() async throws {
        let queue = PoolCapacityQueue(limit: 8, group: MultiThreadedEventLoopGroup.singleton, lookAgain: Self.far)
        let caller = CallerPresence()
        let ticket = queue.ticket()
        let waiting = Task { await queue.wait(after: ticket, until: .now() + Self.far, caller: caller) }
        try await Self.eventually("the call waits") { queue.waiting == 1 }
        caller.leave()
        #expect(await waiting.value == .callerLeft)
        #expect(queue.waiting == 0)
        // One whose caller has gone already does not wait at all.
        #expect(await queue.wait(after: queue.ticket(), until: .now() + Self.far, caller: caller) == .callerLeft)
        #expect(queue.waiting == 0)
    }

    @Test func aNewWorkerWakesEveryWaiter() async throws {
        let queue = PoolCapacityQueue(limit: 8, group: MultiThreadedEventLoopGroup.singleton, lookAgain: Self.far)
        let outcomes = Outcomes()
        var tasks: [Task<Void, Never>] = []
        for name in ["a", "b", "c"] { tasks.append(try await Self.enqueue(queue, name, into: outcomes)) }
        queue.membersChanged()
        for t in tasks { await t.value }
        #expect(Set(outcomes.names) == ["a", "b", "c"])
        #expect(outcomes.all.allSatisfy { $0.1 == .tryAgain })
        #expect(queue.waiting == 0)
    }

    /// Room no event announces (a worker saturated by other gateways frees up, a restarted worker accepts again): the
    /// first waiter looks again every `lookAgain` while anyone waits, one after another, in order.
    @Test func theFirstWaiterLooksAgainWithoutAWakeUp() async throws {
        let queue = PoolCapacityQueue(limit: 8, group: MultiThreadedEventLoopGroup.singleton, lookAgain: .milliseconds(20))
        let outcomes = Outcomes()
        // Not `enqueue`: the first look may come before a waiter is seen in the line.
        let waiters = (0..<3).map { n in
            let ticket = queue.ticket()
            return Task {
                let outcome = await queue.wait(after: ticket, until: .now() + Self.far)
                outcomes.add("\(n)", outcome)
            }
        }
        for waiter in waiters { await waiter.value }
        #expect(Set(outcomes.names) == ["0", "1", "2"])
        #expect(outcomes.all.allSatisfy { $0.1 == .tryAgain })
        #expect(queue.waiting == 0)
        // With its deadline before the next look, it expires instead.
        let slow = PoolCapacityQueue(limit: 8, group: MultiThreadedEventLoopGroup.singleton, lookAgain: Self.far)
        #expect(await slow.wait(after: slow.ticket(), until: .now() + .milliseconds(20)) == .expired)
    }
}
