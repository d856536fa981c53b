/// The call lane's wire format: the gateway's sync calls to a worker of its own, framed without HTTP.
///
/// A connection starts with the client's 8-byte `preface`; then each request and each answer is one frame:
///
///     u32 length of what follows (big-endian)
///     u32 call id (the answer repeats its request's)
///     request: u16 task-name length, the name | answer: u16 HTTP status
///     u16 field count, then each field: u16 name length, name, u16 value length, value
///     the body (the rest of the frame)
///
/// Fields are the HTTP headers the same call carries over HTTP (`X-Neutrino-Task-Id`, `traceparent`, ...), so both
/// paths share one meaning. Every length is checked against what is left of the frame before it is used.
public enum CallFrame {
    public static let preface: [UInt8] = Array("NTRNCL01".utf8)
    /// The most fields one frame may carry, and the longest name or value (a u16).
    public static let maxFields = 64
    /// Room in a frame beyond its body: the id, the name or status, the fields.
    public static let headroom = 64 << 10

    /// One header, as a frame carries it.
    public struct Field: Sendable, Hashable {
        public var name: String
        public var value: String

        public init(_ name: String, _ value: String) {
            self.name = name
            self.value = value
        }
    }

    /// One frame: its call id, what its kind carries before the fields (a request's task name, an answer's HTTP
    /// status), the fields, and the body.
    public struct Frame<Head: Sendable & Hashable>: Sendable, Hashable {
        public var id: UInt32
        public var head: Head
        public var fields: [Field]
        public var body: [UInt8]

        public init(id: UInt32, head: Head, fields: [Field], body: [UInt8]) {
            self.id = id
            self.head = head
            self.fields = fields
            self.body = body
        }
    }

    /// A sync call: the task's name, and the request's headers and body.
    public typealias Request = Frame<String>
    /// A call's answer: its HTTP status, headers and body.
    public typealias Answer = Frame<Int>

    public enum DecodeError: Error, Equatable {
        /// A length runs past the frame, a count or a status is out of range, or a name is not UTF-8.
        case malformed(String)
    }

    // MARK: Encoding

    /// The whole request frame, its length prefix included. Fields or a name that do not fit a u16 are cut (the
    /// gateway's own values never come near).
    public static func encode(_ r: Request) -> [UInt8] {
        encode(id: r.id, fields: r.fields, body: r.body) { w in w.string(r.head) }
    }

    public static func encode(_ a: Answer) -> [UInt8] {
        encode(id: a.id, fields: a.fields, body: a.body) { w in w.u16(UInt16(clamping: a.head)) }
    }

    private static func encode(id: UInt32, fields: [Field], body: [UInt8], head: (inout Writer) -> Void) -> [UInt8] {
        var w = Writer()
        w.bytes.reserveCapacity(64 + body.count + fields.reduce(0) { $0 + $1.name.utf8.count + $1.value.utf8.count + 4 })
        w.u32(0)  // the length, filled in below
        w.u32(id)
        head(&w)
        let kept = fields.prefix(maxFields)
        w.u16(UInt16(kept.count))
        for field in kept {
            w.string(field.name)
            w.string(field.value)
        }
        w.bytes.append(contentsOf: body)
        let length = UInt32(clamping: w.bytes.count - 4)
        w.bytes[0] = UInt8(truncatingIfNeeded: length >> 24)
        w.bytes[1] = UInt8(truncatingIfNeeded: length >> 16)
        w.bytes[2] = UInt8(truncatingIfNeeded: length >> 8)
        w.bytes[3] = UInt8(truncatingIfNeeded: length)
        return w.bytes
    }

