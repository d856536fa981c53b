import Foundation
import NeutrinoCore
import Synchronization
import Testing

@testable import NeutrinoGateway

struct ReplicaCatchUpTests {
    /// A version-7 id made now.
    func young() -> String { id(at: UInt64(Date().timeIntervalSince1970 * 1000)) }

    /// A version-7 id made at `millis` (hand-built: other tests move the process's `TaskID.make` clock).
    func id(at millis: UInt64) -> String {
        let hex = String(millis, radix: 16)
        let t = String(repeating: "0", count: 12 - hex.count) + hex
        return "\(t.prefix(8))-\(t.suffix(4))-7000-8000-000000000000"
    }

    @Test func onlyYoungIdsMayWait() {
        let catchUp = ReplicaCatchUp(lagBound: .seconds(5))
        let now = Date(timeIntervalSince1970: 1_800_000_000)
        let nowMillis: UInt64 = 1_800_000_000_000
        #expect(catchUp.budget(for: id(at: nowMillis), now: now) == .seconds(5))
        #expect(catchUp.budget(for: id(at: nowMillis - 2000), now: now) == .seconds(3))
        #expect(catchUp.budget(for: id(at: nowMillis - 5000), now: now) == nil)
        #expect(catchUp.budget(for: id(at: nowMillis - 86_400_000), now: now) == nil)
        // A replica whose clock runs a little ahead: the whole bound; far ahead: no wait.
        #expect(catchUp.budget(for: id(at: nowMillis + 1000), now: now) == .seconds(5))
        #expect(catchUp.budget(for: id(at: nowMillis + 60_000), now: now) == nil)
        // Not a v7 id, or a gateway that is alone.
        #expect(catchUp.budget(for: "01912345-6789-4abc-8def-0123456789ab", now: now) == nil)
        #expect(ReplicaCatchUp.none.budget(for: id(at: nowMillis), now: now) == nil)
    }

    @Test func waitsUntilTheTaskArrives() async throws {
        let catchUp = ReplicaCatchUp(lagBound: .seconds(30))
        let fresh = young()
        let calls = Mutex(0)
        let found = try await catchUp.find(fresh) { () -> String? in
            calls.withLock {
                $0 += 1; return $0 >= 4 ? "record" : nil
            }
        }
        #expect(found == "record")
        #expect(calls.withLock { $0 } == 4)
    }

    @Test func anOldIdAnswersAtOnce() async throws {
        let catchUp = ReplicaCatchUp(lagBound: .seconds(30))
        let calls = Mutex(0)
        let found = try await catchUp.find(id(at: 1_000_000)) { () -> String? in
            calls.withLock { $0 += 1 }
            return nil
        }
        #expect(found == nil)
        #expect(calls.withLock { $0 } == 1)
    }

    @Test func aYoungUnknownIdGivesUpAtTheBound() async throws {
        let catchUp = ReplicaCatchUp(lagBound: .milliseconds(300))
        let start = ContinuousClock.now
        let found = try await catchUp.find(young()) { () -> String? in nil }
        #expect(found == nil)
        // Bounded: well under the generous limit even on a loaded machine, and not before most of the bound.
        #expect(ContinuousClock.now - start < .seconds(10))
        #expect(ContinuousClock.now - start >= .milliseconds(200))
    }
}

extension ReplicaCatchUpTests {
    @Test func waitersAreBounded() async throws {
        let catchUp = ReplicaCatchUp(lagBound: .seconds(2), maxWaiting: 1)
        let first = young()
        async let waiting: String? = catchUp.find(first) { () -> String? in nil }
        try await Task.sleep(for: .milliseconds(300))
        await #expect(throws: ReplicaCatchUp.Full.self) {
            _ = try await catchUp.find(young()) { () -> String? in nil }
        }
        #expect(try await waiting == nil)
        // The slot is free again: a lookup that misses once waits, and finds.
        let calls = Mutex(0)
        let found = try await catchUp.find(young()) { () -> String? in
            calls.withLock {
                $0 += 1; return $0 >= 2 ? "record" : nil
            }
        }
        #expect(found == "record")
    }
}
