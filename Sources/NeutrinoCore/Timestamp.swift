import FoundationEssentials
import Glibc

/// A point in time as Unix milliseconds: what events carry and what the task log stores (as ISO-8601 text).
public struct Timestamp: Sendable, Hashable, Comparable, Codable {
    public var millis: Int64

    public init(millis: Int64) { self.millis = millis }

    public static func now() -> Timestamp {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Timestamp(millis: Int64(ts.tv_sec) * 1000 + Int64(ts.tv_nsec) / 1_000_000)
    }

    public static func < (lhs: Timestamp, rhs: Timestamp) -> Bool { lhs.millis < rhs.millis }

    /// `2026-11-24T10:40:46.123Z`: sorts as text in time order, which the task log's indexes rely on. Written
    /// byte by byte (the task log formats several per task; interpolating padded parts cost 2 % of the gateway's CPU).
    public var iso8601: String {
        let seconds = millis >= 0 ? millis / 1000 : (millis - 999) / 1000
        let ms = Int(millis - seconds * 1000)
        let days = seconds >= 0 ? seconds / 86_400 : (seconds - 86_399) / 86_400
        let secOfDay = Int(seconds - days * 86_400)
        let (y, m, d) = Timestamp.civil(fromDays: days)
        guard (0...9999).contains(y) else {
            // Outside four-digit years (not a time this system produces): the same fields, the year unpadded.
            func pad(_ v: Int, _ width: Int) -> String {
                let s = String(v)
                return s.count >= width ? s : String(repeating: "0", count: width - s.count) + s
            }
            return
                "\(pad(y, 4))-\(pad(m, 2))-\(pad(d, 2))T\(pad(secOfDay / 3600, 2)):\(pad(secOfDay / 60 % 60, 2)):\(pad(secOfDay % 60, 2)).\(pad(ms, 3))Z"
        }
        return String(unsafeUninitializedCapacity: 24) { b in
            func put(_ v: Int, _ width: Int, at end: Int) {
                var v = v
                for i in stride(from: end - 1, through: end - width, by: -1) {
                    b[i] = UInt8(truncatingIfNeeded: 48 + v % 10)
                    v /= 10
                }
            }
            put(y, 4, at: 4)
            b[4] = UInt8(ascii: "-")
            put(m, 2, at: 7)
            b[7] = UInt8(ascii: "-")
            put(d, 2, at: 10)
            b[10] = UInt8(ascii: "T")
            put(secOfDay / 3600, 2, at: 13)
            b[13] = UInt8(ascii: ":")
            put(secOfDay / 60 % 60, 2, at: 16)
            b[16] = UInt8(ascii: ":")
            put(secOfDay % 60, 2, at: 19)
            b[19] = UInt8(ascii: ".")
            put(ms, 3, at: 23)
            b[23] = UInt8(ascii: "Z")
            return 24
        }
    }

    /// `Thu, 03 Dec 2026 08:57:19 GMT`: HTTP's `Date` header (RFC 9110 5.6.7, IMF-fixdate), to the second.
    public var httpDate: String {
        let seconds = millis >= 0 ? millis / 1000 : (millis - 999) / 1000
        let days = seconds >= 0 ? seconds / 86_400 : (seconds - 86_399) / 86_400
        let secOfDay = Int(seconds - days * 86_400)
        let (y, m, d) = Timestamp.civil(fromDays: days)
        // 1970-01-01 was a Thursday.
        let weekday = Int(((days % 7) + 7 + 4) % 7)
        let names = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"]
        let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
        func two(_ v: Int) -> String { v < 10 ? "0\(v)" : String(v) }
        let year = (0...9999).contains(y) ? String(repeating: "0", count: 4 - String(y).count) + String(y) : String(y)
        return "\(names[weekday]), \(two(d)) \(months[m - 1]) \(year) \(two(secOfDay / 3600)):\(two(secOfDay / 60 % 60)):\(two(secOfDay % 60)) GMT"
    }

    /// Parses the form `iso8601` writes (also without milliseconds).
    public init?(iso8601 text: String) {
        let b = Array(text.utf8)
        func num(_ from: Int, _ len: Int) -> Int? {
            guard from + len <= b.count else { return nil }
            var v = 0
            for c in b[from..<(from + len)] {
                guard c >= 48 && c <= 57 else { return nil }
                v = v * 10 + Int(c - 48)
            }
            return v
        }
        guard b.count >= 20, let y = num(0, 4), let mo = num(5, 2), let d = num(8, 2),
            let h = num(11, 2), let mi = num(14, 2), let s = num(17, 2),
            (1...12).contains(mo), (1...31).contains(d), h < 24, mi < 60, s < 61
        else { return nil }
        var ms = 0
        if b.count >= 24, b[19] == UInt8(ascii: "."), let v = num(20, 3) { ms = v }
        let days = Timestamp.days(fromCivil: y, mo, d)
        millis = (days * 86_400 + Int64(h * 3600 + mi * 60 + s)) * 1000 + Int64(ms)
    }

    // Howard Hinnant's civil-from-days algorithms (proleptic Gregorian calendar).
    static func civil(fromDays z0: Int64) -> (Int, Int, Int) {
        let z = z0 + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let doe = z - era * 146_097
        let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let d = doy - (153 * mp + 2) / 5 + 1
        let m = mp < 10 ? mp + 3 : mp - 9
        let y = yoe + era * 400 + (m <= 2 ? 1 : 0)
        return (Int(y), Int(m), Int(d))
    }

    static func days(fromCivil y0: Int, _ m: Int, _ d: Int) -> Int64 {
        let y = Int64(m <= 2 ? y0 - 1 : y0)
        let era = (y >= 0 ? y : y - 399) / 400
        let yoe = y - era * 400
        let mp = Int64(m > 2 ? m - 3 : m + 9)
        let doy = (153 * mp + 2) / 5 + Int64(d) - 1
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
        return era * 146_097 + doe - 719_468
    }
}

extension Duration {
    /// Whole milliseconds (truncated), for windows and deadlines kept as Unix-millisecond arithmetic.
    public var wholeMilliseconds: Int64 {
        components.seconds * 1000 + components.attoseconds / 1_000_000_000_000_000
    }

    /// Milliseconds with the fraction, for latencies.
    public var milliseconds: Double {
        Double(components.seconds) * 1000 + Double(components.attoseconds) / 1e15
    }
}
