import NeutrinoCore

/// The gateway's events in cluster mode: committed to its own task log (read-your-writes, and `flush` waits for
/// that commit only) and also published for the other replicas, which apply them from NEUTRINO_EVENTS.
final class TeeSink: TaskEventSink {
    private let local: any TaskEventSink
    private let published: any TaskEventSink

    init(local: any TaskEventSink, published: any TaskEventSink) {
        self.local = local
        self.published = published
    }

    func record(_ event: TaskEvent) {
        local.record(event)
        published.record(event)
    }

    func record(contentsOf events: [TaskEvent]) {
        local.record(contentsOf: events)
        published.record(contentsOf: events)
    }

    func flush() async { await local.flush() }

    func close() async {
        await published.close()
        await local.close()
    }
}
