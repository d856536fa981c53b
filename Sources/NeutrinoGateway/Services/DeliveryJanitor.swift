import Logging
import NeutrinoCore
import NeutrinoNATS
import NeutrinoTaskLog
import ServiceLifecycle

/// Gives a terminal row to every queued task whose deliveries ran out without an outcome: its worker died (crashed,
/// was killed, wedged) on each attempt, so no worker ever recorded how it ended.
///
/// JetStream announces those on `$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.NEUTRINO_TASKS.<consumer>` and leaves the
/// message in the work queue. For each one the janitor reads the message, records the task `failed` with
/// `WorkerCrashed` (unless it is terminal already), copies it to the dead-letter stream, leaves a settled mark, and
/// deletes it. Every step is idempotent, so every gateway replica can run one.
struct DeliveryJanitor: Service {
    let queue: GatewayQueue
    let manifest: Manifest
    let taskLog: (any TaskEventSink)?
    let reader: TaskLogReader?
    let logger: Logger

    static let advisorySubject = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.\(QueueLayout.tasksStream).*"

    func run() async throws {
        await cancelWhenGracefulShutdown { [self] in
            while !Task.isCancelled {
                do {
                    let advisories = try await queue.connection.subscribe(subject: Self.advisorySubject)
                    await withTaskCancellationHandler {
                        for await data in advisories.messages { await handle(data) }
                    } onCancel: {
                        advisories.close()
                    }
                } catch {
                    logger.debug("cannot subscribe to delivery advisories yet", metadata: ["error": "\(error)"])
                }
                try? await Task.sleep(for: .seconds(1))
            }
        }
    }

    /// One `io.nats.jetstream.advisory.v1.max_deliver` advisory (validated: anything else is ignored).
    func handle(_ data: [UInt8]) async {
        guard let value = try? JSONParser.parse(data), case .object(let advisory) = value,
            advisory["stream"]?.stringValue == QueueLayout.tasksStream,
            let consumer = advisory["consumer"]?.stringValue, consumer.hasPrefix("pool_"),
            let sequence = advisory["stream_seq"]?.intValue, sequence > 0
        else { return }
        let deliveries = min(max(0, advisory["deliveries"]?.intValue ?? 0), 1_000_000)
        let pool = String(consumer.dropFirst("pool_".count))
        let js = queue.js
        guard let message = try? await js.getMessage(stream: QueueLayout.tasksStream, sequence: UInt64(sequence)) else { return }
        guard let name = QueueLayout.task(fromSubject: message.subject, pool: pool), let spec = manifest.tasks[name]?.spec,
            let taskID = message.header("Nats-Msg-Id")?.lowercased(), TaskID.isValid(taskID)
        else {
            logger.error("an exhausted message is not a task of this manifest; deleting it", metadata: ["subject": "\(message.subject)"])
            try? await js.deleteMessage(stream: QueueLayout.tasksStream, sequence: UInt64(sequence))
            return
        }
        let terminal = (try? await reader?.status(id: taskID))??.isTerminal ?? false
        if !terminal {
            let text =
                "task '\(name)' was delivered \(deliveries) time(s) and its worker ended every attempt without an outcome "
                + "(it crashed, was killed or wedged)"
            taskLog?.record(
                TaskEvent(
                    taskID: taskID, kind: .failed, function: spec.name, pool: spec.pool, mode: spec.mode,
                    attempt: max(1, deliveries), error: JSONWriter.taskErrorText(.workerCrashed, message: text)))
            do {
                try await js.copyToDeadLetter(
                    data: message.data, pool: spec.pool, task: spec.name, taskID: taskID, attempts: deliveries, error: text)
            } catch {
                logger.error("copying an exhausted task to the dead-letter stream failed", metadata: ["task_id": "\(taskID)", "error": "\(error)"])
            }
            try? await js.markSettled(pool: spec.pool, taskID: taskID, status: .failed)
            await taskLog?.flush()
            logger.warning(
                "task ended by the janitor: deliveries exhausted without an outcome",
                metadata: ["task_id": "\(taskID)", "task": "\(name)", "deliveries": "\(deliveries)"])
        }
        try? await js.deleteMessage(stream: QueueLayout.tasksStream, sequence: UInt64(sequence))
    }
}
