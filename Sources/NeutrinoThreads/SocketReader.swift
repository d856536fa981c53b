import Glibc

/// Buffered blocking reads of one socket.
public struct SocketReader {
    public let fd: Int32
    /// What `buffer` shrinks back to after a frame that made it grow.
    private static let baseBytes = 64 << 10
    private var buffer = [UInt8](repeating: 0, count: SocketReader.baseBytes)
    private var low = 0
    private var high = 0

    /// Reads time out after `idleTimeout` (SO_RCVTIMEO); whether a timeout ends the connection is `take`'s
    /// `keepWaiting`.
    public init(fd: Int32, idleTimeout: Duration) {
        self.fd = fd
        var timeout = timeval(tv_sec: Int(idleTimeout.components.seconds), tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    }

    /// The next `count` bytes; nil at the end of the stream, on an error, or on a timeout unless `keepWaiting()`
    /// says to go on (only asked while no byte of what is wanted has arrived). For a frame bigger than the buffer,
    /// the buffer grows by at most 1 MiB per read: memory follows the bytes that arrive, not the length declared.
    public mutating func take(_ count: Int, keepWaiting: () -> Bool = { false }) -> [UInt8]? {
        if high - low < count && low > 0 {
            // Move what is left to the front, so the wanted bytes fit.
            buffer.withUnsafeMutableBytes { raw in
                guard let base = raw.baseAddress else { return }
                memmove(base, base + low, high - low)
            }
            high -= low
            low = 0
        }
        while high - low < count {
            if high == buffer.count { buffer.append(contentsOf: repeatElement(0, count: min(count - high, 1 << 20))) }
            let n = buffer.withUnsafeMutableBytes { raw -> Int in
                guard let base = raw.baseAddress else { return -1 }
                return read(fd, base + high, raw.count - high)
            }
            if n > 0 {
                high += n
            } else if n < 0 && errno == EINTR {
                continue
            } else if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) && high == low && keepWaiting() {
                continue
            } else {
                return nil
            }
        }
        let taken = Array(buffer[low..<(low + count)])
        low += count
        if buffer.count > Self.baseBytes && low == high {
            buffer = [UInt8](repeating: 0, count: Self.baseBytes)
            low = 0
            high = 0
        }
        return taken
    }
}

/// The next connection on a blocking `listener`, or nil once the listener is done (shut down by its owner, which
/// `stopping` then says, or failing for good). Rides out an interrupted call, a connection aborted before it was taken,
/// and running out of descriptors or memory (waiting 10 ms for some to be freed).
public func acceptConnection(on listener: Int32, stopping: () -> Bool) -> Int32? {
    while true {
        let fd = accept(listener, nil, nil)
        if fd >= 0 { return fd }
        let code = errno
        // Anything else (EINVAL) is the owner's shutdown of the socket.
        guard !stopping(), [EINTR, ECONNABORTED, EMFILE, ENFILE, ENOBUFS, ENOMEM].contains(code) else { return nil }
        if code != EINTR && code != ECONNABORTED { usleep(10_000) }
    }
}
