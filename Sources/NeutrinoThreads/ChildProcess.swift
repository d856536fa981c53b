import Glibc

/// Runs short helper programs without Foundation's `Process` (a process that never calls into Foundation keeps about
/// 1 MB fewer resident pages; bench/README.md, twenty-third round).
public enum ChildProcess {
    /// Runs `arguments` (found on PATH) with its standard output captured and its standard error discarded; its exit
    /// status (-1 when a signal ended it) and at most 1 MiB of its output, or nil when it could not be started.
    public static func run(_ arguments: [String]) -> (status: Int32, output: String)? {
        guard let program = arguments.first else { return nil }
        var fds: [Int32] = [-1, -1]
        guard pipe(&fds) == 0 else { return nil }
        let (readEnd, writeEnd) = (fds[0], fds[1])
        // Neither end leaks into other children; the program's stdout is a dup2 of the write end, which clears the flag.
        _ = fcntl(readEnd, F_SETFD, FD_CLOEXEC)
        _ = fcntl(writeEnd, F_SETFD, FD_CLOEXEC)
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, writeEnd, 1)
        posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
        let argv = arguments.map { strdup($0) } + [nil]
        defer { for arg in argv { free(arg) } }
        var pid = pid_t()
        let spawned = posix_spawnp(&pid, program, &actions, nil, argv, environ)
        close(writeEnd)
        defer { close(readEnd) }
        guard spawned == 0 else { return nil }
        var output: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        // Read to the end (past the cap too, discarding), so the program never blocks on a full pipe.
        while true {
            let n = buffer.withUnsafeMutableBytes { read(readEnd, $0.baseAddress, $0.count) }
            if n > 0 {
                if output.count < 1 << 20 { output.append(contentsOf: buffer[0..<min(n, (1 << 20) - output.count)]) }
            } else if n < 0 && errno == EINTR {
                continue
            } else {
                break
            }
        }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        // WIFEXITED / WEXITSTATUS; a program killed by a signal counts as failed (-1).
        let exit = status & 0x7f == 0 ? (status >> 8) & 0xff : -1
        return (exit, String(decoding: output, as: UTF8.self))
    }
}
