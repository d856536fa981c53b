/// Every error `type` Neutrino puts on the wire, in an HTTP error body (`{"error":{"type","message"}}`) or in a task's
/// stored error (`{"type","message","traceback"}`), with the HTTP status it is answered with.
///
/// The gateway, the workers and the task-log paths all name errors through this one enum, so a client can rely on
/// the `type` strings (the Python SDK maps them to exception classes). Errors raised by the user's own code keep the
/// Python exception's class name as their type and are not listed here.
public enum APIError: String, Sendable, CaseIterable {
    // The request itself.
    case badRequest = "BadRequest"
    case malformedJSON = "MalformedJSON"
    case invalidArguments = "InvalidArguments"
    case payloadTooLarge = "PayloadTooLarge"
    /// The request (its head or body) did not arrive within the server's time limit.
    case requestTimeout = "RequestTimeout"
    /// The request's header section is larger than the server accepts.
    case headersTooLarge = "HeadersTooLarge"
    /// An Idempotency-Key was sent again with different arguments (or for another task) within its window.
    case idempotencyKeyReused = "IdempotencyKeyReused"
    case routeNotFound = "NotFound"
    case methodNotAllowed = "MethodNotAllowed"
    case unknownTask = "UnknownTask"
    case taskNotFound = "TaskNotFound"
    // Who is asking (API keys, the Host and Origin checks, per-key limits).
    case unauthorized = "Unauthorized"
    case forbidden = "Forbidden"
    case misdirectedRequest = "MisdirectedRequest"
    case rateLimited = "RateLimited"
    // The task's state.
    case taskFinished = "TaskFinished"
    case notCancellable = "NotCancellable"
    case notRetryable = "NotRetryable"
    case notSupported = "NotSupported"
    // Capacity and dependencies.
    case noWorkerAvailable = "NoWorkerAvailable"
    case workerUnavailable = "WorkerUnavailable"
    case workerCrashed = "WorkerCrashed"
    /// The worker's answer was larger than the gateway reads; the task's outcome is in the task log.
    case workerAnswerTooLarge = "WorkerAnswerTooLarge"
    case queueUnavailable = "QueueUnavailable"
    case taskLogUnavailable = "TaskLogUnavailable"
    case notReady = "NotReady"
    /// The server failed in a way no other type describes (a bug): the request may be retried.
    case internalError = "InternalError"
    /// A bounded resource of the server is full (long-poll waiters, live-feed streams, connections); retry later.
    case overloaded = "Overloaded"
    // How a task ended other than by its own exception.
    case timeout = "TimeoutError"
    case cancelled = "Cancelled"
    case resultNotSerializable = "ResultNotSerializable"
    case resultTooLarge = "ResultTooLarge"
    case errorTooLarge = "ErrorTooLarge"
    case memoryError = "MemoryError"

    /// The wire name.
    public var type: String { rawValue }

    /// The HTTP status this error is answered with.
    public var statusCode: Int {
        switch self {
        case .badRequest, .malformedJSON: 400
        case .unauthorized: 401
        case .forbidden: 403
        case .misdirectedRequest: 421
        case .rateLimited: 429
        case .routeNotFound, .unknownTask, .taskNotFound: 404
        case .methodNotAllowed: 405
        case .requestTimeout: 408
        case .taskFinished, .notCancellable, .notRetryable: 409
        case .payloadTooLarge: 413
        case .headersTooLarge: 431
        case .invalidArguments, .idempotencyKeyReused: 422
        case .notSupported: 501
        case .workerCrashed, .workerAnswerTooLarge: 502
        case .noWorkerAvailable, .workerUnavailable, .queueUnavailable, .taskLogUnavailable, .notReady, .overloaded: 503
        case .timeout: 504
        case .cancelled, .resultNotSerializable, .resultTooLarge, .errorTooLarge, .memoryError, .internalError: 500
        }
    }
}

extension JSONWriter {
    /// A stored task error of one of Neutrino's own types, as JSON text.
    public static func taskErrorText(_ error: APIError, message: String) -> String {
        taskErrorText(type: error.type, message: message)
    }
}
