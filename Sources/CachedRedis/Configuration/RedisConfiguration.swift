import NIOCore

/// Where and how to reach Redis.
public struct RedisConfiguration: Sendable, Hashable {
    public enum Endpoint: Sendable, Hashable {
        case tcp(host: String, port: Int)
        case unix(path: String)
    }

    public var endpoint: Endpoint
    public var username: String?
    public var password: String?
    public var database: Int
    /// Connections in the pool; each is multiplexed and pipelined.
    public var poolSize: Int
    public var connectTimeout: TimeAmount
    public var commandTimeout: TimeAmount
    /// First reconnect delay; doubles per failure up to ``maximumReconnectDelay``.
    public var minimumReconnectDelay: TimeAmount
    public var maximumReconnectDelay: TimeAmount
    /// TLS for a TCP endpoint (`rediss://`); nil: plain.
    public var tls: TLS?
    /// How often an idle connection sends `PING` (data connections when nothing else was sent since the
    /// last beat; the invalidation listener always), so that its ``ProofClock`` stays fresh and no
    /// middlebox forgets the flow; a beat unanswered within ``commandTimeout`` closes the connection.
    /// nil: no heartbeats.
    public var heartbeatInterval: TimeAmount?

    /// How to speak TLS to Redis. The server's certificate is always verified.
    public struct TLS: Sendable, Hashable {
        /// PEM file of the certificate authorities to trust; nil: the system trust store.
        public var caFile: String?
        /// PEM files of a client certificate and its key (for `tls-auth-clients yes`).
        public var certificateFile: String?
        public var keyFile: String?
        /// The name to verify the server's certificate against and to send as SNI; nil: the URL's host.
        public var serverName: String?

        public init(caFile: String? = nil, certificateFile: String? = nil, keyFile: String? = nil, serverName: String? = nil) {
            self.caFile = caFile
            self.certificateFile = certificateFile
            self.keyFile = keyFile
            self.serverName = serverName
        }
    }

    public init(
        endpoint: Endpoint, username: String? = nil, password: String? = nil, database: Int = 0, poolSize: Int = 2,
        connectTimeout: TimeAmount = .seconds(1), commandTimeout: TimeAmount = .seconds(1),
        minimumReconnectDelay: TimeAmount = .milliseconds(50), maximumReconnectDelay: TimeAmount = .seconds(2)
    ) {
        self.endpoint = endpoint
        self.username = username
        self.password = password
        self.database = database
        self.poolSize = poolSize
        self.connectTimeout = connectTimeout
        self.commandTimeout = commandTimeout
        self.minimumReconnectDelay = minimumReconnectDelay
        self.maximumReconnectDelay = maximumReconnectDelay
    }
}

extension RedisConfiguration {
    /// Parses `redis://[[user]:password@]host[:port][/db]`, the same with `rediss://` (TLS), or
    /// `unix:///path[?db=N&password=P]`.
    public init(url: String) throws(RedisURLError) {
        self.init(endpoint: .tcp(host: "127.0.0.1", port: 6379))
        if url.hasPrefix("unix://") {
            let rest = url.dropFirst("unix://".count)
            let (path, query) = Self.split(rest, at: "?")
            guard path.hasPrefix("/") else { throw RedisURLError(url: url, reason: "the socket path must be absolute") }
            endpoint = .unix(path: String(path))
            for item in (query ?? "").split(separator: "&") {
                let (name, value) = Self.split(item, at: "=")
                switch name {
                case "db":
                    guard let value, let db = Int(value), db >= 0 else { throw RedisURLError(url: url, reason: "db must be a number") }
                    database = db
                case "password": password = value.map { Self.percentDecode($0) }
                case "user", "username": username = value.map { Self.percentDecode($0) }
                default: throw RedisURLError(url: url, reason: "unknown query parameter \(name)")
                }
            }
            return
        }
        let scheme: String
        if url.hasPrefix("redis://") {
            scheme = "redis://"
        } else if url.hasPrefix("rediss://") {
            scheme = "rediss://"
            tls = TLS()
        } else {
            throw RedisURLError(url: url, reason: "expected redis://host:port/db, rediss://host:port/db or unix:///path")
        }
        var rest = url.dropFirst(scheme.count)
        if let at = rest.lastIndex(of: "@") {
            let credentials = rest[..<at]
            rest = rest[rest.index(after: at)...]
            let (user, secret) = Self.split(credentials, at: ":")
            if let secret {
                if !user.isEmpty { username = Self.percentDecode(user) }
                password = Self.percentDecode(secret)
            } else {
                password = Self.percentDecode(user)
            }
        }
        let (hostPort, dbPart) = Self.split(rest, at: "/")
        if let dbPart, !dbPart.isEmpty {
            guard let db = Int(dbPart), db >= 0 else { throw RedisURLError(url: url, reason: "db must be a number") }
            database = db
        }
        var host = Substring(hostPort)
        var port = 6379
        if host.hasPrefix("[") {  // [::1]:6379
            guard let close = host.firstIndex(of: "]") else { throw RedisURLError(url: url, reason: "bad IPv6 address") }
            let after = host[host.index(after: close)...]
            host = host[host.index(after: host.startIndex)..<close]
            if after.hasPrefix(":") {
                guard let p = Int(after.dropFirst()), (1...65535).contains(p) else { throw RedisURLError(url: url, reason: "bad port") }
                port = p
            }
        } else if let colon = host.lastIndex(of: ":") {
            guard let p = Int(host[host.index(after: colon)...]), (1...65535).contains(p) else {
                throw RedisURLError(url: url, reason: "bad port")
            }
            port = p
            host = host[..<colon]
        }
        guard !host.isEmpty else { throw RedisURLError(url: url, reason: "missing host") }
        endpoint = .tcp(host: String(host), port: port)
    }

    private static func split(_ s: Substring, at separator: Character) -> (Substring, Substring?) {
        guard let i = s.firstIndex(of: separator) else { return (s, nil) }
        return (s[..<i], s[s.index(after: i)...])
    }

    private static func percentDecode(_ s: Substring) -> String {
        var bytes: [UInt8] = []
        var i = s.utf8.startIndex
        let utf8 = s.utf8
        while i < utf8.endIndex {
            let b = utf8[i]
            if b == UInt8(ascii: "%"), let j = utf8.index(i, offsetBy: 2, limitedBy: utf8.endIndex), j < utf8.endIndex,
                let v = UInt8(String(decoding: utf8[utf8.index(after: i)...j], as: UTF8.self), radix: 16)
            {
                bytes.append(v)
                i = utf8.index(after: j)
            } else {
                bytes.append(b)
                i = utf8.index(after: i)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// The URL without its password, for logs.
    public var redactedDescription: String {
        let auth = password == nil ? "" : "\(username ?? ""):***@"
        switch endpoint {
        case .tcp(let host, let port): return "\(tls == nil ? "redis" : "rediss")://\(auth)\(host):\(port)/\(database)"
        case .unix(let path): return "unix://\(path)?db=\(database)"
        }
    }
}

/// A Redis URL that could not be parsed.
public struct RedisURLError: Error, Sendable, CustomStringConvertible {
    public var url: String
    public var reason: String
    public var description: String { "invalid Redis URL: \(reason)" }
}