    private struct Writer {
        var bytes: [UInt8] = []
        mutating func u16(_ v: UInt16) {
            bytes.append(UInt8(truncatingIfNeeded: v >> 8))
            bytes.append(UInt8(truncatingIfNeeded: v))
        }
        mutating func u32(_ v: UInt32) {
            u16(UInt16(truncatingIfNeeded: v >> 16))
            u16(UInt16(truncatingIfNeeded: v))
        }
        mutating func string(_ s: String) {
            let utf8 = s.utf8.prefix(Int(UInt16.max))
            u16(UInt16(utf8.count))
            bytes.append(contentsOf: utf8)
        }
    }

    // MARK: Decoding

    /// The length a frame's first four bytes declare (what follows them); 0 when fewer than four are given.
    public static func declaredLength(_ prefix: [UInt8]) -> Int {
        guard prefix.count >= 4 else { return 0 }
        return Int(prefix[0]) << 24 | Int(prefix[1]) << 16 | Int(prefix[2]) << 8 | Int(prefix[3])
    }

    /// A request frame's content (after its length prefix).
    public static func decodeRequest(_ frame: UnsafeRawBufferPointer) throws(DecodeError) -> Request {
        var r = Reader(frame)
        let id = try r.u32()
        let task = try r.string()
        let fields = try r.fields()
        return Request(id: id, head: task, fields: fields, body: r.rest())
    }

    /// An answer frame's content (after its length prefix).
    public static func decodeAnswer(_ frame: UnsafeRawBufferPointer) throws(DecodeError) -> Answer {
        var r = Reader(frame)
        let id = try r.u32()
        let status = Int(try r.u16())
        guard (100...599).contains(status) else { throw .malformed("status \(status) is not an HTTP status") }
        let fields = try r.fields()
        return Answer(id: id, head: status, fields: fields, body: r.rest())
    }

    /// `bytes` as a string if they are UTF-8. ASCII (every name and almost every value) is checked by one scan and
    /// made without the generic validating initialiser, whose metadata lookups were 2 % of a worker's CPU per call.
    static func text(_ bytes: UnsafeRawBufferPointer) -> String? {
        if !bytes.contains(where: { $0 >= 0x80 }) { return String(decoding: bytes, as: UTF8.self) }
        return String(validating: bytes, as: UTF8.self)
    }

    private struct Reader {
        let bytes: UnsafeRawBufferPointer
        var at = 0
        init(_ bytes: UnsafeRawBufferPointer) { self.bytes = bytes }

        mutating func take(_ n: Int) throws(DecodeError) -> UnsafeRawBufferPointer {
            guard n >= 0, n <= bytes.count - at else { throw .malformed("a length runs past the end of the frame") }
            defer { at += n }
            return UnsafeRawBufferPointer(rebasing: bytes[at..<(at + n)])
        }
        mutating func u16() throws(DecodeError) -> UInt16 {
            let b = try take(2)
            return UInt16(b[0]) << 8 | UInt16(b[1])
        }
        mutating func u32() throws(DecodeError) -> UInt32 {
            let b = try take(4)
            return UInt32(b[0]) << 24 | UInt32(b[1]) << 16 | UInt32(b[2]) << 8 | UInt32(b[3])
        }
        mutating func string() throws(DecodeError) -> String {
            let b = try take(Int(try u16()))
            guard let s = CallFrame.text(b) else { throw .malformed("a name or value is not UTF-8") }
            return s
        }
        mutating func fields() throws(DecodeError) -> [Field] {
            let count = Int(try u16())
            guard count <= CallFrame.maxFields else { throw .malformed("\(count) fields (at most \(CallFrame.maxFields))") }
            var fields: [Field] = []
            fields.reserveCapacity(count)
            for _ in 0..<count {
                let name = try string()
                fields.append(Field(name, try string()))
            }
            return fields
        }
        func rest() -> [UInt8] { Array(bytes[at...]) }
    }
}

extension CallFrame.Frame where Head == String {
    /// A request's task name.
    public var task: String { head }
}

extension CallFrame.Frame where Head == Int {
    /// An answer's HTTP status.
    public var status: Int { head }
}
