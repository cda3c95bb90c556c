import CSpawn

#if canImport(Glibc)
import Glibc
#endif

/// A child process started with `posix_spawnp`, its stdin/stdout/stderr on pipes.
struct SpawnedProcess {
    var pid: pid_t
    /// Write end of the child's stdin.
    var stdin: CInt
    /// Read end of the child's stdout.
    var stdout: CInt
    /// Read end of the child's stderr.
    var stderr: CInt
}

/// Why a worker program could not be started.
struct SpawnError: Error, CustomStringConvertible {
    var description: String
}

enum ProcessSpawner {
    /// Variables a worker must not inherit: socket activation and notification belong to the daemon.
    static let scrubbed: Set<String> = ["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"]

    /// Starts `command` (argv[0] looked up in PATH) in its own session, with the daemon's environment
    /// minus ``scrubbed`` plus `environment`, in `workingDirectory`.
    static func spawn(_ command: [String], environment: [String: String], workingDirectory: String?) throws(SpawnError) -> SpawnedProcess {
        var stdinPipe: [CInt] = [-1, -1]
        var stdoutPipe: [CInt] = [-1, -1]
        var stderrPipe: [CInt] = [-1, -1]
        guard cached_pipe_cloexec(&stdinPipe) == 0, cached_pipe_cloexec(&stdoutPipe) == 0, cached_pipe_cloexec(&stderrPipe) == 0 else {
            let message = String(cString: strerror(errno))
            for fd in stdinPipe + stdoutPipe + stderrPipe where fd >= 0 { close(fd) }
            throw SpawnError(description: "pipe: \(message)")
        }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, stdinPipe[0], 0)
        posix_spawn_file_actions_adddup2(&actions, stdoutPipe[1], 1)
        posix_spawn_file_actions_adddup2(&actions, stderrPipe[1], 2)
        if let workingDirectory {
            cached_spawn_file_actions_addchdir(&actions, workingDirectory)
        }
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var noSignals = sigset_t()
        sigemptyset(&noSignals)
        posix_spawnattr_setsigmask(&attributes, &noSignals)
        var defaults = sigset_t()
        sigfillset(&defaults)
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF) | cached_spawn_setsid_flag())

        var env: [String: String] = [:]
        var p = environ
        while let entry = p.pointee {
            let pair = String(cString: entry)
            if let eq = pair.firstIndex(of: "=") { env[String(pair[..<eq])] = String(pair[pair.index(after: eq)...]) }
            p += 1
        }
        for name in scrubbed { env[name] = nil }
        for (k, v) in environment { env[k] = v }
        let argv: [UnsafeMutablePointer<CChar>?] = command.map { strdup($0) } + [nil]
        let envp: [UnsafeMutablePointer<CChar>?] = env.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            argv.forEach { free($0) }
            envp.forEach { free($0) }
        }
        var pid: pid_t = 0
        let rc = posix_spawnp(&pid, command[0], &actions, &attributes, argv, envp)
        close(stdinPipe[0])
        close(stdoutPipe[1])
        close(stderrPipe[1])
        guard rc == 0 else {
            close(stdinPipe[1])
            close(stdoutPipe[0])
            close(stderrPipe[0])
            throw SpawnError(description: "cannot start \(command[0]): \(String(cString: strerror(rc)))")
        }
        return SpawnedProcess(pid: pid, stdin: stdinPipe[1], stdout: stdoutPipe[0], stderr: stderrPipe[0])
    }
}
