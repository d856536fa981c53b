/// The subset of JSON Schema (2020-12) that the SDK's manifest generator writes, compiled once per task
/// and checked against every request's `args`: `type`, `properties`, `required`, `additionalProperties`,
/// `items`, `anyOf`, `oneOf`, `enum`, `const` and `$ref` into `#/components/schemas`. Annotations
/// (`default`, `title`, `description`, …) are ignored; an unknown keyword is ignored too, as JSON Schema says.
public indirect enum ArgumentSchema: Sendable, Hashable {
    case anything
    case nothing
    case node(Node)

    public struct Node: Sendable, Hashable {
        public var types: Set<String>?
        public var properties: [String: ArgumentSchema] = [:]
        public var required: [String] = []
        public var additionalProperties: ArgumentSchema = .anything
        public var items: ArgumentSchema?
        public var anyOf: [ArgumentSchema]?
        public var oneOf: [ArgumentSchema]?
        public var enumValues: [JSONValue]?
        public var constValue: JSONValue?
        public var ref: String?
    }

    /// One reason a value does not match, with where in the document it is.
    public struct Issue: Sendable, Hashable, CustomStringConvertible {
        public var path: String
        public var message: String
        public var description: String { "\(path): \(message)" }
        public init(path: String, message: String) {
            self.path = path
            self.message = message
        }
    }

    public struct CompileError: Error, Sendable, CustomStringConvertible {
        public var message: String
        public var description: String { message }
    }

    /// Compiles `schema`; `$ref`s are resolved lazily against `definitions` (name → schema) when validating.
    public init(_ schema: JSONValue) throws(CompileError) {
        switch schema {
        case .bool(let b): self = b ? .anything : .nothing
        case .object(let m):
            if m.isEmpty { self = .anything; return }
            var node = Node()
            if let t = m["type"] {
                switch t {
                case .string(let s): node.types = [s]
                case .array(let a): node.types = Set(a.compactMap(\.stringValue))
                default: throw CompileError(message: "'type' must be a string or a list of strings")
                }
            }
            if let props = m["properties"]?.objectValue {
                for (k, v) in props { node.properties[k] = try ArgumentSchema(v) }
            }
            if let req = m["required"]?.arrayValue { node.required = req.compactMap(\.stringValue) }
            if let ap = m["additionalProperties"] { node.additionalProperties = try ArgumentSchema(ap) }
            if let items = m["items"] { node.items = try ArgumentSchema(items) }
            if let any = m["anyOf"]?.arrayValue { node.anyOf = try any.map { v throws(CompileError) in try ArgumentSchema(v) } }
            if let one = m["oneOf"]?.arrayValue { node.oneOf = try one.map { v throws(CompileError) in try ArgumentSchema(v) } }
            if let e = m["enum"]?.arrayValue { node.enumValues = e }
            if let c = m["const"] { node.constValue = c }
            if let r = m["$ref"] {
                guard let s = r.stringValue, s.hasPrefix(ArgumentSchema.refPrefix) else {
                    throw CompileError(message: "only '$ref' into \(ArgumentSchema.refPrefix)… is supported")
                }
                node.ref = String(s.dropFirst(ArgumentSchema.refPrefix.count))
            }
            self = .node(node)
        default:
            throw CompileError(message: "a schema must be an object or a boolean")
        }
    }

    public static let refPrefix = "#/components/schemas/"

    /// Where in the document a value is: built as the checker descends, rendered as text (`args.points[2].x`) only
    /// for the issues that are reported.
    indirect enum Location: Sendable {
        case root(String)
        case key(Location, String)
        case index(Location, Int)

        var text: String {
            switch self {
            case .root(let name): name
            case .key(let parent, let key): parent.text + "." + ArgumentSchema.abbreviate(key)
            case .index(let parent, let i): parent.text + "[\(i)]"
            }
        }
    }

    /// The issues found in a document: the first `limit` kept with their path, every one counted.
    public struct Issues: Sendable {
        public private(set) var items: [Issue] = []
        /// How many issues were found in all (`items` holds the first `limit`).
        public private(set) var count = 0
        public let limit: Int
        /// Stop looking once `limit` issues are found (trial matches of `anyOf` branches).
        let stopEarly: Bool

        public init(limit: Int = 20) {
            self.limit = max(1, limit)
            self.stopEarly = false
        }

        init(limit: Int, stopEarly: Bool) {
            self.limit = max(1, limit)
            self.stopEarly = stopEarly
        }

        public var isEmpty: Bool { count == 0 }
        var saturated: Bool { stopEarly && count >= limit }

        public mutating func append(_ issue: Issue) {
            count += 1
            if items.count < limit { items.append(issue) }
        }

        mutating func add(_ location: Location, _ message: @autoclosure () -> String) {
            count += 1
            if items.count < limit { items.append(Issue(path: location.text, message: message())) }
        }

        mutating func merge(_ other: Issues) {
            for issue in other.items { append(issue) }
            count += other.count - other.items.count
        }
    }

    /// A document checked against the schema: the issues, and the value to forward (identical to the input except
    /// that a whole number given for an `integer` is written as an integer literal: `1e3` and `1000.0` become `1000`).
    public struct Conformance: Sendable {
        public var value: JSONValue
        public var issues: Issues
    }

    /// Checks `value`, keeping the first `limit` issues; see `Conformance`.
    ///
    /// Besides the schema, every number anywhere in the document must reach Python as written: an integer literal
    /// (no fraction or exponent, which Python reads as `int`) must fit 64 bits, and any other number (read as a
    /// `float`) must be finite.
    public func conform(
        _ value: JSONValue, at path: String = "args", definitions: [String: ArgumentSchema] = [:],
        limit: Int = 20
    ) -> Conformance {
        var issues = Issues(limit: limit)
        ArgumentSchema.checkNumbers(value, at: .root(path), &issues)
        let conformed = walk(value, at: .root(path), definitions, &issues, depth: 0)
        return Conformance(value: conformed, issues: issues)
    }

    /// Every issue (up to `limit`) that makes `value` not match; empty when it matches.
    public func validate(
        _ value: JSONValue, at path: String = "args",
        definitions: [String: ArgumentSchema] = [:], limit: Int = 20
    ) -> [Issue] {
        conform(value, at: path, definitions: definitions, limit: limit).issues.items
    }

    static let integerRange = "\(JSONNumber.minInteger) to \(JSONNumber.maxInteger)"

    /// Numbers Python would not receive as written: integer literals beyond 64 bits, floats that overflow.
    static func checkNumbers(_ value: JSONValue, at location: Location, _ issues: inout Issues) {
        switch value {
        case .number(let text):
            if JSONNumber.isIntegerLiteral(text) {
                if case .integerOutOfRange = JSONNumber.classify(text) {
                    issues.add(location, "integer \(abbreviate(text)) is outside the 64-bit range (\(integerRange))")
                }
            } else if !JSONNumber.isFiniteDouble(text) {
                issues.add(location, "number \(abbreviate(text)) is too large for a 64-bit float (it would be infinite)")
            }
        case .array(let items):
            for (i, item) in items.enumerated() { checkNumbers(item, at: .index(location, i), &issues) }
        case .object(let members):
            for key in members.keys.sorted() {
                if let v = members[key] { checkNumbers(v, at: .key(location, key), &issues) }
            }
        case .null, .bool, .string:
            return
        }
    }

    private func walk(
        _ input: JSONValue, at location: Location, _ definitions: [String: ArgumentSchema],
        _ issues: inout Issues, depth: Int
    ) -> JSONValue {
        if issues.saturated { return input }
        guard depth < 64 else { issues.add(location, "schema nesting too deep"); return input }
        guard case .node(let n) = self else {
            if case .nothing = self { issues.add(location, "no value is allowed here") }
            return input
        }
        var value = input
        if let ref = n.ref {
            guard let target = definitions[ref] else {
                issues.add(location, "schema '\(ref)' is not defined in the manifest")
                return value
            }
            value = target.walk(value, at: location, definitions, &issues, depth: depth + 1)
        }
        if let types = n.types {
            guard ArgumentSchema.matches(value, types: types) else {
                let expected = types.sorted().joined(separator: " or ")
                issues.add(location, "expected \(expected), got \(value.schemaTypeName)")
                return value
            }
            if types.contains("integer"), case .number(let text) = value {
                switch JSONNumber.classify(text) {
                case .integer(let whole):
                    value = .number(String(whole))
                case .integerOutOfRange where !types.contains("number"):
                    // Literals that cannot reach Python at all were reported by checkNumbers.
                    if !JSONNumber.isIntegerLiteral(text) && JSONNumber.isFiniteDouble(text) {
                        issues.add(
                            location, "integer \(ArgumentSchema.abbreviate(text)) is outside the 64-bit range (\(ArgumentSchema.integerRange))")
                    }
                    return value
                default:
                    break
                }
            }
        }
        if let e = n.enumValues, !e.contains(where: { ArgumentSchema.equal($0, value) }) {
            issues.add(location, "must be one of \(ArgumentSchema.abbreviate(e.map(\.jsonText).joined(separator: ", "), limit: 200))")
        }
        if let c = n.constValue, !ArgumentSchema.equal(c, value) {
            issues.add(location, "must be \(ArgumentSchema.abbreviate(c.jsonText, limit: 200))")
        }
        if let branches = n.anyOf ?? n.oneOf {
            let exclusive = n.oneOf != nil
            var matched: [JSONValue] = []
            for branch in branches {
                var trial = Issues(limit: 1, stopEarly: true)
                let v = branch.walk(value, at: location, definitions, &trial, depth: depth + 1)
                if trial.isEmpty {
                    matched.append(v)
                    if !exclusive || matched.count > 1 { break }
                }
            }
            if matched.isEmpty {
                // Report the branch closest to matching: the one with the fewest issues.
                var best: Issues?
                for branch in branches {
                    var attempt = Issues(limit: issues.limit)
                    _ = branch.walk(value, at: location, definitions, &attempt, depth: depth + 1)
                    if best == nil || attempt.count < (best?.count ?? 0) { best = attempt }
                }
                if let best, !best.isEmpty {
                    issues.merge(best)
                } else {
                    issues.add(location, "matches none of the allowed forms")
                }
                return value
            } else if exclusive && matched.count > 1 {
                issues.add(location, "matches more than one of the allowed forms")
                return value
            }
            value = matched[0]
        }
        if case .object(let members) = value {
            for key in n.required where members[key] == nil {
                issues.add(location, "missing required field '\(ArgumentSchema.abbreviate(key))'")
            }
            var out = members
            for key in members.keys.sorted() {
                if issues.saturated { break }
                guard let v = members[key] else { continue }
                let child = Location.key(location, key)
                if let s = n.properties[key] {
                    out[key] = s.walk(v, at: child, definitions, &issues, depth: depth + 1)
                } else if case .nothing = n.additionalProperties {
                    issues.add(child, "unexpected field '\(ArgumentSchema.abbreviate(key))'")
                } else {
                    out[key] = n.additionalProperties.walk(v, at: child, definitions, &issues, depth: depth + 1)
                }
            }
            value = .object(out)
        }
        if case .array(let items) = value, let itemSchema = n.items {
            var out: [JSONValue] = []
            out.reserveCapacity(items.count)
            for (i, item) in items.enumerated() {
                out.append(itemSchema.walk(item, at: .index(location, i), definitions, &issues, depth: depth + 1))
            }
            value = .array(out)
        }
        return value
    }

    /// Text shown in an issue, cut to `limit` bytes (keys and numbers come from the request and can be huge).
    public static func abbreviate(_ text: String, limit: Int = 64) -> String {
        guard text.utf8.count > limit else { return text }
        var out = ""
        var used = 0
        for ch in text {
            let size = ch.utf8.count
            if used + size > limit { break }
            out.append(ch)
            used += size
        }
        return out + "…(\(text.utf8.count) bytes)"
    }

    static func matches(_ value: JSONValue, types: Set<String>) -> Bool {
        let t = value.schemaTypeName
        return types.contains(t) || (t == "integer" && types.contains("number"))
    }

    /// JSON equality: numbers by value (whole numbers exactly), objects regardless of key order.
    static func equal(_ a: JSONValue, _ b: JSONValue) -> Bool {
        switch (a, b) {
        case (.number(let x), .number(let y)):
            if case .integer(let i) = JSONNumber.classify(x), case .integer(let j) = JSONNumber.classify(y) { return i == j }
            return Double(x) == Double(y)
        case (.array(let x), .array(let y)): return x.count == y.count && zip(x, y).allSatisfy { equal($0, $1) }
        case (.object(let x), .object(let y)):
            return x.count == y.count && x.allSatisfy { k, v in y[k].map { equal(v, $0) } ?? false }
        default: return a == b
        }
    }
}
