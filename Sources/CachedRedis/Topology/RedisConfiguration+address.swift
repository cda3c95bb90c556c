#if canImport(Glibc)
import Glibc
#endif

extension SentinelConfiguration.Address {
    /// The comma-separated `host[:port]` list of a Sentinel or cluster URL (IPv6 in brackets).
    static func list(_ text: Substring, defaultPort: Int, url: String, what: String) throws(RedisURLError) -> [Self] {
        var addresses: [Self] = []
        for item in text.split(separator: ",", omittingEmptySubsequences: false) {
            // Each item parses as the host part of a plain URL.
            let hasPort = item.hasPrefix("[") ? item.contains("]:") : item.contains(":")
            guard !item.isEmpty, let parsed = try? RedisConfiguration(url: "redis://\(hasPort ? item : "\(item):\(defaultPort)")"),
                case .tcp(let host, let port) = parsed.endpoint
            else {
                throw RedisURLError(url: url, reason: "bad \(what) address \"\(item)\"")
            }
            addresses.append(Self(host: host, port: port))
        }
        guard !addresses.isEmpty else { throw RedisURLError(url: url, reason: "no \(what) address") }
        return addresses
    }
}

extension RedisConfiguration {
    /// The same settings for the server at `address`.
    func at(_ address: SentinelConfiguration.Address) -> RedisConfiguration {
        var configuration = self
        configuration.endpoint = .tcp(host: address.host, port: address.port)
        return configuration
    }
}

/// Seconds since the Unix epoch (for `stats`: when a topology last changed or was read).
func wallClockSeconds() -> Double {
    var now = timespec()
    clock_gettime(CLOCK_REALTIME, &now)
    return Double(now.tv_sec) + Double(now.tv_nsec) / 1e9
}
