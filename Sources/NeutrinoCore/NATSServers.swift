/// The `--nats` flag's value: one NATS server URL, or the members of a cluster comma-separated.
public enum NATSServers {
    /// The URLs in `text` (blanks around each ignored), or nil when there is none or one is malformed: a URL is
    /// `nats://HOST:PORT` or `tls://HOST:PORT` (credentials allowed), or `HOST:PORT` (nats:// assumed by cnats).
    public static func parse(_ text: String) -> [String]? {
        var urls: [String] = []
        for entry in text.split(separator: ",", omittingEmptySubsequences: false) {
            let url = String(entry.drop(while: isBlank).reversed().drop(while: isBlank).reversed())
            guard !url.isEmpty, !url.contains(where: isBlank) else { return nil }
            var rest = Substring(url)
            if let range = url.firstRange(of: "://") {
                guard ["nats", "tls"].contains(url[..<range.lowerBound].lowercased()) else { return nil }
                rest = url[range.upperBound...]
            }
            guard !rest.isEmpty, !rest.hasPrefix("/"), !rest.hasPrefix(":") else { return nil }
            urls.append(url)
        }
        return urls.isEmpty ? nil : urls
    }

    /// `text` (one URL or several, comma-separated) with any credentials in a URL (`nats://user:password@host`)
    /// replaced by `***`, for logs.
    public static func redacted(_ text: String) -> String {
        text.split(separator: ",", omittingEmptySubsequences: false).map { entry -> String in
            guard let at = entry.lastIndex(of: "@") else { return String(entry) }
            let scheme = entry.firstRange(of: "://").map { String(entry[..<$0.upperBound]) } ?? ""
            return scheme + "***" + entry[at...]
        }.joined(separator: ",")
    }

    private static func isBlank(_ c: Character) -> Bool { c == " " || c == "\t" }
}
