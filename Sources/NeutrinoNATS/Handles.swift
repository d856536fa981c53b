import CNats
import Glibc
import NeutrinoThreads

// Ownership of the cnats handles. Each handle is a final class that owns one C object and destroys it in deinit,
// and holds a strong reference to the handle it depends on, so ARC destroys them in the order cnats requires:
// messages, then subscriptions, then the JetStream context, then the connection.
//
//   JetStreamMessage ──▶ SubscriptionHandle ──▶ JetStreamHandle ──▶ ConnectionHandle
//   (natsMsg*)           (natsSubscription*)    (jsCtx*)             (natsConnection*)
//
// A fetched natsMsg holds a raw, uncounted pointer to its subscription (acks go through it), which is why every
// message retains its SubscriptionHandle.

/// Owns a `natsConnection*`; `natsConnection_Destroy` (which also closes it) in deinit.
final class ConnectionHandle: @unchecked Sendable {
    let pointer: OpaquePointer
    /// The id of this connection's `ConnectionEvents` in `connectionEventsTable` (the callbacks' closure).
    let eventsID: UInt

    init(pointer: OpaquePointer, eventsID: UInt) {
        self.pointer = pointer
        self.eventsID = eventsID
    }

    deinit {
        natsConnection_Destroy(pointer)
        // A callback that runs after this finds no entry and does nothing.
        connectionEventsTable.remove(eventsID)
    }
}

/// Owns a `jsCtx*`; `jsCtx_Destroy` in deinit, after every subscription made from it is gone.
final class JetStreamHandle: @unchecked Sendable {
    let pointer: OpaquePointer
    let connection: ConnectionHandle
    /// The id of this context's `PublishWaiters` in `publishWaitersTable` (the ack handler's closure).
    let waitersID: UInt

    init(pointer: OpaquePointer, connection: ConnectionHandle, waitersID: UInt) {
        self.pointer = pointer
        self.connection = connection
        self.waitersID = waitersID
    }

    deinit {
        // jsCtx_Destroy frees unacknowledged async publishes without calling the ack handler: nobody can be waiting
        // for one here (a waiting `publish` keeps the JetStream alive), but fail any leftover all the same.
        publishWaitersTable.remove(waitersID)?.failAll(NATSError.closed("js_PublishMsgAsync", "the JetStream context was destroyed"))
        jsCtx_Destroy(pointer)
    }
}

/// Owns a `natsSubscription*`; `natsSubscription_Destroy` in deinit, once the subscription object and every message
/// fetched through it are gone.
final class SubscriptionHandle: @unchecked Sendable {
    let pointer: OpaquePointer
    let jetStream: JetStreamHandle

    init(pointer: OpaquePointer, jetStream: JetStreamHandle) {
        self.pointer = pointer
        self.jetStream = jetStream
    }

    deinit { natsSubscription_Destroy(pointer) }
}

/// Objects reachable from C callbacks by a small integer id instead of a pointer. The `closure` argument of a
/// callback is the id; a callback that arrives after its owner is gone finds nothing, so no callback can touch
/// freed memory (cnats may still run a callback on one of its threads while a handle is being destroyed).
final class CallbackTable<Value: AnyObject & Sendable>: @unchecked Sendable {
    private let lock = PThreadLock()
    private var next: UInt = 1
    private var values: [UInt: Value] = [:]

    func insert(_ value: Value) -> UInt {
        lock.withLock {
            let id = next
            next += 1
            values[id] = value
            return id
        }
    }

    func get(_ id: UInt) -> Value? { lock.withLock { values[id] } }

    @discardableResult
    func remove(_ id: UInt) -> Value? { lock.withLock { values.removeValue(forKey: id) } }

    func get(closure: UnsafeMutableRawPointer?) -> Value? {
        guard let closure else { return nil }
        return get(UInt(bitPattern: closure))
    }

    static func closure(_ id: UInt) -> UnsafeMutableRawPointer? { UnsafeMutableRawPointer(bitPattern: id) }
}

let connectionEventsTable = CallbackTable<ConnectionEvents>()
let publishWaitersTable = CallbackTable<PublishWaiters>()

/// Strings and arrays handed to cnats for the duration of one call (config structs only borrow them).
final class CArena {
    private var allocations: [UnsafeMutableRawPointer] = []

    deinit { allocations.forEach { free($0) } }

    /// A NUL-terminated copy of `string`; refuses strings with a NUL byte inside.
    func string(_ string: String, _ operation: String, what: String) throws -> UnsafePointer<CChar> {
        if string.utf8.contains(0) { throw NATSError.invalidArgument(operation, "\(what) contains a NUL byte") }
        guard let copy = strdup(string) else { throw NATSError.local(operation, "out of memory") }
        allocations.append(UnsafeMutableRawPointer(copy))
        return UnsafePointer(copy)
    }

    /// A C array of `count` elements, zeroed.
    func array<T>(of type: T.Type, count: Int, _ operation: String) throws -> UnsafeMutablePointer<T> {
        guard let raw = calloc(max(1, count), MemoryLayout<T>.stride) else { throw NATSError.local(operation, "out of memory") }
        allocations.append(raw)
        return raw.bindMemory(to: T.self, capacity: max(1, count))
    }
}

/// A C string (possibly NULL) as a Swift string.
func swiftString(_ pointer: UnsafePointer<CChar>?) -> String {
    guard let pointer else { return "" }
    return String(cString: pointer)
}

func swiftString(_ pointer: UnsafeMutablePointer<CChar>?) -> String {
    guard let pointer else { return "" }
    return String(cString: pointer)
}

/// A C handle crossing from a dedicated thread back to its owner, before a handle class takes it over.
struct SendablePointer: @unchecked Sendable {
    let pointer: OpaquePointer
    init(_ pointer: OpaquePointer) { self.pointer = pointer }
}
