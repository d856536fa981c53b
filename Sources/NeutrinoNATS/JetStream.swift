import CNats
import Glibc
import NeutrinoThreads

/// The server's answer to a publish.
public struct PubAck: Sendable, Equatable {
    public var stream: String
    public var sequence: UInt64
    /// The message id was seen inside the stream's duplicate window: nothing new was stored, `sequence` is the
    /// original message's.
    public var duplicate: Bool

    public init(stream: String, sequence: UInt64, duplicate: Bool) {
        self.stream = stream
        self.sequence = sequence
        self.duplicate = duplicate
    }
}

/// How a stream keeps messages.
public enum StreamRetention: Sendable, Equatable {
    /// Kept until acknowledged by the (one) consumer of each subject: a task queue.
    case workQueue
    /// Kept up to the stream's limits (age, count, bytes): a log, e.g. the dead-letter stream.
    case limits
    /// Kept while some consumer has not acknowledged it.
    case interest
}

public enum StreamStorage: Sendable, Equatable {
    case file
    case memory
}

/// How many JetStream servers keep a copy of each stream Neutrino creates (JetStream `Replicas`, 1...5), and what
/// happens to a stream that exists with another count.
///
/// A stream at R3 survives the loss of one of three servers (a new leader is elected among the two others, which
/// hold every acknowledged message); R1 lives on one server only. Consumers inherit the stream's count.
public struct StreamReplication: Sendable, Equatable, CustomStringConvertible {
    /// The replica count streams are created with.
    public var replicas: Int
    /// Whether an existing stream with another count is changed to `replicas` (a stream update, which
    /// nats-server 2.9 applies in a cluster: it adds or removes peers and moves the data). False leaves an existing
    /// stream's count alone: for a default guessed from the number of servers given, which must not scale down a
    /// stream someone deliberately replicated.
    public var reconcile: Bool

    public init(replicas: Int, reconcile: Bool) {
        self.replicas = replicas
        self.reconcile = reconcile
    }

    /// R1, existing streams left as they are: one server.
    public static let single = StreamReplication(replicas: 1, reconcile: false)

    /// The most replicas JetStream allows.
    public static let maxReplicas = 5

    /// `--stream-replicas N` given explicitly (reconciled), or the default for `serverCount` servers: 1 for one
    /// server, 3 for several (created so, existing streams left alone).
    public static func forServers(_ serverCount: Int, explicit: Int? = nil) -> StreamReplication {
        if let explicit { return StreamReplication(replicas: explicit, reconcile: true) }
        return StreamReplication(replicas: serverCount > 1 ? 3 : 1, reconcile: false)
    }

    public var description: String { "R\(replicas)\(reconcile ? "" : " (new streams)")" }
}

/// Which servers hold a replicated stream (or consumer), as the server reports it.
public struct ClusterInfo: Sendable, Equatable {
    /// The cluster's name; empty on a server that is not clustered.
    public var name: String
    /// The server that leads the stream's Raft group (publishes and reads go through it); empty during an election.
    public var leader: String
    /// The other servers holding a copy, with whether each is current.
    public var replicas: [Peer]

    public struct Peer: Sendable, Equatable {
        public var name: String
        public var current: Bool
        public var offline: Bool
    }
}

/// A stream's state.
public struct StreamInfo: Sendable, Equatable {
    public var name: String
    public var subjects: [String]
    /// Servers keeping a copy (the configured `Replicas`).
    public var replicas: Int
    /// The leader and the other replicas (nil from a server that is not clustered).
    public var cluster: ClusterInfo?
    /// Messages stored (on a WorkQueue stream this includes terminated-by-MaxDeliver messages not yet deleted).
    public var messages: UInt64
    public var bytes: UInt64
    public var firstSequence: UInt64
    public var lastSequence: UInt64
    public var consumers: Int
    public var duplicateWindow: Duration
}

