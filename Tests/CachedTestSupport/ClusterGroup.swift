import Foundation

/// A Redis Cluster of three primaries and three replicas (`redis-server --cluster-enabled yes` on six
/// loopback ports, `redis-cli --cluster create ... --cluster-replicas 1`), `cluster-node-timeout` 2000.
public final class ClusterGroup: @unchecked Sendable {
    public let nodes: [RedisServer]
    public static let nodeTimeoutMilliseconds = 2000

    /// With TLS: the certificates; nodes speak TLS only, the cluster bus and replication too.
    public let tls: TestCertificates?

    public init(tls: TestCertificates? = nil) throws {
        self.tls = tls
        var nodes: [RedisServer] = []
        let secure = tls == nil ? [] : ["--tls-cluster", "yes", "--tls-replication", "yes"]
        for _ in 0..<6 {
            let node = try RedisServer(
                tcp: tls == nil, tls: tls,
                extraArguments: [
                    "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                    "--cluster-node-timeout", String(Self.nodeTimeoutMilliseconds), "--repl-diskless-load", "on-empty-db",
                ] + secure)
            node.followRedirects = true
            nodes.append(node)
        }
        self.nodes = nodes
        let addresses = nodes.map { "127.0.0.1:\($0.servicePort!)" }
        let cliTLS = tls.map { ["--tls", "--cacert", $0.caCertificate] } ?? []
        _ = try ChildProcess.output(
            "/usr/bin/redis-cli", cliTLS + ["--cluster", "create"] + addresses + ["--cluster-replicas", "1", "--cluster-yes"])
        try waitUntilHealthy()
    }

    /// Waits until every live node says `cluster_state:ok` and every replica is in sync.
    public func waitUntilHealthy(timeout: Double = 30) throws {
        let ok = try waitUntil(timeout: timeout, interval: 0.1) {
            try nodes.filter { $0.pid != nil }.allSatisfy { node in
                guard try node.cli(["CLUSTER", "INFO"]).contains("cluster_state:ok") else { return false }
                let replication = try node.cli(["INFO", "replication"])
                return replication.contains("role:master") || replication.contains("master_link_status:up")
            }
        }
        guard ok else { throw HarnessError("the cluster did not become healthy: \(try nodes[0].cli(["CLUSTER", "NODES"]))") }
    }

    /// `redis-cluster://127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3` (three seeds; `rediss-cluster://` with TLS).
    public var url: String {
        "\(tls == nil ? "redis" : "rediss")-cluster://" + nodes.prefix(3).map { "127.0.0.1:\($0.servicePort!)" }.joined(separator: ",")
    }

    /// The slot of `key`, as Redis computes it.
    public func slot(of key: String) throws -> Int {
        guard let slot = Int(try live.cli(["CLUSTER", "KEYSLOT", key])) else { throw HarnessError("CLUSTER KEYSLOT \(key)") }
        return slot
    }

    /// The primary that serves `slot` now (from `CLUSTER NODES` of a live node).
    public func owner(ofSlot slot: Int) throws -> RedisServer? {
        for line in try live.cli(["CLUSTER", "NODES"]).split(separator: "\n") {
            let fields = line.split(separator: " ")
            guard fields.count >= 8, fields[2].contains("master"), !fields[2].contains("fail") else { continue }
            for range in fields.dropFirst(8) where !range.hasPrefix("[") {
                let bounds = range.split(separator: "-").compactMap { Int($0) }
                let contains = bounds.count == 2 ? (bounds[0]...bounds[1]).contains(slot) : bounds.first == slot
                if contains {
                    let port = fields[1].split(separator: "@")[0].split(separator: ":").last.flatMap { Int($0) }
                    return nodes.first { $0.servicePort == port }
                }
            }
        }
        return nil
    }

    /// The primary that serves `key` now.
    public func owner(of key: String) throws -> RedisServer? {
        try owner(ofSlot: try slot(of: key))
    }

    /// A node's cluster id.
    public func id(of node: RedisServer) throws -> String {
        try node.cli(["CLUSTER", "MYID"])
    }

    /// A node that is running.
    public var live: RedisServer { nodes.first { $0.pid != nil }! }
}
