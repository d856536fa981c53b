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

    /// Every issue (up to `limit`) that makes `value` not match; empty when it matches.
    public func validate(_ value: JSONValue, at path: String = "args",
                         definitions: [String: ArgumentSchema] = [:], limit: Int = 20) -> [Issue] {
        var issues: [Issue] = []
        check(value, path: path, definitions: definitions, issues: &issues, limit: limit, depth: 0)
        return issues
    }

    private func check(_ value: JSONValue, path: String, definitions: [String: ArgumentSchema],
                       issues: inout [Issue], limit: Int, depth: Int) {
        guard issues.count < limit else { return }
        guard depth < 64 else { issues.append(Issue(path: path, message: "schema nesting too deep")); return }
        switch self {
        case .anything: return
        case .nothing: issues.append(Issue(path: path, message: "no value is allowed here")); return
        case .node(let n):
            if let ref = n.ref {
                guard let target = definitions[ref] else {
                    issues.append(Issue(path: path, message: "schema '\(ref)' is not defined in the manifest"))
                    return
                }
                target.check(value, path: path, definitions: definitions, issues: &issues, limit: limit, depth: depth + 1)
            }
            if let types = n.types, !ArgumentSchema.matches(value, types: types) {
                let expected = types.sorted().joined(separator: " or ")
                issues.append(Issue(path: path, message: "expected \(expected), got \(value.schemaTypeName)"))
                return
            }
            if let e = n.enumValues, !e.contains(where: { ArgumentSchema.equal($0, value) }) {
                issues.append(Issue(path: path, message: "must be one of \(e.map(\.jsonText).joined(separator: ", "))"))
            }
            if let c = n.constValue, !ArgumentSchema.equal(c, value) {
                issues.append(Issue(path: path, message: "must be \(c.jsonText)"))
            }
            if let branches = n.anyOf ?? n.oneOf {
                let matching = branches.filter { $0.validate(value, at: path, definitions: definitions, limit: 1).isEmpty }.count
                if matching == 0 {
                    // Report the branch closest to matching: the one with the fewest issues.
                    let best = branches.map { $0.validate(value, at: path, definitions: definitions, limit: limit) }
                        .min(by: { $0.count < $1.count }) ?? []
                    if best.isEmpty { issues.append(Issue(path: path, message: "matches none of the allowed forms")) }
                    issues.append(contentsOf: best.prefix(limit - issues.count))
                } else if n.oneOf != nil && matching > 1 {
                    issues.append(Issue(path: path, message: "matches more than one of the allowed forms"))
                }
            }
            if case .object(let members) = value {
                for key in n.required where members[key] == nil {
                    issues.append(Issue(path: path, message: "missing required field '\(key)'"))
                }
                for key in members.keys.sorted() {
                    guard let v = members[key] else { continue }
                    let childPath = path + "." + key
                    if let s = n.properties[key] {
                        s.check(v, path: childPath, definitions: definitions, issues: &issues, limit: limit, depth: depth + 1)
                    } else if case .nothing = n.additionalProperties {
                        issues.append(Issue(path: childPath, message: "unexpected field '\(key)'"))
                    } else {
                        n.additionalProperties.check(v, path: childPath, definitions: definitions, issues: &issues, limit: limit, depth: depth + 1)
                    }
                }
            }
            if case .array(let items) = value, let itemSchema = n.items {
                for (i, item) in items.enumerated() {
                    itemSchema.check(item, path: "\(path)[\(i)]", definitions: definitions, issues: &issues, limit: limit, depth: depth + 1)
                }
            }
        }
    }

    static func matches(_ value: JSONValue, types: Set<String>) -> Bool {
        let t = value.schemaTypeName
        return types.contains(t) || (t == "integer" && types.contains("number"))
    }

    /// JSON equality: numbers by value, objects regardless of key order.
    static func equal(_ a: JSONValue, _ b: JSONValue) -> Bool {
        switch (a, b) {
        case (.number(let x), .number(let y)): return Double(x) == Double(y)
        case (.array(let x), .array(let y)): return x.count == y.count && zip(x, y).allSatisfy { equal($0, $1) }
        case (.object(let x), .object(let y)):
            return x.count == y.count && x.allSatisfy { k, v in y[k].map { equal(v, $0) } ?? false }
        default: return a == b
        }
    }
}