/// A durable consumer's configuration and state.
public struct ConsumerInfo: Sendable, Equatable {
    public var stream: String
    public var name: String
    /// Messages not delivered yet.
    public var numPending: UInt64
    /// Delivered, not acknowledged yet.
    public var numAckPending: Int
    /// Messages delivered more than once.
    public var numRedelivered: Int
    /// Pull requests waiting for messages.
    public var numWaiting: Int
    /// The last stream sequence delivered, and the stream sequence below which all is acknowledged.
    public var deliveredStreamSequence: UInt64
    public var ackFloorStreamSequence: UInt64
    public var filterSubject: String
    /// As the server reports it (with a BackOff list the server replaces AckWait by BackOff[0]).
    public var ackWait: Duration
    public var maxDeliver: Int
    public var maxAckPending: Int
    /// Servers keeping the consumer's state (0 in the configuration means "as the stream"; this is what the
    /// server reports, which may still be 0 on a single server).
    public var replicas: Int
    /// The consumer's leader (the server that delivers and tracks acks) and its followers; nil when not clustered.
    public var cluster: ClusterInfo?

    /// The queue depth: `numPending + numAckPending` (what KEDA's nats-jetstream scaler uses as lag).
    public var backlog: UInt64 { numPending + UInt64(max(0, numAckPending)) }
}

/// A message read from a stream by sequence (`js_GetMsg`): a copy, nothing to acknowledge.
public struct StoredMessage: Sendable, Equatable {
    public var subject: String
    public var sequence: UInt64
    public var data: [UInt8]
    public var headers: [String: [String]]
    /// Nanoseconds since the Unix epoch.
    public var timestampNanos: Int64

    public func header(_ key: String) -> String? { headers[key]?.first }
}

/// A JetStream context (`jsCtx`) on a connection: stream and consumer provisioning, publishing with awaited acks,
/// state queries, pull subscriptions.
///
/// Publishing uses cnats's asynchronous publish (`js_PublishMsgAsync`) with an ack handler that resumes the caller:
/// no thread is parked while the ack is on its way. API requests (`js_AddStream`, `js_GetConsumerInfo`, …) block
/// for a round trip and run on the connection's dedicated threads.
public final class JetStream: Sendable {
    let handle: JetStreamHandle
    public let connection: NATSConnection
    let waiters: PublishWaiters
    /// Bound on every JetStream API request (cnats `jsOptions.Wait`).
    public let requestTimeout: Duration
    /// Default wait for a publish ack.
    public let publishTimeout: Duration
    /// The replica count `ensureStream` creates streams with (and reconciles existing ones to, if so told).
    public let replication: StreamReplication

    init(
        handle: JetStreamHandle, connection: NATSConnection, waiters: PublishWaiters, requestTimeout: Duration,
        publishTimeout: Duration, replication: StreamReplication
    ) {
        self.handle = handle
        self.connection = connection
        self.waiters = waiters
        self.requestTimeout = requestTimeout
        self.publishTimeout = publishTimeout
        self.replication = replication
    }

    private var pool: BlockingThreadPool { connection.pool }

    // MARK: - Provisioning

