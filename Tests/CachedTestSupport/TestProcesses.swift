import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Errors from the test harness.
public struct HarnessError: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// A fresh temporary directory with a short path (Unix socket paths must fit in 108 bytes).
public func makeTemporaryDirectory(_ prefix: String = "cached") throws -> String {
    var template = Array("/tmp/\(prefix)-XXXXXX".utf8CString)
    guard let result = mkdtemp(&template) else { throw HarnessError("mkdtemp failed") }
    return String(cString: result)
}

/// Polls `condition` until it holds or `timeout` passes.
public func waitUntil(timeout: Double = 10, interval: Double = 0.01, _ condition: () throws -> Bool) throws -> Bool {
    let deadline = Date().addingTimeInterval(timeout)
    while Date() < deadline {
        if (try? condition()) == true { return true }
        Thread.sleep(forTimeInterval: interval)
    }
    return (try? condition()) == true
}

/// A private `redis-server` for one test, on a Unix socket (and optionally a TCP port) in a temp dir.
public final class RedisServer: @unchecked Sendable {
    public let directory: String
    public let socketPath: String
    public let port: Int?
    public let password: String?
    /// With TLS: the certificates, and the TLS port (the Unix socket stays plain for redis-cli).
    public let tls: TestCertificates?
    public let tlsPort: Int?
    /// Whether TLS clients must present a certificate signed by the test CA.
    public let tlsAuthClients: Bool
    /// More `redis-server` arguments (e.g. `--replicaof`).
    public var extraArguments: [String]
    /// `redis-cli -c`: follow cluster redirects.
    public var followRedirects = false
    private var process: ChildProcess?

    public static var binary: String { ProcessInfo.processInfo.environment["REDIS_SERVER"] ?? "/usr/bin/redis-server" }

    /// - Parameters:
    ///   - tcp: also listen on a free loopback TCP port.
    ///   - tls: also listen for TLS on a free loopback port, with these certificates.
    public init(
        tcp: Bool = false, password: String? = nil, tls: TestCertificates? = nil, tlsAuthClients: Bool = false,
        extraArguments: [String] = []
    ) throws {
        self.extraArguments = extraArguments
        directory = try makeTemporaryDirectory("redis")
        socketPath = directory + "/redis.sock"
        self.tls = tls
        let cluster = extraArguments.contains("--cluster-enabled")
        self.tlsPort = tls == nil ? nil : (cluster ? Self.freeClusterPort() : Self.freePort())
        self.tlsAuthClients = tlsAuthClients
        port = tcp ? (cluster ? Self.freeClusterPort() : Self.freePort()) : nil
        self.password = password
        try start()
    }

    deinit {
        stop(signal: SIGKILL)
        try? FileManager.default.removeItem(atPath: directory)
    }

    /// The URL `cached` should use.
    public var unixURL: String {
        "unix://\(socketPath)?db=0" + (password.map { "&password=\($0)" } ?? "")
    }

    public var tcpURL: String {
        "redis://\(password.map { ":\($0)@" } ?? "")127.0.0.1:\(port ?? 0)/0"
    }

    /// `rediss://127.0.0.1:<tls port>/0` (with TLS).
    public var tlsURL: String { "rediss://127.0.0.1:\(tlsPort ?? 0)/0" }

    public var pid: Int32? { process?.pid }

    /// The port clients use: the TLS port with TLS, else the TCP port.
    public var servicePort: Int? { tlsPort ?? port }

    /// Starts (or restarts) the server on the same socket and port.
    public func start() throws {
        var args = [
            "--port", String(port ?? 0), "--bind", "127.0.0.1", "--unixsocket", socketPath, "--unixsocketperm", "700",
            "--save", "", "--appendonly", "no", "--daemonize", "no", "--dir", directory,
            "--logfile", directory + "/redis.log",
        ]
        if let password { args += ["--requirepass", password, "--masterauth", password] }
        args += extraArguments
        if let tls, let tlsPort {
            args += [
                "--tls-port", String(tlsPort), "--tls-cert-file", tls.serverCertificate, "--tls-key-file", tls.serverKey,
                "--tls-ca-cert-file", tls.caCertificate, "--tls-auth-clients", tlsAuthClients ? "yes" : "no",
            ]
        }
        process = try ChildProcess(Self.binary, args)
        guard try waitUntil(timeout: 10, { (try? cli(["PING"]))?.hasPrefix("PONG") == true || (try? cli(["PING"]))?.contains("NOAUTH") == true })
        else {
            throw HarnessError("redis-server did not start: \((try? String(contentsOfFile: directory + "/redis.log", encoding: .utf8)) ?? "")")
        }
    }

    /// Stops the server (SIGTERM, or SIGKILL to simulate a crash) and waits for it.
    public func stop(signal: Int32 = SIGTERM) {
        guard let p = process, p.isRunning else { return }
        p.signal(signal)
        p.wait()
        process = nil
    }

    /// Sends SIGSTOP/SIGCONT.
    public func send(signal: Int32) {
        process?.signal(signal)
    }

    /// Runs `redis-cli` against this server and returns its output without the last newline.
    @discardableResult
    public func cli(_ arguments: [String], raw: Bool = true) throws -> String {
        String(decoding: try cliBytes(arguments, raw: raw), as: UTF8.self)
    }

    /// Runs `redis-cli` and returns the exact bytes of its output without the last newline.
    public func cliBytes(_ arguments: [String], raw: Bool = true) throws -> [UInt8] {
        // redis-cli follows cluster redirects (-c) over TCP only.
        var args = followRedirects && port != nil ? ["-h", "127.0.0.1", "-p", String(port!), "-c"] : ["-s", socketPath]
        if raw { args.append("--raw") }
        if let password { args += ["-a", password, "--no-auth-warning"] }
        var bytes = try ChildProcess.output("/usr/bin/redis-cli", args + arguments)
        if bytes.last == UInt8(ascii: "\n") { bytes.removeLast() }
        return bytes
    }

