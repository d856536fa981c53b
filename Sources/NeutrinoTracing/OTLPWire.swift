import Logging
import NeutrinoCore
import Tracing

/// What crosses between the executables (`PluginTracer`, `OTLPPlugin`) and the exporter library
/// (`NeutrinoOTLPExporter`), defined once for both sides: the C callback types, span kinds, log levels and span status
/// codes as numbers, and a span's attributes as JSON, `{KEY: [TYPE, VALUE]}` with `TYPE` one of `i` (an integer), `d` (a double), `b`, `s`, and `I`,
/// `D`, `B`, `S` for arrays of them; numbers travel as text (exact for every Int64, and for infinities and NaN).
public enum OTLPWire {
    /// A log line for the executable's logger: level (swift-log's `Logger.Level` order, trace = 0), text, context.
    public typealias Log = @convention(c) (Int32, UnsafePointer<CChar>, UnsafeMutableRawPointer?) -> Void
    /// Called once the exporter's service has stopped, with the context given.
    public typealias Done = @convention(c) (UnsafeMutableRawPointer?) -> Void

    private static let kinds: [SpanKind] = [.internal, .server, .client, .producer, .consumer]

    public static func code(_ kind: SpanKind) -> Int32 { Int32(kinds.firstIndex(of: kind) ?? 0) }

    public static func kind(code: Int32) -> SpanKind { kinds.indices.contains(Int(code)) ? kinds[Int(code)] : .internal }

    /// A log level as `Log` carries it: its place in swift-log's order (trace = 0).
    public static func code(_ level: Logger.Level) -> Int32 { Int32(Logger.Level.allCases.firstIndex(of: level) ?? 0) }

    public static func level(code: Int32) -> Logger.Level {
        let levels = Logger.Level.allCases
        return levels.indices.contains(Int(code)) ? levels[Int(code)] : .info
    }

    /// A span status code as the span's details carry it: 0 ok, 1 error.
    public static func code(_ status: SpanStatus.Code) -> Int { status == .ok ? 0 : 1 }

    public static func status(code: Int) -> SpanStatus.Code { code == 0 ? .ok : .error }

    public static func write(_ attributes: SpanAttributes, to w: inout JSONWriter) {
        w.beginObject()
        attributes.forEach { key, attribute in
            let entry: (type: String, value: JSONValue)? =
                switch attribute {
                case .int32(let v): ("i", .string(String(v)))
                case .int64(let v): ("i", .string(String(v)))
                case .double(let v): ("d", .string(String(v)))
                case .bool(let v): ("b", .bool(v))
                case .string(let v): ("s", .string(v))
                case .stringConvertible(let v): ("s", .string(v.description))
                case .int32Array(let v): ("I", .array(v.map { .string(String($0)) }))
                case .int64Array(let v): ("I", .array(v.map { .string(String($0)) }))
                case .doubleArray(let v): ("D", .array(v.map { .string(String($0)) }))
                case .boolArray(let v): ("B", .array(v.map { .bool($0) }))
                case .stringArray(let v): ("S", .array(v.map { .string($0) }))
                case .stringConvertibleArray(let v): ("S", .array(v.map { .string($0.description) }))
                default: nil
                }
            guard let entry else { return }
            w.key(key)
            w.value(.array([.string(entry.type), entry.value]))
        }
        w.endObject()
    }

    public static func attributes(_ value: JSONValue) -> SpanAttributes {
        var attributes = SpanAttributes()
        for (key, entry) in value.objectValue ?? [:] {
            guard let pair = entry.arrayValue, pair.count == 2, let type = pair[0].stringValue else { continue }
            let item = pair[1]
            let list = item.arrayValue ?? []
            let attribute: SpanAttribute? =
                switch type {
                case "i": item.stringValue.flatMap { Int64($0) }.map { .int64($0) }
                case "d": item.stringValue.flatMap { Double($0) }.map { .double($0) }
                case "b": item.boolValue.map { .bool($0) }
                case "s": item.stringValue.map { .string($0) }
                case "I": .int64Array(list.compactMap { $0.stringValue.flatMap { Int64($0) } })
                case "D": .doubleArray(list.compactMap { $0.stringValue.flatMap { Double($0) } })
                case "B": .boolArray(list.compactMap { $0.boolValue })
                case "S": .stringArray(list.compactMap { $0.stringValue })
                default: nil
                }
            if let attribute { attributes[key] = attribute }
        }
        return attributes
    }
}

public struct DictionaryInjector: Injector {
    public init() {}
    public func inject(_ value: String, forKey key: String, into carrier: inout [String: String]) { carrier[key] = value }
}

public struct DictionaryExtractor: Extractor {
    public init() {}
    public func extract(key: String, from carrier: [String: String]) -> String? { carrier[key] }
}
