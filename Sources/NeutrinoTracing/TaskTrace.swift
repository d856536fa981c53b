import NeutrinoCore
import Tracing

/// The trace a task is handled in: the context its spans start under, and the trace id stored with the task.
public struct TaskTrace: Sendable {
    /// The parent of the spans recorded for the task here (the gateway's request span; a worker's remote parent).
    public let parent: InstrumentationContext
    /// 32 lower-case hex digits.
    public let traceID: String

    public init(parent: InstrumentationContext, traceID: String) {
        self.parent = parent
        self.traceID = traceID
    }

    /// The trace of the span current in this task-local context (the gateway's request span, which Hummingbird's
    /// `TracingMiddleware` started from the request's `traceparent` or as a new trace); nil when tracing is off.
    public static func current() -> TaskTrace? {
        guard NeutrinoTracing.isEnabled, let context = InstrumentationContext.current,
            let id = NeutrinoTracing.traceID(of: context)
        else { return nil }
        return TaskTrace(parent: context, traceID: id)
    }

    /// Starts span `name` for task `taskID` under this trace, with the task's attributes.
    public func startSpan(
        _ name: String, kind: SpanKind = .internal, at start: EpochInstant? = nil, taskID: String, task: String,
        pool: String, attempt: Int? = nil
    ) -> (any Span)? {
        NeutrinoTracing.startTaskSpan(
            name, parent: parent, kind: kind, at: start, taskID: taskID, task: task, pool: pool, attempt: attempt)
    }
}

extension NeutrinoTracing {
    /// Starts span `name` for task `taskID` under `parent`, with the task's attributes (`neutrino.task_id`,
    /// `neutrino.task`, `neutrino.pool`, `neutrino.attempt`); nil when tracing is off.
    public static func startTaskSpan(
        _ name: String, parent: InstrumentationContext, kind: SpanKind = .internal, at start: EpochInstant? = nil,
        taskID: String, task: String, pool: String, attempt: Int? = nil
    ) -> (any Span)? {
        guard let span = startSpan(name, parent: parent, kind: kind, at: start) else { return nil }
        span.updateAttributes { a in
            a["neutrino.task_id"] = taskID
            a["neutrino.task"] = task
            a["neutrino.pool"] = pool
            if let attempt { a["neutrino.attempt"] = attempt }
        }
        return span
    }

    /// A worker's span for task `taskID` continuing `incoming` (the caller's `traceparent`; a new trace without one);
    /// nil when tracing is off.
    public static func startTaskSpan(
        _ name: String, continuing incoming: TraceParent?, kind: SpanKind, at start: EpochInstant? = nil,
        taskID: String, task: String, pool: String, attempt: Int? = nil
    ) -> (any Span)? {
        guard isEnabled else { return nil }
        return startTaskSpan(
            name, parent: context(continuing: incoming), kind: kind, at: start, taskID: taskID, task: task, pool: pool,
            attempt: attempt)
    }
}

extension TaskTrace {
    /// A worker's trace for a task whose message or request carried `incoming`: starts its first span `name` (a child
    /// of `incoming`, or the root of a new trace) and returns it with the trace the worker's later spans join (their
    /// parent is `incoming`'s span, or this first span when there was none); nil when tracing is off.
    public static func start(
        _ name: String, continuing incoming: TraceParent?, kind: SpanKind, at start: EpochInstant? = nil, taskID: String,
        task: String, pool: String, attempt: Int? = nil
    ) -> (trace: TaskTrace, span: any Span)? {
        guard NeutrinoTracing.isEnabled else { return nil }
        let remote = NeutrinoTracing.context(continuing: incoming)
        guard
            let span = NeutrinoTracing.startTaskSpan(
                name, parent: remote, kind: kind, at: start, taskID: taskID, task: task, pool: pool, attempt: attempt),
            let traceID = span.traceID
        else { return nil }
        return (TaskTrace(parent: incoming == nil ? span.context : remote, traceID: traceID), span)
    }
}

extension Span {
    /// Marks the span failed with `message` (an error status; its description in the status message).
    public func fail(_ message: String) {
        setStatus(SpanStatus(code: .error, message: message))
    }

    /// The `traceparent` naming this span as the parent of spans in another process.
    public var traceParent: TraceParent? { NeutrinoTracing.traceParent(of: context) }

    /// This span's trace id.
    public var traceID: String? { NeutrinoTracing.traceID(of: context) }
}