    /// Creates the stream, or updates it to this configuration (idempotent). `js_AddStream` returns OK for an
    /// identical configuration and jerr 10058 for a changed one, which is then applied with `js_UpdateStream`.
    /// Retention cannot be changed on an existing stream (jerr 10052 is thrown).
    ///
    /// Replicas (`replication`, default the context's): a new stream gets `replication.replicas`. An existing stream
    /// with another count keeps it unless `replication.reconcile`, in which case the update changes it (logged);
    /// a server that refuses (a single server asked for R3, a cluster with fewer JetStream servers than replicas)
    /// throws an error that says so.
    @discardableResult
    public func ensureStream(
        name: String, subjects: [String], retention: StreamRetention,
        storage: StreamStorage = .file, duplicateWindow: Duration = .seconds(120),
        maxAge: Duration? = nil, replication: StreamReplication? = nil
    ) async throws -> StreamInfo {
        let handle = self.handle
        let replication = replication ?? self.replication
        let logger = connection.events.logger
        guard (1...StreamReplication.maxReplicas).contains(replication.replicas) else {
            throw NATSError.invalidArgument(
                "js_AddStream", "stream replicas must be 1...\(StreamReplication.maxReplicas), not \(replication.replicas)")
        }
        return try await pool.run("js_AddStream") {
            let op = "js_AddStream"
            let arena = CArena()
            var cfg = jsStreamConfig()
            jsStreamConfig_Init(&cfg)
            cfg.Name = try arena.string(name, op, what: "the stream name")
            let cSubjects = try arena.array(of: UnsafePointer<CChar>?.self, count: subjects.count, op)
            for (i, subject) in subjects.enumerated() { cSubjects[i] = try arena.string(subject, op, what: "a subject") }
            cfg.Subjects = cSubjects
            cfg.SubjectsLen = Int32(clamping: subjects.count)
            switch retention {
            case .workQueue: cfg.Retention = js_WorkQueuePolicy
            case .limits: cfg.Retention = js_LimitsPolicy
            case .interest: cfg.Retention = js_InterestPolicy
            }
            cfg.Storage = storage == .file ? js_FileStorage : js_MemoryStorage
            cfg.Duplicates = duplicateWindow.natsNanoseconds
            if let maxAge { cfg.MaxAge = maxAge.natsNanoseconds }
            cfg.Replicas = Int64(replication.replicas)

            var info: UnsafeMutablePointer<jsStreamInfo>?
            var jerr = jsErrCode(0)
            var s = js_AddStream(&info, handle.pointer, &cfg, nil, &jerr)
            if s == NATS_OK, let info {
                defer { jsStreamInfo_Destroy(info) }
                return StreamInfo(info.pointee)
            }
            let addError = NATSError.library(op, s, jsErrCode: jerr, connection: handle.connection.pointer)
            // 10058: the stream exists with another configuration. A refused replica count may also be about an
            // existing stream (a single server checks the count before it looks for the stream).
            let refusedReplicas = JetStream.replicasRefused(addError, stream: name, from: nil, to: replication.replicas)
            guard addError.jsErrorCode == 10058 || refusedReplicas != nil else { throw addError }
            var existing: UnsafeMutablePointer<jsStreamInfo>?
            jerr = jsErrCode(0)
            s = js_GetStreamInfo(&existing, handle.pointer, cfg.Name, nil, &jerr)
            guard s == NATS_OK, let existing else {
                let infoError = NATSError.library("js_GetStreamInfo", s, jsErrCode: jerr, connection: handle.connection.pointer)
                throw infoError.isNotFound ? (refusedReplicas ?? addError) : infoError
            }
            let current = max(1, Int(existing.pointee.Config?.pointee.Replicas ?? 1))
            // A server that is not clustered reports no cluster; nats-server 2.9 would accept an update to R3 there
            // (and claim R3 while keeping one copy), so refuse it here.
            let clustered = !swiftString(existing.pointee.Cluster?.pointee.Name).isEmpty
            jsStreamInfo_Destroy(existing)
            if !replication.reconcile { cfg.Replicas = Int64(current) }
            let changing = Int(cfg.Replicas) != current
            if changing && cfg.Replicas > 1 && !clustered {
                let refusal = NATSError.local("js_UpdateStream", "replicas > 1 not supported in non-clustered mode")
                throw JetStream.replicasRefused(refusal, stream: name, from: current, to: Int(cfg.Replicas)) ?? refusal
            }
            if changing {
                logger.notice(
                    "changing the stream's replica count",
                    metadata: [
                        "stream": "\(name)", "replicas.from": "\(current)", "replicas.to": "\(cfg.Replicas)",
                    ])
            }
            jerr = jsErrCode(0)
            s = js_UpdateStream(&info, handle.pointer, &cfg, nil, &jerr)
            guard s == NATS_OK, let info else {
                let error = NATSError.library("js_UpdateStream", s, jsErrCode: jerr, connection: handle.connection.pointer)
                if changing, let refused = JetStream.replicasRefused(error, stream: name, from: current, to: Int(cfg.Replicas)) {
                    throw refused
                }
                throw error
            }
            defer { jsStreamInfo_Destroy(info) }
            return StreamInfo(info.pointee)
        }
    }

