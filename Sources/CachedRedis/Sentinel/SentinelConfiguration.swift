import NIOCore

/// Where the Sentinels are and which master to follow:
/// `redis-sentinel://[[user]:password@]host1:port1,host2:port2/MASTERNAME[/db]`, or `rediss-sentinel://`
/// for TLS to the Sentinels and the data nodes alike.
///
/// The URL's credentials and database are the data nodes'; the Sentinels get ``sentinelPassword``.
public struct SentinelConfiguration: Sendable, Hashable {
    /// The Sentinels, in the URL's order (default port 26379).
    public var sentinels: [Address]
    public var masterName: String
    /// The data nodes' settings (credentials, database, pool, timeouts, TLS); the endpoint is the
    /// master's, once resolved.
    public var data: RedisConfiguration
    /// `AUTH` for the Sentinels (`requirepass` in sentinel.conf); nil: none.
    public var sentinelPassword: String?
    /// How often the master is asked again even when nothing suggests a change.
    public var refreshInterval: TimeAmount = .seconds(5)

    /// A TCP address.
    public struct Address: Sendable, Hashable, CustomStringConvertible {
        public var host: String
        public var port: Int

        public init(host: String, port: Int) {
            self.host = host
            self.port = port
        }

        public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
    }

    /// Whether `url` names Sentinels rather than one server.
    public static func isSentinelURL(_ url: String) -> Bool {
        url.hasPrefix("redis-sentinel://") || url.hasPrefix("rediss-sentinel://")
    }

    public init(url: String) throws(RedisURLError) {
        let tls: Bool
        let rest: Substring
        if url.hasPrefix("redis-sentinel://") {
            tls = false
            rest = url.dropFirst("redis-sentinel://".count)
        } else if url.hasPrefix("rediss-sentinel://") {
            tls = true
            rest = url.dropFirst("rediss-sentinel://".count)
        } else {
            throw RedisURLError(url: url, reason: "expected redis-sentinel://host:port,host:port/MASTERNAME[/db]")
        }
        var credentials = ""
        var hostsAndPath = rest
        if let at = rest.lastIndex(of: "@") {
            credentials = String(rest[..<at]) + "@"
            hostsAndPath = rest[rest.index(after: at)...]
        }
        guard let slash = hostsAndPath.firstIndex(of: "/") else {
            throw RedisURLError(url: url, reason: "the master name is missing (redis-sentinel://host:port/MASTERNAME)")
        }
        let hosts = hostsAndPath[..<slash]
        let path = hostsAndPath[hostsAndPath.index(after: slash)...].split(separator: "/", omittingEmptySubsequences: false)
        guard let name = path.first, !name.isEmpty else {
            throw RedisURLError(url: url, reason: "the master name is missing (redis-sentinel://host:port/MASTERNAME)")
        }
        guard path.count <= 2 else { throw RedisURLError(url: url, reason: "expected /MASTERNAME[/db]") }
        masterName = String(name)
        let addresses = try Address.list(hosts, defaultPort: 26379, url: url, what: "Sentinel")
        sentinels = addresses
        // Credentials and database are the data nodes', parsed as a plain URL would be.
        let db = path.count == 2 ? "/\(path[1])" : ""
        do {
            data = try RedisConfiguration(url: "\(tls ? "rediss" : "redis")://\(credentials)\(addresses[0].host):\(addresses[0].port)\(db)")
        } catch {
            throw RedisURLError(url: url, reason: error.reason)
        }
    }

    /// The settings for one Sentinel: its address, ``sentinelPassword``, database 0, the data nodes'
    /// timeouts and TLS.
    func sentinel(_ address: Address) -> RedisConfiguration {
        var configuration = data.at(address)
        configuration.username = nil
        configuration.password = sentinelPassword
        configuration.database = 0
        configuration.poolSize = 1
        return configuration
    }

    /// The settings for the data node at `host:port`.
    func dataNode(host: String, port: Int) -> RedisConfiguration {
        data.at(Address(host: host, port: port))
    }

    /// The URL without passwords, for logs and `stats`.
    public var redactedDescription: String {
        let auth = data.password == nil ? "" : "\(data.username ?? ""):***@"
        let hosts = sentinels.map(\.description).joined(separator: ",")
        return "\(data.tls == nil ? "redis" : "rediss")-sentinel://\(auth)\(hosts)/\(masterName)/\(data.database)"
    }
}
