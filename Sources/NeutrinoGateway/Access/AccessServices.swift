import Logging
import NeutrinoTaskLog
import ServiceLifecycle
import UnixSignals

/// Reloads the keys file when it changes (checked every `interval`) and on SIGHUP, without a restart.
struct KeyFileWatcher: Service, CustomStringConvertible {
    let store: KeyStore
    let interval: Duration
    var description: String { "keys file watcher" }

    func run() async throws {
        let signals = await UnixSignalsSequence(trapping: .sighup)
        await cancelWhenGracefulShutdown {
            await withTaskGroup(of: Void.self) { group in
                group.addTask {
                    for await _ in signals { store.reload(force: true, reason: "SIGHUP") }
                }
                group.addTask {
                    while !Task.isCancelled {
                        try? await Task.sleep(for: interval)
                        store.reload(reason: "file changed")
                    }
                }
                await group.waitForAll()
            }
        }
    }
}

/// `--insecure-no-auth` on a non-loopback address: says so in the log every `interval`.
struct InsecureWarning: Service, CustomStringConvertible {
    let host: String
    let interval: Duration
    let logger: Logger
    var description: String { "insecure warning" }

    func run() async throws {
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                logger.warning(
                    "the gateway listens on \(host) without API keys (--insecure-no-auth): anyone who reaches it can submit and cancel tasks")
                try? await Task.sleep(for: interval)
            }
        }
    }
}

/// Takes the tasks counted against `max_in_flight` out of the count once the task log shows them ended.
struct InFlightReaper: Service, CustomStringConvertible {
    let limits: KeyLimits
    let reader: TaskLogReader
    let interval: Duration
    var description: String { "in-flight quota" }

    func run() async throws {
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                try? await Task.sleep(for: interval)
                for id in limits.trackedTaskIDs {
                    if let status = try? await reader.status(id: id), status.isTerminal { limits.finished(taskID: id) }
                }
            }
        }
    }
}