    /// A server's refusal of a replica count, restated with what to do about it; nil for an unrelated error.
    static func replicasRefused(_ error: NATSError, stream: String, from: Int?, to: Int) -> NATSError? {
        // 10074: replicas > 1 on a server that is not clustered; 10023: fewer JetStream servers (up) than replicas
        // ("insufficient resources", "no suitable peers for placement").
        let text = error.detail.lowercased()
        guard to > 1 || from != nil else { return nil }
        guard
            [10074, 10023].contains(error.jsErrorCode)
                || ["replica", "peers", "insufficient resources"].contains(where: { text.firstRange(of: $0) != nil })
        else { return nil }
        let what = from.map { "change \(stream) from \(max(1, $0)) to \(to) replicas" } ?? "create \(stream) with \(to) replicas"
        return NATSError(
            operation: error.operation, origin: error.origin, status: error.status,
            statusText: error.statusText, jsErrorCode: error.jsErrorCode,
            detail: "the JetStream server refused to \(what): \(error.detail.isEmpty ? error.statusText : error.detail). "
                + "The replica count (--stream-replicas) must not exceed the cluster's JetStream servers that "
                + "are up (1 for a single server, which cannot replicate)",
            connectionWasDown: error.connectionWasDown)
    }

    /// Creates the durable pull consumer, or updates it to this configuration (idempotent). Explicit acks,
    /// deliver-all, instant replay. `backOff` (redelivery delays after AckWait expires) needs
    /// `maxDeliver > backOff.count`, and the server then takes `backOff[0]` as the AckWait. `maxDeliver` -1 means
    /// unlimited. `inactiveThreshold`: the server deletes the durable after that long without pull requests.
    @discardableResult
    public func ensureConsumer(
        stream: String, durable: String, filterSubject: String?, ackWait: Duration,
        maxDeliver: Int, maxAckPending: Int = 1000,
        backOff: [Duration] = [], inactiveThreshold: Duration? = nil
    ) async throws -> ConsumerInfo {
        let handle = self.handle
        return try await pool.run("js_AddConsumer") {
            let op = "js_AddConsumer"
            let arena = CArena()
            let cStream = try arena.string(stream, op, what: "the stream name")
            var cfg = jsConsumerConfig()
            jsConsumerConfig_Init(&cfg)
            cfg.Durable = try arena.string(durable, op, what: "the durable name")
            cfg.AckPolicy = js_AckExplicit
            cfg.DeliverPolicy = js_DeliverAll
            cfg.ReplayPolicy = js_ReplayInstant
            cfg.AckWait = ackWait.natsNanoseconds
            cfg.MaxDeliver = Int64(maxDeliver)
            cfg.MaxAckPending = Int64(maxAckPending)
            if let filterSubject { cfg.FilterSubject = try arena.string(filterSubject, op, what: "the filter subject") }
            if let inactiveThreshold { cfg.InactiveThreshold = inactiveThreshold.natsNanoseconds }
            if !backOff.isEmpty {
                let delays = try arena.array(of: Int64.self, count: backOff.count, op)
                for (i, delay) in backOff.enumerated() { delays[i] = delay.natsNanoseconds }
                cfg.BackOff = delays
                cfg.BackOffLen = Int32(clamping: backOff.count)
            }

            var info: UnsafeMutablePointer<jsConsumerInfo>?
            var jerr = jsErrCode(0)
            var s = js_AddConsumer(&info, handle.pointer, cStream, &cfg, nil, &jerr)
            var operation = op
            // nats-server 2.9 updates a durable on a second add; newer servers answer "already exists".
            if s == NATS_ERR && [10013, 10148].contains(jerr.rawValue) {
                operation = "js_UpdateConsumer"
                jerr = jsErrCode(0)
                s = js_UpdateConsumer(&info, handle.pointer, cStream, &cfg, nil, &jerr)
            }
            guard s == NATS_OK, let info else {
                throw NATSError.library(operation, s, jsErrCode: jerr, connection: handle.connection.pointer)
            }
            defer { jsConsumerInfo_Destroy(info) }
            return ConsumerInfo(info.pointee)
        }
    }

