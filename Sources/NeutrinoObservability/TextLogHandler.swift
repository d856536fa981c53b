import Logging
import NeutrinoCore

/// swift-log's `StreamLogHandler` line format (`<time> <level> <label> : <metadata> [<source>] <message>`) on stderr,
/// with the metadata formatted when a line is written rather than each time a key is set. Hummingbird sets a request
/// id on every request's logger; `StreamLogHandler` formats its whole metadata on each such set, which was about
/// 1.5 % of a sync call's CPU in both the gateway and the worker with no line written (`perf`, bench/README.md).
public struct TextLogHandler: LogHandler {
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
        var line = "\(Timestamp.now().iso8601) \(event.level) \(label) :"
        for (key, value) in merged.sorted(by: { $0.key < $1.key }) { line += " \(key)=\(value)" }
        line += " [\(event.source)] \(event.message)\n"
        JSONLogHandler.output.write(Array(line.utf8))
    }
}