    /// A free port at most 55535 (a cluster node also listens on port + 10000).
    public static func freeClusterPort() -> Int {
        while true {
            let port = freePort()
            if port <= 55535 { return port }
        }
    }

    public static func freePort() -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        addr.sin_port = 0
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) } }
        _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
        return Int(UInt16(bigEndian: addr.sin_port))
    }
}

/// The real `cached` binary, started for one test.
public final class DaemonProcess: @unchecked Sendable {
    public let directory: String
    public let socketPath: String
    public let logPath: String
    private let process: ChildProcess

    /// The `cached` executable: `$CACHED_BIN`, else next to the test bundle, else `<repo>/.build/debug/cached`.
    public static var binary: String {
        if let path = ProcessInfo.processInfo.environment["CACHED_BIN"] { return path }
        let besideTests = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
            .appendingPathComponent("cached").path
        if FileManager.default.isExecutableFile(atPath: besideTests) { return besideTests }
        let repo = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        return repo.appendingPathComponent(".build/debug/cached").path
    }

    /// Starts `cached` with a configuration file and extra arguments; waits until it answers `ping`.
    public init(config: String = "", arguments: [String] = [], waitForReady: Bool = true, environment: [String: String] = [:]) throws {
        directory = try makeTemporaryDirectory("cached")
        socketPath = directory + "/cached.sock"
        logPath = directory + "/cached.log"
        let configPath = directory + "/cached.toml"
        try config.write(toFile: configPath, atomically: true, encoding: .utf8)
        var env = ProcessInfo.processInfo.environment
        for (k, v) in environment { env[k] = v }
        process = try ChildProcess(
            Self.binary, ["--config", configPath, "--socket", socketPath] + arguments, outputPath: logPath, environment: env)
        if waitForReady {
            let ok = try waitUntil(timeout: 15) {
                guard let client = try? LineClient(path: socketPath) else { return false }
                return (try? client.call("ping"))?["result"] == .string("pong")
            }
            guard ok else { throw HarnessError("cached did not start:\n\(self.log())") }
        }
    }

    deinit {
        if process.isRunning {
            process.signal(SIGKILL)
            process.wait()
        }
        try? FileManager.default.removeItem(atPath: directory)
    }

    public var pid: Int32 { process.pid }
    public var isRunning: Bool { process.isRunning }

    /// The daemon's log so far.
    public func log() -> String {
        (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? ""
    }

    /// Sends a signal and waits for exit (up to `timeout`); returns the exit status, or nil if still running.
    @discardableResult
    public func stop(signal: Int32 = SIGTERM, timeout: Double = 15) -> Int32? {
        guard process.isRunning else { return process.exitCode }
        process.signal(signal)
        _ = try? waitUntil(timeout: timeout) { !process.isRunning }
        return process.exitCode
    }

    /// Waits for the process to exit by itself; returns the exit status, or nil if still running.
    public func waitForExit(timeout: Double = 15) -> Int32? {
        _ = try? waitUntil(timeout: timeout) { !process.isRunning }
        return process.exitCode
    }

    /// Sends a signal without waiting.
    public func signalOnly(_ signal: Int32) {
        process.signal(signal)
    }

    /// A new client connected to this daemon.
    public func client() throws -> LineClient {
        try LineClient(path: socketPath)
    }
}

/// A certificate authority, a server certificate (`localhost`, `127.0.0.1`) and a client certificate,
/// made by `openssl` in a temp dir for one test.
public final class TestCertificates: @unchecked Sendable {
    public let directory: String
    public var caCertificate: String { directory + "/ca.crt" }
    public var serverCertificate: String { directory + "/server.crt" }
    public var serverKey: String { directory + "/server.key" }
    public var clientCertificate: String { directory + "/client.crt" }
    public var clientKey: String { directory + "/client.key" }

    /// - Parameters:
    ///   - name: the common name of the CA (two calls make two unrelated CAs).
    ///   - serverNames: the server certificate's subjectAltName entries.
    public init(name: String = "cached test CA", serverNames: String = "DNS:localhost,IP:127.0.0.1") throws {
        directory = try makeTemporaryDirectory("certs")
        let d = directory
        try Self.openssl(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=\(name)",
                          "-keyout", d + "/ca.key", "-out", d + "/ca.crt"])
        for (who, extensions) in [("server", "subjectAltName=\(serverNames)"), ("client", "extendedKeyUsage=clientAuth")] {
            try Self.openssl(["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=\(who)",
                              "-keyout", "\(d)/\(who).key", "-out", "\(d)/\(who).csr"])
            try extensions.write(toFile: "\(d)/\(who).ext", atomically: true, encoding: .utf8)
            try Self.openssl(["x509", "-req", "-in", "\(d)/\(who).csr", "-CA", d + "/ca.crt", "-CAkey", d + "/ca.key",
                              "-CAcreateserial", "-days", "2", "-extfile", "\(d)/\(who).ext", "-out", "\(d)/\(who).crt"])
        }
    }

    deinit {
        try? FileManager.default.removeItem(atPath: directory)
    }

    private static func openssl(_ arguments: [String]) throws {
        let (status, _) = try ChildProcess.run("/usr/bin/openssl", arguments)
        guard status == 0 else { throw HarnessError("openssl \(arguments.prefix(2).joined(separator: " ")) failed (\(status))") }
    }
}
