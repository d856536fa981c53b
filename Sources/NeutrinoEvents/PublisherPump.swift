import Logging
import NeutrinoCore
import NeutrinoNATS

/// The loop behind `NATSEventPublisher`: takes a window from the queue, publishes it over the lanes, puts back
/// what failed, backs off while NATS is unreachable.
struct PublisherPump: Sendable {
    let js: JetStream
    let queue: PublisherQueue
    let origin: EventOrigin
    let logger: Logger
    let options: NATSEventPublisher.Options

    /// What one lane did with its share of the window.
    private struct LaneResult: Sendable {
        var entries: [PublisherQueue.Entry]
        var published = 0
        var duplicates = 0
        var failure: (any Error)?
    }

    func run() async {
        var backoff = options.minBackoff
        var needsStream = true
        var failingSince: ContinuousClock.Instant?
        while let window = await queue.nextWindow(limit: options.window) {
            if needsStream {
                do {
                    try await EventStreamProvisioning.ensureStream(js)
                    needsStream = false
                } catch {
                    logger.debug("cannot provision the events stream yet", metadata: ["error": "\(error)"])
                }
            }
            let results = await publish(window)

            var retry: [PublisherQueue.Entry] = []
            var published = 0, duplicates = 0, dropped = 0
            var transientError: (any Error)?
            for lane in results {
                published += lane.published
                duplicates += lane.duplicates
                if lane.published > 0 { needsStream = false }
                guard let failure = lane.failure else { continue }
                var rest = lane.entries[lane.published...]
                if let natsError = failure as? NATSError, natsError.isUnavailable {
                    transientError = failure
                    if natsError.isNoResponders { needsStream = true }
                } else if var refused = rest.popFirst() {
                    refused.rejections += 1
                    if refused.rejections >= options.maxRejections {
                        dropped += 1
                        logger.error(
                            "task event refused by NATS; dropped",
                            metadata: [
                                "task_id": "\(refused.event.taskID)", "event": "\(refused.event.kind.rawValue)",
                                "attempt": "\(refused.event.attempt)", "error": "\(failure)",
                            ])
                    } else {
                        transientError = transientError ?? failure
                        retry.append(refused)
                    }
                }
                retry.append(contentsOf: rest)
            }
            retry.sort { $0.seq < $1.seq }
            queue.complete(retry: retry, published: published, duplicates: duplicates, dropped: dropped)

            if let transientError {
                if failingSince == nil {
                    failingSince = .now
                    logger.warning(
                        "publishing task events failed; keeping them and retrying",
                        metadata: [
                            "pending": "\(queue.pending)", "error": "\(transientError)",
                        ])
                }
                try? await Task.sleep(for: backoff)
                backoff = min(backoff * 2, options.maxBackoff)
            } else {
                if let since = failingSince {
                    logger.notice(
                        "publishing task events again",
                        metadata: [
                            "after": "\(ContinuousClock.now - since)", "pending": "\(queue.pending)",
                        ])
                    failingSince = nil
                }
                backoff = options.minBackoff
            }
        }
    }

    /// Publishes `window` over the lanes; each lane goes in order and stops at its first failure.
    private func publish(_ window: [PublisherQueue.Entry]) async -> [LaneResult] {
        let laneCount = max(1, options.lanes)
        var lanes: [Int: [PublisherQueue.Entry]] = [:]
        for entry in window {
            let lane = Int(UInt(bitPattern: entry.event.taskID.hashValue) % UInt(laneCount))
            lanes[lane, default: []].append(entry)
        }
        let js = self.js
        let origin = self.origin
        let timeout = options.publishTimeout
        return await withTaskGroup(of: LaneResult.self) { group in
            for entries in lanes.values {
                group.addTask {
                    var result = LaneResult(entries: entries)
                    for entry in entries {
                        do {
                            let ack = try await js.publish(
                                subject: EventStreamLayout.subject(pool: entry.event.pool),
                                data: EventCodec.encode(entry.event),
                                msgID: EventStreamLayout.messageID(for: entry.event, origin: origin),
                                timeout: timeout)
                            result.published += 1
                            if ack.duplicate { result.duplicates += 1 }
                        } catch {
                            result.failure = error
                            break
                        }
                    }
                    return result
                }
            }
            var results: [LaneResult] = []
            for await result in group { results.append(result) }
            return results
        }
    }
}
