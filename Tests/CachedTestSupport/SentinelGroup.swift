import Foundation

/// One master, one replica and three Sentinels (`redis-server --sentinel`), on free loopback ports,
/// watching the master as `mymaster` with `down-after-milliseconds` 1000 and `failover-timeout` 3000.
public final class SentinelGroup: @unchecked Sendable {
    public let masterName = "mymaster"
    /// The two data nodes; which one is master changes with failovers.
    public let nodes: [RedisServer]
    public let sentinelPorts: [Int]
    private let directory: String
    private var sentinels: [ChildProcess] = []

    /// The Sentinels' own password (`requirepass` in sentinel.conf), if any.
    public let sentinelPassword: String?

    /// With TLS: the certificates; data nodes and Sentinels then speak TLS only (replication too).
    public let tls: TestCertificates?

    /// - Parameters:
    ///   - password: the data nodes' `requirepass` (the Sentinels authenticate with it).
    ///   - sentinelPassword: the Sentinels' `requirepass`.
    ///   - tls: TLS only, everywhere, with these certificates.
    public init(password: String? = nil, sentinelPassword: String? = nil, tls: TestCertificates? = nil) throws {
        self.sentinelPassword = sentinelPassword
        self.tls = tls
        directory = try makeTemporaryDirectory("sentinel")
        let replication = tls == nil ? [] : ["--tls-replication", "yes"]
        let master = try RedisServer(tcp: tls == nil, password: password, tls: tls, extraArguments: replication)
        let replica = try RedisServer(
            tcp: tls == nil, password: password, tls: tls,
            extraArguments: replication + ["--replicaof", "127.0.0.1", String(master.servicePort!)])
        nodes = [master, replica]
        sentinelPorts = (0..<3).map { _ in RedisServer.freePort() }
        for (index, port) in sentinelPorts.enumerated() {
            let conf = "\(directory)/sentinel-\(index).conf"
            let listen =
                if let tls {
                    """
                    port 0
                    tls-port \(port)
                    tls-cert-file \(tls.serverCertificate)
                    tls-key-file \(tls.serverKey)
                    tls-ca-cert-file \(tls.caCertificate)
                    tls-auth-clients no
                    tls-replication yes
                    """
                } else {
                    "port \(port)"
                }
            var text = """
                \(listen)
                bind 127.0.0.1
                daemonize no
                dir \(directory)
                logfile \(directory)/sentinel-\(index).log
                sentinel monitor \(masterName) 127.0.0.1 \(master.servicePort!) 2
                sentinel down-after-milliseconds \(masterName) 1000
                sentinel failover-timeout \(masterName) 3000
                sentinel parallel-syncs \(masterName) 1

                """
            if let password { text += "sentinel auth-pass \(masterName) \(password)\n" }
            if let sentinelPassword { text += "requirepass \(sentinelPassword)\nsentinel sentinel-pass \(sentinelPassword)\n" }
            try text.write(toFile: conf, atomically: true, encoding: .utf8)
            sentinels.append(try ChildProcess(RedisServer.binary, [conf, "--sentinel"]))
        }
        // Ready: the replica is in sync and every Sentinel knows the master and the two other Sentinels.
        let ready = try waitUntil(timeout: 20, interval: 0.1) {
            guard try replica.cli(["INFO", "replication"]).contains("master_link_status:up") else { return false }
            return try sentinelPorts.allSatisfy { port in
                let others = try sentinelCLI(port: port, ["SENTINEL", "sentinels", masterName])
                return try sentinelCLI(port: port, ["SENTINEL", "get-master-addr-by-name", masterName])
                    .contains(String(master.servicePort!))
                    && others.components(separatedBy: "\n").filter { $0 == "name" }.count == 2
            }
        }
        guard ready else { throw HarnessError("the Sentinel group did not come up: \(log())") }
    }

    deinit {
        for sentinel in sentinels where sentinel.isRunning {
            sentinel.signal(SIGKILL)
            sentinel.wait()
        }
        try? FileManager.default.removeItem(atPath: directory)
    }

    /// `redis-sentinel://127.0.0.1:s1,127.0.0.1:s2,127.0.0.1:s3/mymaster/0` (no credentials;
    /// `rediss-sentinel://` with TLS).
    public var url: String { url() }

    /// The Sentinel URL with the data nodes' credentials and database.
    public func url(credentials: String = "", database: Int = 0) -> String {
        "\(tls == nil ? "redis" : "rediss")-sentinel://\(credentials)" + sentinelPorts.map { "127.0.0.1:\($0)" }.joined(separator: ",") + "/\(masterName)/\(database)"
    }

    /// The master's port as the first Sentinel that answers names it.
    public func masterPort() -> Int? {
        for port in sentinelPorts {
            if let text = try? sentinelCLI(port: port, ["SENTINEL", "get-master-addr-by-name", masterName]) {
                let lines = text.split(separator: "\n")
                if lines.count == 2, let master = Int(lines[1]) { return master }
            }
        }
        return nil
    }

    /// The data node that is master now.
    public func master() -> RedisServer? {
        let port = masterPort()
        return nodes.first { $0.servicePort == port }
    }

    /// Runs `redis-cli` against one of the group's Sentinels (with its password and TLS).
    public func sentinelCLI(port: Int, _ arguments: [String]) throws -> String {
        try Self.cli(port: port, arguments, password: sentinelPassword, tls: tls)
    }

    /// Runs `redis-cli -p port`.
    public static func cli(port: Int, _ arguments: [String], password: String? = nil, tls: TestCertificates? = nil) throws -> String {
        let auth = password.map { ["-a", $0, "--no-auth-warning"] } ?? []
        let secure = tls.map { ["--tls", "--cacert", $0.caCertificate] } ?? []
        var bytes = try ChildProcess.output("/usr/bin/redis-cli", ["-h", "127.0.0.1", "-p", String(port), "--raw"] + secure + auth + arguments)
        if bytes.last == UInt8(ascii: "\n") { bytes.removeLast() }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// The Sentinels' logs, for failure messages.
    public func log() -> String {
        (0..<sentinelPorts.count).map { (try? String(contentsOfFile: "\(directory)/sentinel-\($0).log", encoding: .utf8)) ?? "" }
            .joined(separator: "\n---\n")
    }
}
