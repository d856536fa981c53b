import Logging
import NeutrinoNATS

/// Creates (idempotently) the events stream and a gateway's durable consumer on it. Both sides call it: a worker
/// publishing events before any gateway ran still finds the stream (an event published to no stream is not stored).
public enum EventStreamProvisioning {
    /// `NEUTRINO_EVENTS`: subjects `neutrino.events.>`, limits retention, file storage, 7 days, 2 min dedup window,
    /// replicated as the JetStream context says (`--stream-replicas`; the events consumers inherit it).
    @discardableResult
    public static func ensureStream(_ js: JetStream) async throws -> StreamInfo {
        try await js.ensureStream(
            name: EventStreamLayout.stream, subjects: [EventStreamLayout.subjects],
            retention: .limits, storage: .file, duplicateWindow: EventStreamLayout.duplicateWindow,
            maxAge: EventStreamLayout.maxAge)
    }

    /// The stream, then the durable pull consumer `events_<id>` over every event: explicit acks, deliver all,
    /// redelivered without limit after `ackWait`, deleted by the server after `inactiveThreshold` without pulls
    /// (a gateway gone for good; a new one replays what the stream still holds, which the task log applies
    /// idempotently).
    @discardableResult
    public static func ensure(
        _ js: JetStream, consumerID: String, ackWait: Duration = .seconds(30),
        maxAckPending: Int = 20_000, inactiveThreshold: Duration? = .seconds(24 * 3600),
        logger: Logger
    ) async throws -> ConsumerInfo {
        try await ensureStream(js)
        let info = try await js.ensureConsumer(
            stream: EventStreamLayout.stream,
            durable: EventStreamLayout.consumer(id: consumerID),
            filterSubject: EventStreamLayout.subjects, ackWait: ackWait,
            maxDeliver: -1, maxAckPending: maxAckPending,
            inactiveThreshold: inactiveThreshold)
        logger.info("events stream provisioned", metadata: ["stream": "\(EventStreamLayout.stream)", "consumer": "\(info.name)"])
        return info
    }
}
