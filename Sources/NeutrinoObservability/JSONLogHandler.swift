import FoundationEssentials
import Glibc
import Logging
import NeutrinoCore

/// A swift-log handler that writes one JSON object per line to stderr:
/// `{"ts":"…","level":"info","logger":"neutrino.worker","msg":"task completed","task_id":"…",…}`.
/// Metadata values become strings (numbers stay as their text), so a log collector can index every field.
public struct JSONLogHandler: LogHandler {
    public var metadata: Logger.Metadata = [:]
    public var logLevel: Logger.Level
    public var metadataProvider: Logger.MetadataProvider?
    private let label: String

    public init(label: String, level: Logger.Level = .info) {
        self.label = label
        self.logLevel = level
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        let merged = mergedMetadata(metadata, metadataProvider, event.metadata)
        var w = JSONWriter(capacity: 256)
        w.beginObject()
        w.key("ts"); w.string(Timestamp.now().iso8601)
        w.key("level"); w.string(event.level.rawValue)
        w.key("logger"); w.string(label)
        w.key("msg"); w.string(event.message.description)
        for (key, value) in merged.sorted(by: { $0.key < $1.key }) where !["ts", "level", "logger", "msg"].contains(key) {
            w.key(key)
            Self.write(value, into: &w)
        }
        w.endObject()
        var bytes = w.bytes
        bytes.append(UInt8(ascii: "\n"))
        Self.output.write(bytes)
    }

    private static func write(_ value: Logger.Metadata.Value, into w: inout JSONWriter) {
        switch value {
        case .string(let s): w.string(s)
        case .stringConvertible(let c): w.string(c.description)
        case .array(let items):
            w.beginArray()
            for item in items { write(item, into: &w) }
            w.endArray()
        case .dictionary(let members):
            w.beginObject()
            for (k, v) in members.sorted(by: { $0.key < $1.key }) {
                w.key(k)
                write(v, into: &w)
            }
            w.endObject()
        }
    }

    /// One write(2) per line, so lines from several threads never interleave.
    static let output = LineOutput()
}

/// A handler's own metadata, then its provider's, then the event's (later keys win), as both handlers log them.
func mergedMetadata(
    _ own: Logger.Metadata, _ provider: Logger.MetadataProvider?, _ event: Logger.Metadata?
) -> Logger.Metadata {
    var merged = own
    if let provided = provider?.get() { merged.merge(provided) { _, new in new } }
    if let event { merged.merge(event) { _, new in new } }
    return merged
}

final class LineOutput: Sendable {
    func write(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { raw in
            var offset = 0
            while offset < raw.count {
                let n = Glibc.write(2, raw.baseAddress.map { $0 + offset }, raw.count - offset)
                if n <= 0 { return }
                offset += n
            }
        }
    }
}
