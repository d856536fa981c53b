import FoundationEssentials
import Glibc
import Logging
import NeutrinoCore
import Synchronization

/// What a key may do. `admin` implies the other two.
public enum APIScope: String, Sendable, CaseIterable, Comparable {
    case submit, read, admin
    public static func < (a: APIScope, b: APIScope) -> Bool { a.rawValue < b.rawValue }
}

/// One entry of the keys file, as the gateway holds it: the key's SHA-256, never the key.
public struct APIKey: Sendable, Equatable {
    public var id: String
    public var name: String
    public var digest: [UInt8]
    public var scopes: Set<APIScope>
    /// Tasks (`POST /api/<task>`) and pools the key may submit to; nil = any.
    public var tasks: Set<String>?
    public var pools: Set<String>?
    public var ratePerSecond: Double?
    public var burst: Double?
    public var maxInFlight: Int?
    public var revoked: Bool

    public func allows(_ scope: APIScope) -> Bool { scopes.contains(.admin) || scopes.contains(scope) }
}

/// The keys file: `{"version": 1, "keys": [{"id", "name", "hash": "sha256:<hex>", "scopes", "tasks"?, "pools"?,
/// "rate_per_second"?, "burst"?, "max_in_flight"?, "created", "revoked"?}]}` (written by `neutrino keys`).
public enum KeyFile {
    public struct Invalid: Error, CustomStringConvertible {
        public var description: String
    }

    public static func parse(_ data: Data) throws -> [String: APIKey] {
        guard let root = try? JSONParser.parse([UInt8](data)), let top = root.objectValue else {
            throw Invalid(description: "the keys file is not a JSON object")
        }
        guard let list = top["keys"]?.arrayValue else { throw Invalid(description: "\"keys\" must be a list of objects") }
        let entries = list.compactMap { $0.objectValue }
        guard entries.count == list.count else { throw Invalid(description: "\"keys\" must be a list of objects") }
        var keys: [String: APIKey] = [:]
        for (i, e) in entries.enumerated() {
            func fail(_ m: String) -> Invalid { Invalid(description: "keys[\(i)]: \(m)") }
            /// The strings of a list, or nil when it is not a list of strings.
            func strings(_ v: JSONValue?) -> [String]? {
                guard let items = v?.arrayValue else { return nil }
                let all = items.compactMap { $0.stringValue }
                return all.count == items.count ? all : nil
            }
            guard let id = e["id"]?.stringValue, !id.isEmpty, id.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber) }) else {
                throw fail("\"id\" must be letters and digits")
            }
            guard keys[id] == nil else { throw fail("duplicate id \(id)") }
            guard let hash = e["hash"]?.stringValue, hash.hasPrefix("sha256:"), let digest = hexBytes(hash.dropFirst(7)), digest.count == 32 else {
                throw fail("\"hash\" must be sha256:<64 hex digits>")
            }
            guard let scopeNames = strings(e["scopes"]) else { throw fail("\"scopes\" must be a list") }
            var scopes: Set<APIScope> = []
            for s in scopeNames {
                guard let scope = APIScope(rawValue: s) else { throw fail("unknown scope '\(s)' (submit, read, admin)") }
                scopes.insert(scope)
            }
            func names(_ field: String) throws -> Set<String>? {
                guard let v = e[field], v != JSONValue.null else { return nil }
                guard let list = strings(v) else { throw fail("\"\(field)\" must be a list of names") }
                return Set(list)
            }
            func number(_ field: String) throws -> Double? {
                guard let v = e[field], v != JSONValue.null else { return nil }
                guard let n = v.doubleValue, n > 0, n.isFinite else { throw fail("\"\(field)\" must be a positive number") }
                return n
            }
            // Revoked: any value but null, false or 0 (`neutrino keys revoke` writes the time it was revoked).
            let revoked: Bool
            switch e["revoked"] ?? JSONValue.null {
            case .null: revoked = false
            case .bool(let flag): revoked = flag
            case .number(let text): revoked = Double(text) != 0
            default: revoked = true
            }
            keys[id] = APIKey(
                id: id, name: e["name"]?.stringValue ?? "", digest: digest, scopes: scopes,
                tasks: try names("tasks"), pools: try names("pools"),
                ratePerSecond: try number("rate_per_second"), burst: try number("burst"),
                maxInFlight: try number("max_in_flight").map { $0 < 9.0e18 ? Int($0) : Int.max }, revoked: revoked)
        }
        return keys
    }

    static func hexBytes(_ text: Substring) -> [UInt8]? {
        guard text.count % 2 == 0 else { return nil }
        var out: [UInt8] = []
        var it = text.makeIterator()
        while let hi = it.next(), let lo = it.next() {
            guard let h = hi.hexDigitValue, let l = lo.hexDigitValue else { return nil }
            out.append(UInt8(h << 4 | l))
        }
        return out
    }
}

