/// A W3C Trace Context `traceparent` value (`00-<32 hex trace id>-<16 hex parent span id>-<2 hex flags>`), checked:
/// the header arrives from clients, from the gateway over HTTP and from NATS messages, and is handed to Python and
/// stored in the task log, so only a well-formed value is kept (https://www.w3.org/TR/trace-context/#traceparent-header).
public struct TraceParent: Sendable, Hashable, CustomStringConvertible {
    /// The header value, lower-case, exactly 55 characters.
    public let value: String

    /// Parses `text`; nil unless it is a valid version-00 `traceparent` (a later version is read as 00 when its first
    /// four fields have the 00 shape, as the specification asks). All-zero ids and version `ff` are invalid.
    public init?(_ text: some StringProtocol) {
        let bytes = Array(text.utf8)
        guard bytes.count >= 55, bytes.count <= 512 else { return nil }
        func isHex(_ c: UInt8) -> Bool { (c >= 0x30 && c <= 0x39) || (c >= 0x61 && c <= 0x66) }
        func hexRun(_ range: Range<Int>) -> Bool { range.allSatisfy { isHex(bytes[$0]) } }
        func allZero(_ range: Range<Int>) -> Bool { range.allSatisfy { bytes[$0] == 0x30 } }
        guard bytes[2] == 0x2D, bytes[35] == 0x2D, bytes[52] == 0x2D, hexRun(0..<2), hexRun(3..<35), hexRun(36..<52),
            hexRun(53..<55)
        else { return nil }
        let version = (bytes[0], bytes[1])
        if version == (0x66, 0x66) { return nil }
        if version == (0x30, 0x30) {
            guard bytes.count == 55 else { return nil }
        } else if bytes.count > 55 {
            guard bytes[55] == 0x2D else { return nil }
        }
        guard !allZero(3..<35), !allZero(36..<52) else { return nil }
        value = "00" + String(decoding: bytes[2..<55], as: UTF8.self)
    }

    /// The trace id: 32 lower-case hex digits.
    public var traceID: String { String(value.utf8.dropFirst(3).prefix(32))! }

    /// The parent span id: 16 lower-case hex digits.
    public var spanID: String { String(value.utf8.dropFirst(36).prefix(16))! }

    public var description: String { value }

    /// Whether `text` is a trace id as the task log stores it: 32 lower-case hex digits, not all zero.
    public static func isTraceID(_ text: some StringProtocol) -> Bool {
        let bytes = Array(text.utf8)
        return bytes.count == 32 && bytes.allSatisfy { ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x61 && $0 <= 0x66) }
            && bytes.contains { $0 != 0x30 }
    }
}
