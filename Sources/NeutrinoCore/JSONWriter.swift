/// Builds compact JSON text into bytes. Used for every body the servers write, so raw JSON kept from
/// Python or the task log can be spliced in without parsing it again.
public struct JSONWriter: Sendable {
    public private(set) var bytes: [UInt8] = []
    private var needsComma: [Bool] = []

    public init(capacity: Int = 256) { bytes.reserveCapacity(capacity) }

    public var text: String { String(decoding: bytes, as: UTF8.self) }

    private mutating func separate() {
        if let last = needsComma.last {
            if last { bytes.append(UInt8(ascii: ",")) }
            needsComma[needsComma.count - 1] = true
        }
    }

    public mutating func beginObject() { separate(); bytes.append(UInt8(ascii: "{")); needsComma.append(false) }
    public mutating func endObject() { needsComma.removeLast(); bytes.append(UInt8(ascii: "}")) }
    public mutating func beginArray() { separate(); bytes.append(UInt8(ascii: "[")); needsComma.append(false) }
    public mutating func endArray() { needsComma.removeLast(); bytes.append(UInt8(ascii: "]")) }

    /// Writes `"key":`; the next value call fills it.
    public mutating func key(_ key: String) {
        separate()
        writeString(key)
        bytes.append(UInt8(ascii: ":"))
        needsComma[needsComma.count - 1] = false
    }

    public mutating func string(_ value: String) { separate(); writeString(value) }
    public mutating func bool(_ value: Bool) { separate(); bytes.append(contentsOf: value ? Array("true".utf8) : Array("false".utf8)) }
    public mutating func null() { separate(); bytes.append(contentsOf: [0x6E, 0x75, 0x6C, 0x6C]) }
    public mutating func int<I: BinaryInteger>(_ value: I) { separate(); bytes.append(contentsOf: String(value).utf8) }
    /// `Int` and `[UInt8]` (below) have overloads of their own: a generic public method runs unspecialised when
    /// called from another module, which made these two the worker's costliest lines of a reply.
    public mutating func int(_ value: Int) { separate(); bytes.append(contentsOf: String(value).utf8) }

    public mutating func double(_ value: Double) {
        separate()
        if !value.isFinite { bytes.append(contentsOf: [0x6E, 0x75, 0x6C, 0x6C]); return }
        bytes.append(contentsOf: JSONWriter.format(value).utf8)
    }

    /// Splices JSON text that is already valid (from Python's `json.dumps` or the task log).
    public mutating func raw<C: Collection>(_ json: C) where C.Element == UInt8 { separate(); bytes.append(contentsOf: json) }
    public mutating func raw(_ json: [UInt8]) { separate(); bytes.append(contentsOf: json) }
    public mutating func raw(_ json: String) { raw(json.utf8) }

    /// Raw JSON, or `null` when absent.
    public mutating func rawOrNull(_ json: String?) { if let json { raw(json) } else { null() } }
    public mutating func stringOrNull(_ value: String?) { if let value { string(value) } else { null() } }

    public mutating func value(_ value: JSONValue) {
        switch value {
        case .null: null()
        case .bool(let b): bool(b)
        case .number(let text): separate(); bytes.append(contentsOf: Array(text.utf8))
        case .string(let s): string(s)
        case .array(let items):
            beginArray()
            for item in items { self.value(item) }
            endArray()
        case .object(let members):
            beginObject()
            for k in members.keys.sorted() {
                key(k)
                self.value(members[k] ?? .null)
            }
            endObject()
        }
    }

    /// Milliseconds and similar: at most three decimals, no exponent for everyday magnitudes.
    public static func format(_ value: Double) -> String {
        let rounded = (value * 1000).rounded() / 1000
        if rounded == rounded.rounded(), abs(rounded) < 1e15 { return String(Int64(rounded)) }
        return String(rounded)
    }

    private static let hex = Array("0123456789abcdef".utf8)

    private mutating func writeString(_ s: String) {
        bytes.append(UInt8(ascii: "\""))
        for c in s.utf8 {
            switch c {
            case UInt8(ascii: "\""): bytes.append(0x5C); bytes.append(0x22)
            case UInt8(ascii: "\\"): bytes.append(0x5C); bytes.append(0x5C)
            case 0x0A: bytes.append(0x5C); bytes.append(UInt8(ascii: "n"))
            case 0x0D: bytes.append(0x5C); bytes.append(UInt8(ascii: "r"))
            case 0x09: bytes.append(0x5C); bytes.append(UInt8(ascii: "t"))
            case 0x08: bytes.append(0x5C); bytes.append(UInt8(ascii: "b"))
            case 0x0C: bytes.append(0x5C); bytes.append(UInt8(ascii: "f"))
            case 0..<0x20:
                bytes.append(contentsOf: Array("\\u00".utf8))
                bytes.append(JSONWriter.hex[Int(c >> 4)])
                bytes.append(JSONWriter.hex[Int(c & 0x0F)])
            default: bytes.append(c)
            }
        }
        bytes.append(UInt8(ascii: "\""))
    }
}

extension JSONWriter {
    /// `{"type","message","traceback"}`: how a task's error is stored in the task log and answered.
    public static func taskError(type: String, message: String, traceback: String? = nil) -> [UInt8] {
        var w = JSONWriter()
        w.beginObject()
        w.key("type"); w.string(type)
        w.key("message"); w.string(message)
        w.key("traceback"); w.stringOrNull(traceback)
        w.endObject()
        return w.bytes
    }

    /// `taskError` as text, the form task-log events carry.
    public static func taskErrorText(type: String, message: String) -> String {
        String(decoding: taskError(type: type, message: message), as: UTF8.self)
    }

    /// `{"error":{"type":…,"message":…}}`: the one shape of every error body the servers send.
    public static func errorBody(type: String, message: String, extra: (inout JSONWriter) -> Void = { _ in }) -> [UInt8] {
        var w = JSONWriter()
        w.beginObject()
        w.key("error")
        w.beginObject()
        w.key("type"); w.string(type)
        w.key("message"); w.string(message)
        extra(&w)
        w.endObject()
        w.endObject()
        return w.bytes
    }
}
