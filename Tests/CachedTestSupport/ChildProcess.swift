#if canImport(Glibc)
import Glibc
#endif

/// A child process started with `posix_spawn` and reaped with `waitpid`.
///
/// Foundation's `Process` can deadlock in `waitUntilExit` when several tests start processes at once
/// (a child is left unreaped); this wrapper owns its pid and reaps it itself.
public final class ChildProcess: @unchecked Sendable {
    public let pid: pid_t
    private var status: Int32?

    /// Starts `path` with `arguments`; stdout and stderr go to `outputPath` (or /dev/null), stdin is /dev/null.
    public init(_ path: String, _ arguments: [String], outputPath: String? = nil, environment: [String: String]? = nil, stdoutFD: Int32? = nil) throws {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        let out = outputPath ?? "/dev/null"
        if let stdoutFD {
            posix_spawn_file_actions_adddup2(&actions, stdoutFD, 1)
            posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
        } else {
            posix_spawn_file_actions_addopen(&actions, 1, out, O_WRONLY | O_CREAT | O_APPEND, 0o644)
            posix_spawn_file_actions_adddup2(&actions, 1, 2)
        }
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        // A fresh signal mask and default dispositions, whatever the test runner has set.
        var empty = sigset_t()
        sigemptyset(&empty)
        posix_spawnattr_setsigmask(&attributes, &empty)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for s in [SIGPIPE, SIGTERM, SIGINT, SIGHUP, SIGCHLD] { sigaddset(&defaults, s) }
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))

        let argv = ([path] + arguments).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        let envStrings: [String]
        if let environment {
            envStrings = environment.map { "\($0.key)=\($0.value)" }
        } else {
            var list: [String] = []
            var p = environ
            while let entry = p.pointee {
                list.append(String(cString: entry))
                p += 1
            }
            envStrings = list
        }
        let envp = envStrings.map { strdup($0) } + [nil]
        defer { envp.forEach { free($0) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, path, &actions, &attributes, argv, envp)
        guard rc == 0 else { throw HarnessError("posix_spawn \(path) failed: \(rc)") }
        self.pid = pid
    }

    deinit {
        if isRunning {
            kill(pid, SIGKILL)
            _ = wait()
        }
    }

    /// Whether the child is still running (reaps it if it has exited).
    public var isRunning: Bool {
        if status != nil { return false }
        var s: Int32 = 0
        let r = waitpid(pid, &s, WNOHANG)
        if r == pid {
            status = s
            return false
        }
        return r == 0
    }

    /// Blocks until the child exits; returns its exit code (128 + signal if killed).
    @discardableResult
    public func wait() -> Int32 {
        if let status { return Self.exitCode(status) }
        var s: Int32 = 0
        while waitpid(pid, &s, 0) == -1 && errno == EINTR {}
        status = s
        return Self.exitCode(s)
    }

    /// The exit code once the child has exited.
    public var exitCode: Int32? {
        guard !isRunning, let status else { return nil }
        return Self.exitCode(status)
    }

    public func signal(_ sig: Int32) { kill(pid, sig) }

    static func exitCode(_ status: Int32) -> Int32 {
        let signal = status & 0x7F
        return signal == 0 ? (status >> 8) & 0xFF : 128 + signal
    }

    /// Runs a command to completion and returns its stdout.
    public static func output(_ path: String, _ arguments: [String]) throws -> [UInt8] {
        try run(path, arguments).stdout
    }

    /// Runs a command to completion; returns its exit code and stdout (stderr is discarded).
    public static func run(_ path: String, _ arguments: [String], environment: [String: String]? = nil) throws -> (status: Int32, stdout: [UInt8]) {
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else { throw HarnessError("pipe failed") }
        let child: ChildProcess
        do {
            child = try ChildProcess(path, arguments, environment: environment, stdoutFD: fds[1])
        } catch {
            close(fds[0])
            close(fds[1])
            throw error
        }
        close(fds[1])
        var result: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = chunk.withUnsafeMutableBytes { read(fds[0], $0.baseAddress, $0.count) }
            if n > 0 {
                result.append(contentsOf: chunk[..<n])
            } else if n == 0 || errno != EINTR {
                break
            }
        }
        close(fds[0])
        return (child.wait(), result)
    }
}
