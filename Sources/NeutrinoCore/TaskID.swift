import FoundationEssentials
import Glibc
import Synchronization

/// Time-ordered task ids: UUIDv7 (RFC 9562), lowercase hex, `8-4-4-4-12`.
///
/// The first 48 bits are the Unix time in milliseconds, so ids sort by creation time as text; within one
/// millisecond a process keeps ids increasing with a counter in the `rand_a` field.
public enum TaskID {
    private struct State {
        var lastMillis: UInt64 = 0
        var counter: UInt16 = 0
        var random = RandomWords()
    }
    private static let state = Mutex(State())

    /// A new id, greater than every id this process made before.
    public static func make(now: Date = Date()) -> String {
        let millisNow = UInt64(max(0, now.timeIntervalSince1970 * 1000))
        let (millis, counter, tail) = state.withLock { s -> (UInt64, UInt16, UInt64) in
            if millisNow > s.lastMillis {
                s.lastMillis = millisNow
                // 10 random bits: leave room to count up within the millisecond.
                s.counter = UInt16(truncatingIfNeeded: s.random.next() & 0x3FF)
            } else if s.counter < 0xFFF {
                s.counter += 1
            } else {
                s.lastMillis += 1  // counter exhausted: borrow the next millisecond
                s.counter = 0
            }
            return (s.lastMillis, s.counter, s.random.next())
        }
        var bytes = [UInt8](repeating: 0, count: 16)
        for i in 0..<6 { bytes[i] = UInt8(truncatingIfNeeded: millis >> (40 - 8 * UInt64(i))) }
        bytes[6] = 0x70 | UInt8(counter >> 8)
        bytes[7] = UInt8(truncatingIfNeeded: counter)
        for i in 0..<8 { bytes[8 + i] = UInt8(truncatingIfNeeded: tail >> (56 - 8 * UInt64(i))) }
        bytes[8] = 0x80 | (bytes[8] & 0x3F)
        return format(bytes)
    }

    /// Whether `text` has the shape of a task id (any UUID in canonical lowercase or uppercase form).
    public static func isValid(_ text: String) -> Bool {
        let utf8 = Array(text.utf8)
        guard utf8.count == 36 else { return false }
        for (i, c) in utf8.enumerated() {
            if i == 8 || i == 13 || i == 18 || i == 23 {
                if c != UInt8(ascii: "-") { return false }
            } else if !(c >= 48 && c <= 57) && !(c >= 97 && c <= 102) && !(c >= 65 && c <= 70) {
                return false
            }
        }
        return true
    }

    /// The Unix time in milliseconds a UUIDv7 task id was made at; nil for anything else (not an id, or a UUID of
    /// another version, whose first bits are no time).
    public static func millis(_ text: String) -> UInt64? {
        guard isValid(text) else { return nil }
        let utf8 = Array(text.utf8)
        guard utf8[14] == UInt8(ascii: "7") else { return nil }
        var millis: UInt64 = 0
        for c in utf8[0..<13] where c != UInt8(ascii: "-") {
            let digit: UInt8 = c <= 57 ? c - 48 : (c | 0x20) - 87
            millis = millis << 4 | UInt64(digit)
        }
        return millis
    }

    private static let hex = Array("0123456789abcdef".utf8)

    private static func format(_ bytes: [UInt8]) -> String {
        var out = [UInt8]()
        out.reserveCapacity(36)
        for (i, b) in bytes.enumerated() {
            if i == 4 || i == 6 || i == 8 || i == 10 { out.append(UInt8(ascii: "-")) }
            out.append(hex[Int(b >> 4)])
            out.append(hex[Int(b & 0x0F)])
        }
        return String(decoding: out, as: UTF8.self)
    }
}

/// Random 64-bit words from the kernel's generator (`getentropy`, that is `getrandom`), fetched 32 at a time: an id
/// needs one or two, and a `getrandom` call each (what `SystemRandomNumberGenerator` makes) was one or two system calls
/// on every sync call.
struct RandomWords {
    private var words = [UInt64](repeating: 0, count: 32)
    private var used = 32

    mutating func next() -> UInt64 {
        if used == words.count {
            refill()
            used = 0
        }
        defer { used += 1 }
        return words[used]
    }

    private mutating func refill() {
        let filled = words.withUnsafeMutableBytes { buffer -> Bool in
            // getentropy: one getrandom call for up to 256 bytes, answered in full (it blocks until the pool is ready).
            guard let base = buffer.baseAddress else { return false }
            return getentropy(base, buffer.count) == 0
        }
        guard !filled else { return }
        var generator = SystemRandomNumberGenerator()
        for i in words.indices { words[i] = generator.next() }
    }
}