/// The keys in force, reloaded from the keys file when it changes (see `KeyFileWatcher`): a bad file is logged
/// and the previous keys stay in force.
public final class KeyStore: Sendable {
    public enum Verdict: Sendable, Equatable {
        case valid(APIKey)
        case unknown
        case revoked(String)
    }

    /// What says the file changed: its modification time, size and inode (a file replaced by a rename).
    private struct Stamp: Equatable {
        var modifiedSeconds: Int
        var modifiedNanoseconds: Int
        var size: Int
        var inode: UInt64
    }

    private struct State {
        var keys: [String: APIKey]
        var stamp: Stamp?
    }

    let path: String
    private let logger: Logger
    private let state: Mutex<State>

    /// Reads `path`; throws when it cannot be read or parsed (the gateway then refuses to start).
    public init(path: String, logger: Logger) throws {
        self.path = path
        self.logger = logger
        let stamp = Self.stamp(path)
        guard let data = FileManager.default.contents(atPath: path) else {
            throw GatewayError(message: "--api-keys \(path): no such readable file (create one with `neutrino keys create`)")
        }
        let keys: [String: APIKey]
        do { keys = try KeyFile.parse(data) } catch { throw GatewayError(message: "--api-keys \(path): \(error)") }
        state = Mutex(State(keys: keys, stamp: stamp))
        if let mode = (try? FileManager.default.attributesOfItem(atPath: path))?[.posixPermissions] as? Int, mode & 0o077 != 0 {
            logger.warning("the keys file is readable by group or others; chmod 600 it", metadata: ["path": "\(path)"])
        }
        logger.info("API keys loaded", metadata: ["path": "\(path)", "keys": "\(keys.values.filter { !$0.revoked }.count)"])
    }

    public var keyCount: Int { state.withLock { $0.keys.count } }

    /// The SHA-256 of a whole key (`nk_<id>_<secret>`), as the keys file stores it.
    public static func digest(_ token: some StringProtocol) -> [UInt8] { SHA256.digest(Array(token.utf8)) }

    /// Equal bytes, in a time that depends only on the length.
    public static func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        guard a.count == b.count else { return false }
        var diff: UInt8 = 0
        for i in a.indices { diff |= a[i] ^ b[i] }
        return diff == 0
    }

    private static let dummy = [UInt8](repeating: 0, count: 32)

    /// The key a bearer token names, checked against its stored hash in constant time.
    public func verify(_ token: String) -> Verdict {
        let digest = Self.digest(token)
        var keyID: Substring = ""
        if token.hasPrefix("nk_") {
            let rest = token.dropFirst(3)
            keyID = rest.firstIndex(of: "_").map { rest[..<$0] } ?? ""
        }
        let key = keyID.isEmpty ? nil : state.withLock { $0.keys[String(keyID)] }
        // The comparison runs whether or not the id is known.
        let matches = Self.constantTimeEqual(digest, key?.digest ?? Self.dummy)
        guard let key, matches else { return .unknown }
        return key.revoked ? .revoked(key.id) : .valid(key)
    }

    /// The entry with this id (revoked or not).
    public func key(id: String) -> APIKey? { state.withLock { $0.keys[id] } }

    /// Re-reads the file when its modification time, size or inode changed (or always, when `force`).
    @discardableResult
    public func reload(force: Bool = false, reason: String) -> Bool {
        let stamp = Self.stamp(path)
        if !force, state.withLock({ $0.stamp == stamp }) { return false }
        guard let data = FileManager.default.contents(atPath: path) else {
            logger.error("cannot read the keys file; the previous keys stay in force", metadata: ["path": "\(path)"])
            state.withLock { $0.stamp = stamp }
            return false
        }
        do {
            let keys = try KeyFile.parse(data)
            state.withLock { $0 = State(keys: keys, stamp: stamp) }
            logger.notice(
                "API keys reloaded",
                metadata: [
                    "reason": "\(reason)", "keys": "\(keys.values.filter { !$0.revoked }.count)",
                    "revoked": "\(keys.values.filter(\.revoked).count)",
                ])
            return true
        } catch {
            state.withLock { $0.stamp = stamp }
            logger.error("the keys file is invalid; the previous keys stay in force", metadata: ["path": "\(path)", "error": "\(error)"])
            return false
        }
    }

    private static func stamp(_ path: String) -> Stamp? {
        var st = stat()
        guard stat(path, &st) == 0 else { return nil }
        return Stamp(
            modifiedSeconds: Int(st.st_mtim.tv_sec), modifiedNanoseconds: Int(st.st_mtim.tv_nsec), size: Int(st.st_size),
            inode: UInt64(st.st_ino))
    }
}