    // MARK: - Queries

    public func streamInfo(stream: String) async throws -> StreamInfo {
        let handle = self.handle
        return try await pool.run("js_GetStreamInfo") {
            let op = "js_GetStreamInfo"
            let arena = CArena()
            let cStream = try arena.string(stream, op, what: "the stream name")
            var info: UnsafeMutablePointer<jsStreamInfo>?
            var jerr = jsErrCode(0)
            let s = js_GetStreamInfo(&info, handle.pointer, cStream, nil, &jerr)
            guard s == NATS_OK, let info else { throw NATSError.library(op, s, jsErrCode: jerr, connection: handle.connection.pointer) }
            defer { jsStreamInfo_Destroy(info) }
            return StreamInfo(info.pointee)
        }
    }

    public func consumerInfo(stream: String, consumer: String) async throws -> ConsumerInfo {
        let handle = self.handle
        return try await pool.run("js_GetConsumerInfo") {
            let op = "js_GetConsumerInfo"
            let arena = CArena()
            let cStream = try arena.string(stream, op, what: "the stream name")
            let cConsumer = try arena.string(consumer, op, what: "the consumer name")
            var info: UnsafeMutablePointer<jsConsumerInfo>?
            var jerr = jsErrCode(0)
            let s = js_GetConsumerInfo(&info, handle.pointer, cStream, cConsumer, nil, &jerr)
            guard s == NATS_OK, let info else { throw NATSError.library(op, s, jsErrCode: jerr, connection: handle.connection.pointer) }
            defer { jsConsumerInfo_Destroy(info) }
            return ConsumerInfo(info.pointee)
        }
    }

    /// Reads the message stored at `sequence` (`js_GetMsg`). A missing message throws with `isNotFound`.
    public func getMessage(stream: String, sequence: UInt64) async throws -> StoredMessage {
        let handle = self.handle
        return try await pool.run("js_GetMsg") {
            let op = "js_GetMsg"
            let arena = CArena()
            let cStream = try arena.string(stream, op, what: "the stream name")
            var msg: OpaquePointer?
            var jerr = jsErrCode(0)
            let s = js_GetMsg(&msg, handle.pointer, cStream, sequence, nil, &jerr)
            guard s == NATS_OK, let msg else { throw NATSError.library(op, s, jsErrCode: jerr, connection: handle.connection.pointer) }
            defer { natsMsg_Destroy(msg) }
            return StoredMessage(
                subject: swiftString(natsMsg_GetSubject(msg)), sequence: natsMsg_GetSequence(msg),
                data: messageData(msg), headers: allHeaders(msg), timestampNanos: natsMsg_GetTime(msg))
        }
    }

    /// Reads the newest message stored on `subject` (`js_GetLastMsg`); nil when there is none.
    public func lastMessage(stream: String, subject: String) async throws -> StoredMessage? {
        let handle = self.handle
        return try await pool.run("js_GetLastMsg") {
            let op = "js_GetLastMsg"
            let arena = CArena()
            let cStream = try arena.string(stream, op, what: "the stream name")
            let cSubject = try arena.string(subject, op, what: "the subject")
            var msg: OpaquePointer?
            var jerr = jsErrCode(0)
            let s = js_GetLastMsg(&msg, handle.pointer, cStream, cSubject, nil, &jerr)
            if s == NATS_NOT_FOUND { return nil }
            guard s == NATS_OK, let msg else {
                let error = NATSError.library(op, s, jsErrCode: jerr, connection: handle.connection.pointer)
                if error.isNotFound { return nil }
                throw error
            }
            defer { natsMsg_Destroy(msg) }
            return StoredMessage(
                subject: swiftString(natsMsg_GetSubject(msg)), sequence: natsMsg_GetSequence(msg),
                data: messageData(msg), headers: allHeaders(msg), timestampNanos: natsMsg_GetTime(msg))
        }
    }

