/// Exact analysis of a JSON number's text, without going through `Double`: whether its value is a whole number,
/// and which one. `1e3`, `1000.0` and `10000e-1` are all the integer 1000; `1.5` and `1e-400` are not integers.
///
/// The gateway uses it to deliver an integral number given for an `integer` parameter as a Python `int`, and to
/// refuse numbers Python would not receive as written (an integer literal beyond 64 bits, a float that overflows
/// to infinity).
public enum JSONNumber {
    public enum Kind: Sendable, Hashable {
        /// A whole number that fits a signed 64-bit integer.
        case integer(Int64)
        /// A whole number beyond the signed 64-bit range.
        case integerOutOfRange
        /// Not a whole number.
        case fractional
        /// Not a JSON number at all.
        case invalid

        public var isIntegral: Bool {
            switch self {
            case .integer, .integerOutOfRange: true
            case .fractional, .invalid: false
            }
        }
    }

    /// The smallest and largest integers a parameter accepts (signed 64-bit).
    public static let minInteger = Int64.min
    public static let maxInteger = Int64.max

    /// Classifies JSON number text (RFC 8259 grammar: `-? int frac? exp?`).
    public static func classify(_ text: String) -> Kind {
        Array(text.utf8).withUnsafeBufferPointer { classify($0) }
    }

    static func classify(_ b: UnsafeBufferPointer<UInt8>) -> Kind {
        var i = 0
        let n = b.count
        var negative = false
        if i < n, b[i] == UInt8(ascii: "-") { negative = true; i += 1 }
        // Significant digits of integer and fraction parts, leading zeros dropped.
        var digits: [UInt8] = []
        var sawDigit = false
        while i < n, b[i] >= 48, b[i] <= 57 {
            sawDigit = true
            if !(digits.isEmpty && b[i] == 48) { digits.append(b[i] - 48) }
            i += 1
        }
        guard sawDigit else { return .invalid }
        var fractionDigits = 0
        if i < n, b[i] == UInt8(ascii: ".") {
            i += 1
            var any = false
            while i < n, b[i] >= 48, b[i] <= 57 {
                any = true
                if !(digits.isEmpty && b[i] == 48) { digits.append(b[i] - 48) }
                fractionDigits += 1
                i += 1
            }
            guard any else { return .invalid }
        }
        // The exponent saturates: a billion is far beyond any value that could be an in-range integer.
        var exponent = 0
        if i < n, b[i] == UInt8(ascii: "e") || b[i] == UInt8(ascii: "E") {
            i += 1
            var expNegative = false
            if i < n, b[i] == UInt8(ascii: "+") || b[i] == UInt8(ascii: "-") { expNegative = b[i] == UInt8(ascii: "-"); i += 1 }
            var any = false
            while i < n, b[i] >= 48, b[i] <= 57 {
                any = true
                if exponent < 1_000_000_000 { exponent = exponent * 10 + Int(b[i] - 48) }
                i += 1
            }
            guard any else { return .invalid }
            if expNegative { exponent = -exponent }
        }
        guard i == n else { return .invalid }
        // value = digits × 10^(exponent − fractionDigits); drop trailing zeros into the exponent.
        var scale = exponent - fractionDigits
        while let last = digits.last, last == 0 { digits.removeLast(); scale += 1 }
        if digits.isEmpty { return .integer(0) }
        if scale < 0 { return .fractional }
        if digits.count + scale > 19 { return .integerOutOfRange }
        var magnitude: UInt64 = 0
        for d in digits + Array(repeating: 0, count: scale) {
            let (m, o1) = magnitude.multipliedReportingOverflow(by: 10)
            let (s, o2) = m.addingReportingOverflow(UInt64(d))
            if o1 || o2 { return .integerOutOfRange }
            magnitude = s
        }
        if negative {
            if magnitude == UInt64(Int64.max) + 1 { return .integer(Int64.min) }
            return magnitude <= UInt64(Int64.max) ? .integer(-Int64(magnitude)) : .integerOutOfRange
        }
        return magnitude <= UInt64(Int64.max) ? .integer(Int64(magnitude)) : .integerOutOfRange
    }

    /// Whether the text is an integer literal (no fraction, no exponent): Python's `json` reads those as `int`.
    public static func isIntegerLiteral(_ text: String) -> Bool {
        !text.utf8.contains { $0 == UInt8(ascii: ".") || $0 == UInt8(ascii: "e") || $0 == UInt8(ascii: "E") }
    }

    /// Whether the value, read as a binary64 float (what Python's `json` makes of a non-integer literal), is finite.
    /// Values too small for a double round to 0.0 and count as finite.
    public static func isFiniteDouble(_ text: String) -> Bool {
        Double(text)?.isFinite ?? false
    }
}
