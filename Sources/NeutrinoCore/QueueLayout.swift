/// The NATS JetStream layout (DESIGN "NATS JetStream layout"): one work-queue stream for every queued pool,
/// one durable pull consumer per pool, a limits stream for dead letters, and a core subject for cancellations.
public enum QueueLayout {
    /// Work-queue stream holding every queued task until a worker of its pool acknowledges it.
    public static let tasksStream = "NEUTRINO_TASKS"
    /// Limits-retention stream holding the last failed attempt of tasks that ran out of retries.
    public static let deadLetterStream = "NEUTRINO_DLQ"
    /// Core NATS subject on which cancellations are broadcast to every worker.
    public static let cancelSubject = "neutrino.control.cancel"
    /// Core NATS subject on which a worker that records into the task log itself announces, right after the commit,
    /// each task of `pool` it finished (the task id as the body), so that long polls (`GET /tasks/<id>?wait=`)
    /// answer at once; no stream keeps it. Under `neutrino.control.`, which no pool can use.
    public static func finishedSubject(pool: String) -> String { "neutrino.control.finished.\(pool)" }
    /// What a gateway subscribes to for every pool's finished notices.
    public static let finishedSubjects = "neutrino.control.finished.*"
    /// Subjects of the dead-letter stream.
    public static let deadLetterSubjects = "neutrino.dlq.>"
    /// Pool names that would collide with the layout's own subjects.
    public static let reservedPools: Set<String> = ["dlq", "control", "events", "heartbeat", "settled"]
    /// `NEUTRINO_SETTLED`: one small message per task that must not run (again), `neutrino.settled.<pool>.<task_id>` with
    /// its status as the body: cancelled while queued (the gateway), or finished (a `--task-log nats` worker, before
    /// it acknowledges). Such a worker has no task log to ask, so it looks here before running a delivery; kept a
    /// day, far longer than any redelivery. The pool is in the subject so that NATS permissions can let a worker mark
    /// only its own pool's tasks.
    public static let settledStream = "NEUTRINO_SETTLED"
    public static let settledSubjects = "neutrino.settled.>"
    public static func settledSubject(pool: String, taskID: String) -> String { "neutrino.settled.\(pool).\(taskID)" }

    /// `neutrino.<pool>.<task>`: where the gateway publishes a task.
    public static func taskSubject(pool: String, task: String) -> String { "neutrino.\(pool).\(task)" }
    /// `neutrino.<pool>.*`: what the tasks stream takes in for a pool.
    public static func streamSubject(pool: String) -> String { "neutrino.\(pool).*" }
    /// `neutrino.<pool>.>`: the pool consumer's filter.
    public static func filterSubject(pool: String) -> String { "neutrino.\(pool).>" }
    /// `pool_<pool>`: the pool's durable consumer (and KEDA's `consumer`).
    public static func consumer(pool: String) -> String { "pool_\(pool)" }
    /// `neutrino.dlq.<pool>.<task>`: where a task's last failed attempt is copied.
    public static func deadLetterSubject(pool: String, task: String) -> String { "neutrino.dlq.\(pool).\(task)" }

    /// The task name in `neutrino.<pool>.<task>`, if `subject` is one of `pool`'s.
    public static func task(fromSubject subject: String, pool: String) -> String? {
        let prefix = "neutrino.\(pool)."
        guard subject.hasPrefix(prefix) else { return nil }
        let task = String(subject.dropFirst(prefix.count))
        return TaskSpec.isValidName(task) ? task : nil
    }

    /// Attempts a pool's consumer allows: the most any of its tasks asks for (retries + 1), at least 1.
    public static func maxDeliver(retries: [Int]) -> Int { (retries.max() ?? 0) + 1 }

    /// Delay before attempt `attempt + 1` after attempt `attempt` failed: exponential from 1 s, capped at 60 s,
    /// with ±20 % jitter so retries of tasks that failed together spread out.
    public static func retryDelay(afterAttempt attempt: Int, jitter: Double = Double.random(in: -0.2...0.2)) -> Duration {
        let base = min(60.0, pow2(max(0, attempt - 1)))
        return .milliseconds(Int64(base * (1 + jitter) * 1000))
    }

    private static func pow2(_ n: Int) -> Double { n >= 6 ? 64 : Double(1 << n) }
}
