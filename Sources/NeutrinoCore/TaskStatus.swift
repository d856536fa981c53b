/// Where a task stands. Each value says which component moves a task into it.
public enum TaskStatus: String, Sendable, Codable, CaseIterable {
    /// A sync task the gateway accepted and is sending to a fast worker (gateway).
    case pending
    /// An async or gpu task stored in JetStream, waiting for a worker of its pool (gateway; worker on retry).
    case queued
    /// A worker started an attempt (worker).
    case running
    /// The function returned a JSON result (worker; the gateway copies what it delivered).
    case completed
    /// The function raised, or no worker could take the task (worker or gateway).
    case failed
    /// Cancelled by `DELETE /tasks/<id>` (gateway or worker).
    case cancelled
    /// The task ran past its timeout (worker, or the gateway when the worker never answered).
    case timedOut = "timed_out"

    /// Terminal statuses never change again.
    public var isTerminal: Bool {
        switch self {
        case .completed, .failed, .cancelled, .timedOut: true
        case .pending, .queued, .running: false
        }
    }
}

/// The lifecycle events that move a task between statuses. Each is stored in `task_events`.
public enum TaskEventKind: String, Sendable, Codable, CaseIterable {
    case pending, queued, running, completed, failed, cancelled
    case timedOut = "timed_out"
    /// An attempt failed and the task goes back to the queue for another.
    case retrying
    /// The task reported progress; the status stays `running`.
    case progress

    /// The status this event moves a task to.
    public var status: TaskStatus {
        switch self {
        case .pending: .pending
        case .queued, .retrying: .queued
        case .running, .progress: .running
        case .completed: .completed
        case .failed: .failed
        case .cancelled: .cancelled
        case .timedOut: .timedOut
        }
    }
}

/// The status state machine. Events arrive from several processes in any order (batches commit
/// independently), so applying them must be idempotent and monotonic: a late or repeated event never
/// undoes a terminal status, and a late `pending` only fills in what the row lacks.
public enum TaskStateMachine {
    public enum Decision: Equatable, Sendable {
        /// Move to this status and take the event's fields.
        case transition(TaskStatus)
        /// Keep the status; only fill fields the row does not have yet (args, created_at, ...).
        case fillMissing
        /// Keep the status and take the event's progress fields (a `progress` event while running).
        case updateProgress
    }

    /// What applying `event` (for attempt `eventAttempt`) to a task in `current` status (at `currentAttempt`)
    /// does. `current == nil` means the task has no row yet.
    public static func decide(
        current: TaskStatus?, currentAttempt: Int,
        event: TaskEventKind, eventAttempt: Int
    ) -> Decision {
        guard let current else { return .transition(event.status) }
        if current.isTerminal { return .fillMissing }
        switch event {
        case .pending, .queued:
            return .fillMissing
        case .progress:
            return current == .running && eventAttempt >= currentAttempt ? .updateProgress : .fillMissing
        case .running:
            // A new attempt, or the first; a stale `running` of an older attempt changes nothing.
            if current == .running && eventAttempt <= currentAttempt { return .fillMissing }
            return eventAttempt >= currentAttempt ? .transition(.running) : .fillMissing
        case .retrying:
            return eventAttempt >= currentAttempt ? .transition(.queued) : .fillMissing
        case .completed, .failed, .cancelled, .timedOut:
            return .transition(event.status)
        }
    }
}