    /// Deletes the message stored at `sequence` (`js_DeleteMsg`).
    public func deleteMessage(stream: String, sequence: UInt64) async throws {
        let handle = self.handle
        try await pool.run("js_DeleteMsg") {
            let op = "js_DeleteMsg"
            let arena = CArena()
            let cStream = try arena.string(stream, op, what: "the stream name")
            var jerr = jsErrCode(0)
            let s = js_DeleteMsg(handle.pointer, cStream, sequence, nil, &jerr)
            guard s == NATS_OK else { throw NATSError.library(op, s, jsErrCode: jerr, connection: handle.connection.pointer) }
        }
    }

    // MARK: - Publishing

    /// Publishes `data` to `subject` and waits for the stream's ack.
    ///
    /// `msgID` becomes the `Nats-Msg-Id` header: a second publish with the same id inside the stream's duplicate
    /// window stores nothing and answers `duplicate == true`. `timeout` (default `publishTimeout`) bounds the wait
    /// for the ack; while the connection is down the publish is buffered by cnats and times out with an error
    /// whose `isConnectionProblem` is true. Such a buffered message may still be stored once the connection is back,
    /// so retry with the same `msgID` (at-least-once, made exactly-once by the duplicate window).
    public func publish(
        subject: String, data: [UInt8], msgID: String? = nil, headers: [String: String] = [:],
        timeout: Duration? = nil
    ) async throws -> PubAck {
        let op = "js_PublishMsgAsync"
        guard data.count <= Int(Int32.max) else { throw NATSError.invalidArgument(op, "the payload is too large") }
        let arena = CArena()
        let cSubject = try arena.string(subject, op, what: "the subject")
        let cMsgID = try msgID.map { try arena.string($0, op, what: "the message id") }
        var msg: OpaquePointer?
        var s = data.withUnsafeBytes { bytes in
            natsMsg_Create(&msg, cSubject, nil, bytes.baseAddress?.assumingMemoryBound(to: CChar.self), Int32(data.count))
        }
        guard s == NATS_OK, let msg else { throw NATSError.library("natsMsg_Create", s, connection: handle.connection.pointer) }
        for (key, value) in headers {
            do {
                s = natsMsgHeader_Set(msg, try arena.string(key, op, what: "a header name"), try arena.string(value, op, what: "a header value"))
            } catch {
                natsMsg_Destroy(msg)
                throw error
            }
            guard s == NATS_OK else {
                let error = NATSError.library("natsMsgHeader_Set", s, connection: handle.connection.pointer)
                natsMsg_Destroy(msg)
                throw error
            }
        }
        let maxWait = max(1, (timeout ?? publishTimeout).natsMilliseconds)
        let handle = self.handle
        let waiters = self.waiters
        // The ack handler finds the caller by the message's address: registered before the publish (the ack can
        // arrive before js_PublishMsgAsync returns) and removed before the message is destroyed.
        let key = UInt(bitPattern: Int(bitPattern: msg))
        return try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<PubAck, any Error>) in
            if let refused = waiters.register(key, continuation) {
                natsMsg_Destroy(msg)
                continuation.resume(throwing: refused)
                return
            }
            var options = jsPubOptions()
            jsPubOptions_Init(&options)
            options.MaxWait = maxWait
            options.MsgId = cMsgID
            var owned: OpaquePointer? = msg
            // With MaxPending 0 this never stalls: it appends to cnats's buffer (or writes to the socket, SendAsap).
            let status = js_PublishMsgAsync(handle.pointer, &owned, &options)
            if status != NATS_OK {
                // Refused: the ack handler will not run for it and the message is still ours.
                let error = NATSError.library(op, status, connection: handle.connection.pointer)
                natsMsg_Destroy(owned)
                waiters.take(key)?.resume(throwing: error)
            }
        }
    }

    // MARK: - Consuming

    /// A pull subscription bound to the existing durable `consumer` of `stream` (see `ensureConsumer`).
    /// Each subscription fetches on its own dedicated thread; give each concurrent fetch loop its own subscription.
    public func pullSubscribe(stream: String, consumer: String) async throws -> PullSubscription {
        let handle = self.handle
        let subscription = try await pool.run("js_PullSubscribe") { () throws -> SubscriptionHandle in
            let op = "js_PullSubscribe"
            let arena = CArena()
            var so = jsSubOptions()
            jsSubOptions_Init(&so)
            so.Stream = try arena.string(stream, op, what: "the stream name")
            so.Consumer = try arena.string(consumer, op, what: "the consumer name")
            let cDurable = try arena.string(consumer, op, what: "the consumer name")
            var sub: OpaquePointer?
            var jerr = jsErrCode(0)
            let s = js_PullSubscribe(&sub, handle.pointer, nil, cDurable, nil, &so, &jerr)
            guard s == NATS_OK, let sub else { throw NATSError.library(op, s, jsErrCode: jerr, connection: handle.connection.pointer) }
            return SubscriptionHandle(pointer: sub, jetStream: handle)
        }
        return try PullSubscription(handle: subscription, jetStream: self, stream: stream, consumer: consumer)
    }
}

