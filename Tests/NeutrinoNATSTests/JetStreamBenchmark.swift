import Foundation
import NeutrinoNATS
import NeutrinoTestSupport
import Testing

/// Throughput and latency on this machine, printed, never asserted. Opt-in: `NEUTRINO_NATS_BENCH=1`.
@Suite(.serialized, .enabled(if: ProcessInfo.processInfo.environment["NEUTRINO_NATS_BENCH"] != nil))
struct JetStreamBenchmark {
    static func perSecond(_ count: Int, _ duration: Duration) -> Int {
        let seconds = Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
        return seconds > 0 ? Int(Double(count) / seconds) : 0
    }

    @Test(arguments: [true, false]) func publishAndConsume(sendAsap: Bool) async throws {
        var options = NATSConnection.Options()
        options.sendAsap = sendAsap
        try await withJetStream(options: options) { _, _, js in
            try await js.ensureStream(name: "BENCH", subjects: ["bench.*"], retention: .workQueue)
            try await js.ensureConsumer(
                stream: "BENCH", durable: "w", filterSubject: "bench.*", ackWait: .seconds(30),
                maxDeliver: 3, maxAckPending: 20_000)
            let payload = [UInt8](repeating: 65, count: 128)
            for i in 0..<200 { _ = try await js.publish(subject: "bench.x", data: payload, msgID: "warm-\(i)") }

            let n = 5000
            var started = ContinuousClock.now
            for i in 0..<n { _ = try await js.publish(subject: "bench.x", data: payload, msgID: "seq-\(i)") }
            var elapsed = ContinuousClock.now - started
            print("BENCH sendAsap=\(sendAsap) sequential awaited publish: \(n) in \(elapsed), \(elapsed / n) each")

            let publishers = 32
            let each = n / publishers
            started = ContinuousClock.now
            try await withThrowingTaskGroup(of: Void.self) { group in
                for p in 0..<publishers {
                    group.addTask {
                        for i in 0..<each { _ = try await js.publish(subject: "bench.x", data: payload, msgID: "c-\(p)-\(i)") }
                    }
                }
                try await group.waitForAll()
            }
            elapsed = ContinuousClock.now - started
            print("BENCH sendAsap=\(sendAsap) \(publishers) concurrent publishers: \(Self.perSecond(publishers * each, elapsed)) msg/s")

            let expected = 200 + n + publishers * each
            let sub = try await js.pullSubscribe(stream: "BENCH", consumer: "w")
            var received = 0
            started = ContinuousClock.now
            for _ in 0..<1000 where received < expected {
                let batch = try await sub.fetch(batch: 256, timeout: .seconds(1))
                for message in batch { try message.ack() }
                received += batch.count
            }
            elapsed = ContinuousClock.now - started
            print("BENCH sendAsap=\(sendAsap) fetch(256) + ack: \(received) in \(elapsed), \(Self.perSecond(received, elapsed)) msg/s")

            for i in 0..<1000 { _ = try await js.publish(subject: "bench.x", data: payload, msgID: "one-\(i)") }
            var acked = 0
            started = ContinuousClock.now
            for _ in 0..<1100 where acked < 1000 {
                for message in try await sub.fetch(batch: 1, timeout: .seconds(1)) {
                    try await message.ackSync()
                    acked += 1
                }
            }
            elapsed = ContinuousClock.now - started
            print("BENCH sendAsap=\(sendAsap) fetch(1) + ackSync: \(acked) in \(elapsed), \(elapsed / max(1, acked)) each")
        }
    }
}
