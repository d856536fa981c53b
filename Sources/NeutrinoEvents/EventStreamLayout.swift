import NeutrinoCore

/// Where task lifecycle events travel on NATS (observability contract, "Events via NATS"): one limits-retention
/// stream, one subject per pool, one durable pull consumer per recording gateway.
public enum EventStreamLayout {
    /// The stream holding every event for `maxAge`.
    public static let stream = "NEUTRINO_EVENTS"
    /// What the stream takes in, and what an events consumer filters on.
    public static let subjects = "neutrino.events.>"
    /// Events older than this are dropped by the server.
    public static let maxAge: Duration = .seconds(7 * 24 * 3600)
    /// A republish with the same `Nats-Msg-Id` inside this window stores nothing.
    public static let duplicateWindow: Duration = .seconds(120)

    /// `neutrino.events.<pool>`. A pool name that is not a single subject token (it should always be one) has its
    /// offending characters replaced, so an event is never published to a wildcard or a deeper subject.
    public static func subject(pool: String) -> String { "neutrino.events.\(token(pool))" }

    /// `events_<id>`: the durable consumer of the gateway (or gateway group) identified by `id`.
    public static func consumer(id: String) -> String { "events_\(token(id))" }

    /// `<task_id>:<event>:<attempt>:<origin>` for every event but `progress` (several per attempt, each to be kept):
    /// the `Nats-Msg-Id` that makes one process's republish (after a PubAck timeout or a reconnect) a duplicate.
    /// The origin keeps two processes' reports of the same outcome apart: a sync call's `completed` is recorded by the
    /// gateway that relayed it and, with what the task printed, by the worker that ran it; the stream must keep both
    /// (applying them merges the facts), not whichever arrived first.
    public static func messageID(for event: TaskEvent, origin: EventOrigin) -> String? {
        event.kind == .progress ? nil : "\(event.taskID):\(event.kind.rawValue):\(event.attempt):\(origin.tag)"
    }

    /// `text` with every byte outside `[A-Za-z0-9_-]` replaced by `_` (`_` alone when empty).
    static func token(_ text: String) -> String {
        guard !text.isEmpty else { return "_" }
        func safe(_ c: UInt8) -> Bool {
            (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A) || c == 0x5F || c == 0x2D
        }
        if text.utf8.allSatisfy(safe) { return text }
        return String(decoding: text.utf8.map { safe($0) ? $0 : 0x5F }, as: UTF8.self)
    }
}

/// The process that publishes a task event: part of its `Nats-Msg-Id` (`EventStreamLayout.messageID`).
public enum EventOrigin: Sendable, Equatable {
    /// A gateway (`--gateway-id`): the events it records itself (`pending`, `queued`, relayed sync outcomes, cancels).
    case gateway(String)
    /// A worker (`--worker-id`).
    case worker(String)

    /// `g-<id>` or `w-<id>`, the id reduced to `[A-Za-z0-9_-]` (a header value never carries a delimiter).
    public var tag: String {
        switch self {
        case .gateway(let id): "g-" + EventStreamLayout.token(id)
        case .worker(let id): "w-" + EventStreamLayout.token(id)
        }
    }
}
