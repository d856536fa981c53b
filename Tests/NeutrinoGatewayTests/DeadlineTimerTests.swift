import NIOCore
import NIOEmbedded
import Testing

@testable import NeutrinoGateway

/// The one timer per connection behind the gateway's header, body and answer deadlines (on NIO's embedded event loop,
/// whose clock only moves when told).
struct DeadlineTimerTests {
    /// Owns a timer the way a channel handler does: when it fires it records the time and re-arms for `pending`.
    final class Owner {
        let loop = EmbeddedEventLoop()
        var timer = DeadlineTimer()
        var pending: NIODeadline?
        var fired: [Int64] = []

        func ask(_ ms: Int64) {
            let deadline = NIODeadline.uptimeNanoseconds(0) + .milliseconds(ms)
            pending = deadline
            timer.fire(by: deadline, on: loop.assumeIsolated()) { [self] in
                timer.fired()
                fired.append((loop.now - .uptimeNanoseconds(0)).nanoseconds / 1_000_000)
                if let pending, pending > loop.now { ask((pending - .uptimeNanoseconds(0)).nanoseconds / 1_000_000) }
            }
        }

        func advance(to ms: Int64) { loop.advanceTime(to: .uptimeNanoseconds(0) + .milliseconds(ms)) }
    }

    @Test func laterDeadlinesReuseTheArmedTimerAndAreMetWhenItFires() {
        let owner = Owner()
        owner.ask(10)
        owner.ask(20)  // a later deadline: the timer armed for 10 ms stays
        owner.ask(30)
        owner.advance(to: 9)
        #expect(owner.fired.isEmpty)
        owner.advance(to: 10)
        #expect(owner.fired == [10])  // fired once, and re-armed for the deadline still ahead
        owner.advance(to: 29)
        #expect(owner.fired == [10])
        owner.advance(to: 30)
        #expect(owner.fired == [10, 30])
        owner.advance(to: 100)
        #expect(owner.fired == [10, 30])  // nothing left armed
    }

    @Test func anEarlierDeadlineReplacesTheArmedTimer() {
        let owner = Owner()
        owner.ask(50)
        owner.ask(15)
        owner.advance(to: 15)
        #expect(owner.fired == [15])
        owner.advance(to: 100)
        #expect(owner.fired == [15])  // the timer for 50 ms was cancelled, not left to fire as well
    }

    @Test func aCancelledTimerDoesNotFireAndCanBeArmedAgain() {
        let owner = Owner()
        owner.ask(10)
        owner.timer.cancel()
        owner.advance(to: 20)
        #expect(owner.fired.isEmpty)
        owner.ask(40)
        owner.advance(to: 40)
        #expect(owner.fired == [40])
    }
}
