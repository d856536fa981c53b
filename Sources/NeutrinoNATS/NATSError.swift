import CNats

/// A failed NATS or JetStream operation.
///
/// Carries what cnats says about it: the `natsStatus` (code and text), the JetStream API error code when the server
/// answered with one (`jsErrorCode`, e.g. 10058 "stream name already in use"), and the thread's
/// `nats_GetLastError` text. The classification properties tell a gateway what to answer: `isUnavailable`
/// (connection problem, timeout, no JetStream responder) maps to 503.
public struct NATSError: Error, Sendable, CustomStringConvertible {
    /// Where the error came from, when it is not a cnats status.
    public enum Origin: Sendable, Equatable {
        /// A cnats call returned a status other than `NATS_OK`.
        case library
        /// The object (connection, subscription, thread pool) was closed by this process.
        case closed
        /// An argument was refused before any call (e.g. a string with a NUL byte).
        case invalidArgument
        /// Something else local (a thread could not start).
        case local
    }

    /// The cnats function (or wrapper operation) that failed.
    public let operation: String
    public let origin: Origin
    /// The raw `natsStatus` (`NATS_OK` is 0); `nil` when the error did not come from cnats.
    public let status: UInt32?
    /// `natsStatus_GetText(status)`, or a short description of a local error.
    public let statusText: String
    /// The JetStream API error code (`jsErrCode`), 0 when the server did not send one.
    public let jsErrorCode: Int
    /// `nats_GetLastError` text from the failing thread (when it was for this status), or the server's description.
    public let detail: String
    /// Whether the connection was not connected (disconnected, reconnecting, not yet connected, closed) when the
    /// error was observed. A timeout while the connection is down is a connection problem.
    public let connectionWasDown: Bool

    init(
        operation: String, origin: Origin, status: UInt32?, statusText: String, jsErrorCode: Int, detail: String,
        connectionWasDown: Bool
    ) {
        self.operation = operation
        self.origin = origin
        self.status = status
        self.statusText = statusText
        self.jsErrorCode = jsErrorCode
        self.detail = detail
        self.connectionWasDown = connectionWasDown
    }

    /// The request or fetch did not complete in time.
    public var isTimeout: Bool { status == NATS_TIMEOUT.rawValue }

    /// The server could not be reached, or the connection is closed: retrying later may work.
    public var isConnectionProblem: Bool {
        if origin == .closed { return true }
        guard let status else { return false }
        if Self.connectionStatuses.contains(status) { return true }
        // A request that timed out (or was refused by a full reconnect buffer) while the connection was down.
        return connectionWasDown
            && (status == NATS_TIMEOUT.rawValue || status == NATS_INSUFFICIENT_BUFFER.rawValue
                || status == NATS_NO_RESPONDERS.rawValue)
    }

    /// Nobody answered the JetStream API request (JetStream disabled, or no stream for the subject).
    public var isNoResponders: Bool { status == NATS_NO_RESPONDERS.rawValue }

    /// The stream, consumer or message does not exist (`NATS_NOT_FOUND`, or jerr 10059 / 10014 / 10037).
    public var isNotFound: Bool {
        status == NATS_NOT_FOUND.rawValue || [10059, 10014, 10037].contains(jsErrorCode)
    }

    /// What a gateway answers with 503: the message bus is not usable right now.
    public var isUnavailable: Bool { isConnectionProblem || isTimeout || isNoResponders }

    public var description: String {
        var text = "\(operation): \(statusText)"
        if jsErrorCode != 0 { text += " (jerr \(jsErrorCode))" }
        if !detail.isEmpty && detail != statusText { text += ": \(detail)" }
        if connectionWasDown && origin == .library { text += " [connection down]" }
        return text
    }

    private static let connectionStatuses: Set<UInt32> = [
        NATS_IO_ERROR.rawValue, NATS_CONNECTION_CLOSED.rawValue, NATS_NO_SERVER.rawValue,
        NATS_STALE_CONNECTION.rawValue, NATS_CONNECTION_DISCONNECTED.rawValue, NATS_NOT_YET_CONNECTED.rawValue,
        NATS_CONNECTION_AUTH_FAILED.rawValue, NATS_SECURE_CONNECTION_WANTED.rawValue,
        NATS_SECURE_CONNECTION_REQUIRED.rawValue, NATS_SSL_ERROR.rawValue,
    ]

    // MARK: - Construction

    /// The error for `status` returned by a cnats call on the current thread (reads the thread's last-error text,
    /// so call it on the thread that made the call, right after it).
    static func library(
        _ operation: String, _ status: natsStatus, jsErrCode: jsErrCode = jsErrCode(0),
        connection: OpaquePointer?
    ) -> NATSError {
        var lastStatus = NATS_OK
        var detail = ""
        if let text = nats_GetLastError(&lastStatus), lastStatus == status { detail = String(cString: text) }
        return NATSError(
            operation: operation, origin: .library, status: status.rawValue,
            statusText: statusText(status), jsErrorCode: Int(jsErrCode.rawValue), detail: detail,
            connectionWasDown: isDown(connection))
    }

    /// The error for a status reported by a callback (no thread-local text; the callback's own text instead).
    static func reported(
        _ operation: String, _ status: natsStatus, jsErrCode: Int, detail: String,
        connection: OpaquePointer?
    ) -> NATSError {
        NATSError(
            operation: operation, origin: .library, status: status.rawValue, statusText: statusText(status),
            jsErrorCode: jsErrCode, detail: detail, connectionWasDown: isDown(connection))
    }

    static func closed(_ operation: String, _ what: String) -> NATSError {
        NATSError(
            operation: operation, origin: .closed, status: nil, statusText: "closed", jsErrorCode: 0,
            detail: what, connectionWasDown: true)
    }

    static func invalidArgument(_ operation: String, _ what: String) -> NATSError {
        NATSError(
            operation: operation, origin: .invalidArgument, status: nil, statusText: "invalid argument",
            jsErrorCode: 0, detail: what, connectionWasDown: false)
    }

    static func local(_ operation: String, _ what: String) -> NATSError {
        NATSError(
            operation: operation, origin: .local, status: nil, statusText: "error", jsErrorCode: 0,
            detail: what, connectionWasDown: false)
    }

    private static func statusText(_ status: natsStatus) -> String {
        guard let text = natsStatus_GetText(status) else { return "status \(status.rawValue)" }
        return String(cString: text)
    }

    private static func isDown(_ connection: OpaquePointer?) -> Bool {
        guard let connection else { return false }
        return natsConnection_Status(connection) != NATS_CONN_STATUS_CONNECTED
    }
}