/// Callers waiting for publish acks, by message address.
final class PublishWaiters: @unchecked Sendable {
    /// Not owned: the jsCtx retains the connection for as long as its ack handler can run.
    let connection: OpaquePointer
    private let lock = PThreadLock()
    private var waiting: [UInt: CheckedContinuation<PubAck, any Error>] = [:]
    private var closedError: NATSError?

    init(connection: OpaquePointer) { self.connection = connection }

    /// Registers a caller; returns the error to fail it with instead when closed.
    func register(_ key: UInt, _ continuation: CheckedContinuation<PubAck, any Error>) -> NATSError? {
        lock.withLock {
            if let closedError { return closedError }
            waiting[key] = continuation
            return nil
        }
    }

    func take(_ key: UInt) -> CheckedContinuation<PubAck, any Error>? {
        lock.withLock { waiting.removeValue(forKey: key) }
    }

    /// Fails every waiting caller and refuses new ones.
    func failAll(_ error: NATSError) {
        let all = lock.withLock { () -> [CheckedContinuation<PubAck, any Error>] in
            if closedError == nil { closedError = error }
            defer { waiting.removeAll() }
            return Array(waiting.values)
        }
        for continuation in all { continuation.resume(throwing: error) }
    }
}

/// cnats's async-publish ack handler: runs on the context's reply-subscription thread for every published message,
/// with either `ack` or `failure`. The message is ours to destroy.
func onPublishAck(
    _ js: OpaquePointer?, _ msg: OpaquePointer?, _ ack: UnsafeMutablePointer<jsPubAck>?,
    _ failure: UnsafeMutablePointer<jsPubAckErr>?, _ closure: UnsafeMutableRawPointer?
) {
    defer { natsMsg_Destroy(msg) }
    guard let msg, let waiters = publishWaitersTable.get(closure: closure),
        let continuation = waiters.take(UInt(bitPattern: Int(bitPattern: msg)))
    else { return }
    if let ack {
        continuation.resume(
            returning: PubAck(
                stream: swiftString(ack.pointee.Stream), sequence: ack.pointee.Sequence,
                duplicate: ack.pointee.Duplicate))
    } else if let failure {
        continuation.resume(
            throwing: NATSError.reported(
                "js_PublishMsgAsync", failure.pointee.Err,
                jsErrCode: Int(failure.pointee.ErrCode.rawValue),
                detail: swiftString(failure.pointee.ErrText),
                connection: waiters.connection))
    } else {
        continuation.resume(throwing: NATSError.local("js_PublishMsgAsync", "the ack handler got neither an ack nor an error"))
    }
}

