import NIOCore

/// Where to start discovering a Redis Cluster: `redis-cluster://[[user]:password@]host1:port1,host2:port2`
/// (seed nodes, port 6379 by default), or `rediss-cluster://` for TLS to every node.
///
/// The credentials are every node's. A cluster has database 0 only.
public struct ClusterConfiguration: Sendable, Hashable {
    public typealias Address = SentinelConfiguration.Address

    /// The seed nodes, in the URL's order.
    public var seeds: [Address]
    /// Every node's settings (credentials, pool, timeouts, TLS); the endpoint is the node's.
    public var data: RedisConfiguration
    /// How often the slot map is read again even when nothing suggests a change.
    public var refreshInterval: TimeAmount = .seconds(5)

    /// Whether `url` names a cluster.
    public static func isClusterURL(_ url: String) -> Bool {
        url.hasPrefix("redis-cluster://") || url.hasPrefix("rediss-cluster://")
    }

    public init(url: String) throws(RedisURLError) {
        let tls = url.hasPrefix("rediss-cluster://")
        guard Self.isClusterURL(url) else {
            throw RedisURLError(url: url, reason: "expected redis-cluster://host:port,host:port")
        }
        var rest = url.dropFirst(tls ? "rediss-cluster://".count : "redis-cluster://".count)
        var credentials = ""
        if let at = rest.lastIndex(of: "@") {
            credentials = String(rest[..<at]) + "@"
            rest = rest[rest.index(after: at)...]
        }
        if let slash = rest.firstIndex(of: "/") {
            let path = rest[rest.index(after: slash)...]
            guard path.isEmpty || path == "0" else {
                throw RedisURLError(url: url, reason: "a cluster has database 0 only")
            }
            rest = rest[..<slash]
        }
        let seeds = try Address.list(rest, defaultPort: 6379, url: url, what: "seed node")
        self.seeds = seeds
        do {
            data = try RedisConfiguration(url: "\(tls ? "rediss" : "redis")://\(credentials)\(seeds[0].description)/0")
        } catch {
            throw RedisURLError(url: url, reason: error.reason)
        }
    }

    /// The settings for the node at `address`.
    func node(_ address: Address) -> RedisConfiguration {
        data.at(address)
    }

    /// The URL without passwords, for logs and `stats`.
    public var redactedDescription: String {
        let auth = data.password == nil ? "" : "\(data.username ?? ""):***@"
        return "\(data.tls == nil ? "redis" : "rediss")-cluster://\(auth)\(seeds.map(\.description).joined(separator: ","))"
    }
}
