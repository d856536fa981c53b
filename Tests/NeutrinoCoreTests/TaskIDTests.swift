import Foundation
import Testing

@testable import NeutrinoCore

struct TaskIDTests {
    @Test func idsAreValidUUIDv7AndIncreasing() {
        var previous = ""
        for _ in 0..<10_000 {
            let id = TaskID.make()
            #expect(TaskID.isValid(id))
            #expect(Array(id.utf8)[14] == UInt8(ascii: "7"))
            #expect(id > previous)
            previous = id
        }
    }

    @Test func randomWordsGoOnPastEachBatch() {
        // 1,000 words span 32 batches from the kernel; 64-bit words from a working generator never repeat here.
        var random = RandomWords()
        let words = (0..<1_000).map { _ in random.next() }
        #expect(Set(words).count == words.count)
        // The random tails of ids (their last 14 hex digits) differ, as the words they come from.
        let tails = (0..<100).map { _ in TaskID.make().suffix(14) }
        #expect(Set(tails).count == tails.count)
    }

    @Test func idsSortByTime() {
        let early = TaskID.make(now: Date(timeIntervalSince1970: 1_000_000))
        let late = TaskID.make(now: Date(timeIntervalSince1970: 2_000_000_000))
        #expect(early < late)
    }

    @Test func millisReadsTheTimeOfAVersion7Id() {
        // 0x0191_2345_6789 ms, version 7.
        #expect(TaskID.millis("01912345-6789-7abc-8def-0123456789ab") == 0x0191_2345_6789)
        #expect(TaskID.millis("01912345-6789-7ABC-8DEF-0123456789AB") == 0x0191_2345_6789)
        // What make(now:) wrote (other tests move this process's id clock, so compare with its own output).
        let id = TaskID.make()
        let prefix = String(id.replacingOccurrences(of: "-", with: "").prefix(12))
        #expect(TaskID.millis(id) == UInt64(prefix, radix: 16))
        // Not version 7 (a v4 UUID's first bits are random), or not an id at all.
        #expect(TaskID.millis("01912345-6789-4abc-8def-0123456789ab") == nil)
        #expect(TaskID.millis("not-an-id") == nil)
    }

    @Test func rejectsNonIds() {
        for bad in ["", "abc", "01a20d33-f5e1-703c-8a48-eb343ac6658", "01a20d33-f5e1-703c-8a48-eb343ac6658z", "../../etc/passwd"] {
            #expect(!TaskID.isValid(bad))
        }
    }

    @Test func timestampsRoundTrip() {
        for millis: Int64 in [0, 1, 999, 1_795_000_000_123, 951_782_400_000 /* 2000-02-29 */, -1] {
            let t = Timestamp(millis: millis)
            #expect(Timestamp(iso8601: t.iso8601) == t, "\(t.iso8601)")
        }
        #expect(Timestamp(millis: 951_782_400_000).iso8601 == "2000-02-29T00:00:00.000Z")
        #expect(Timestamp(iso8601: "2026-11-24T10:40:46Z")?.iso8601 == "2026-11-24T10:40:46.000Z")
        #expect(Timestamp(iso8601: "not a time") == nil)
        #expect(Timestamp(millis: -1).iso8601 == "1969-12-31T23:59:59.999Z")
        #expect(Timestamp(millis: 253_402_300_799_999).iso8601 == "9999-12-31T23:59:59.999Z")
        #expect(Timestamp(millis: 253_402_300_800_000).iso8601 == "10000-01-01T00:00:00.000Z")
        #expect(Timestamp(millis: 1_764_720_000_007).iso8601 == "2025-12-03T00:00:00.007Z")
    }

    @Test func httpDates() {
        #expect(Timestamp(millis: 0).httpDate == "Thu, 01 Jan 1970 00:00:00 GMT")
        #expect(Timestamp(millis: 1_796_288_239_999).httpDate == "Thu, 03 Dec 2026 08:57:19 GMT")
        #expect(Timestamp(millis: 951_782_400_000).httpDate == "Tue, 29 Feb 2000 00:00:00 GMT")
        #expect(Timestamp(millis: -1).httpDate == "Wed, 31 Dec 1969 23:59:59 GMT")
        #expect(Timestamp(millis: 253_402_300_799_999).httpDate == "Fri, 31 Dec 9999 23:59:59 GMT")
    }
}