// MARK: - Conversions from cnats structs

extension StreamInfo {
    init(_ info: jsStreamInfo) {
        var subjects: [String] = []
        var name = ""
        var duplicates: Int64 = 0
        var replicas = 1
        if let cfg = info.Config?.pointee {
            name = swiftString(cfg.Name)
            if let list = cfg.Subjects {
                for i in 0..<Int(max(0, cfg.SubjectsLen)) { subjects.append(swiftString(list[i])) }
            }
            duplicates = cfg.Duplicates
            replicas = Int(max(1, cfg.Replicas))
        }
        self.init(
            name: name, subjects: subjects, replicas: replicas, cluster: info.Cluster.map { ClusterInfo($0.pointee) },
            messages: info.State.Msgs, bytes: info.State.Bytes,
            firstSequence: info.State.FirstSeq, lastSequence: info.State.LastSeq,
            consumers: Int(info.State.Consumers), duplicateWindow: .nanoseconds(duplicates))
    }
}

extension ClusterInfo {
    init(_ info: jsClusterInfo) {
        var peers: [Peer] = []
        if let list = info.Replicas {
            for i in 0..<Int(max(0, info.ReplicasLen)) {
                guard let peer = list[i]?.pointee else { continue }
                peers.append(Peer(name: swiftString(peer.Name), current: peer.Current, offline: peer.Offline))
            }
        }
        self.init(name: swiftString(info.Name), leader: swiftString(info.Leader), replicas: peers)
    }
}

extension ConsumerInfo {
    init(_ info: jsConsumerInfo) {
        let cfg = info.Config?.pointee
        self.init(
            stream: swiftString(info.Stream), name: swiftString(info.Name), numPending: info.NumPending,
            numAckPending: Int(info.NumAckPending), numRedelivered: Int(info.NumRedelivered),
            numWaiting: Int(info.NumWaiting), deliveredStreamSequence: info.Delivered.Stream,
            ackFloorStreamSequence: info.AckFloor.Stream, filterSubject: swiftString(cfg?.FilterSubject),
            ackWait: .nanoseconds(cfg?.AckWait ?? 0), maxDeliver: Int(cfg?.MaxDeliver ?? 0),
            maxAckPending: Int(cfg?.MaxAckPending ?? 0), replicas: Int(cfg?.Replicas ?? 0),
            cluster: info.Cluster.map { ClusterInfo($0.pointee) })
    }
}

/// A copy of a message's payload.
func messageData(_ msg: OpaquePointer) -> [UInt8] {
    let count = Int(natsMsg_GetDataLength(msg))
    guard count > 0, let data = natsMsg_GetData(msg) else { return [] }
    return data.withMemoryRebound(to: UInt8.self, capacity: count) { Array(UnsafeBufferPointer(start: $0, count: count)) }
}

/// Every header of a message (`natsMsgHeader_Keys` / `_Values`; the arrays are ours to free, the strings are not).
func allHeaders(_ msg: OpaquePointer) -> [String: [String]] {
    var keys: UnsafeMutablePointer<UnsafePointer<CChar>?>?
    var keyCount: Int32 = 0
    guard natsMsgHeader_Keys(msg, &keys, &keyCount) == NATS_OK, let keys else { return [:] }
    defer { free(keys) }
    var headers: [String: [String]] = [:]
    for i in 0..<Int(keyCount) {
        guard let key = keys[i] else { continue }
        var values: UnsafeMutablePointer<UnsafePointer<CChar>?>?
        var valueCount: Int32 = 0
        guard natsMsgHeader_Values(msg, key, &values, &valueCount) == NATS_OK, let values else { continue }
        defer { free(values) }
        headers[String(cString: key)] = (0..<Int(valueCount)).map { swiftString(values[$0]) }
    }
    return headers
}
