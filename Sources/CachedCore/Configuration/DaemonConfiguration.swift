import Logging

/// Everything `cached` can be configured with. Every setting has a default; see README.md.
public struct DaemonConfiguration: Sendable, Equatable {
    /// Path of the Unix socket to serve (unless a socket is passed by systemd).
    public var socketPath: String = "/run/cached/cached.sock"
    /// File mode of a socket `cached` binds itself.
    public var socketMode: UInt16 = 0o660
    /// Redis URL; nil selects the embedded in-process store.
    public var redisURL: String?
    public var redis = RedisOptions()
    public var logLevel: Logger.Level = .info
    /// Event-loop threads; 0 means one per core.
    public var threads: Int = 0
    public var limits = Limits()
    public var embedded = EmbeddedOptions()
    /// Per-key settings, by key name as clients send it.
    public var keys: [String: KeyConfiguration] = [:]

    public init() {}

    /// Redis connection settings.
    public struct RedisOptions: Sendable, Equatable {
        public var poolSize = 2
        public var connectTimeout = 1.0
        public var commandTimeout = 1.0
        public var reconnectMaxDelay = 2.0
        public init() {}
    }

    /// Limits that protect the daemon from one client (see docs/reliability.md).
    public struct Limits: Sendable, Equatable {
        /// Longest request line, in bytes, without its newline.
        public var maxLineBytes = 4 * 1024 * 1024
        /// Deepest nesting of arrays/objects in a request.
        public var maxDepth = 32
        /// Most requests in one batch.
        public var maxBatch = 1000
        /// Most client connections at once.
        public var maxConnections = 10_000
        /// Most unanswered requests per connection; beyond it the daemon stops reading that connection.
        public var maxInFlight = 256
        /// Most answer bytes queued for a client that does not read; beyond it the client is disconnected.
        public var maxOutputBytes = 16 * 1024 * 1024
        public init() {}
    }

    /// The in-process store used when no Redis URL is configured.
    public struct EmbeddedOptions: Sendable, Equatable {
        /// Memory budget for keys and values; least recently used entries are evicted beyond it.
        public var maxBytes = 64 * 1024 * 1024
        public init() {}
    }

    /// Settings of one key (`[keys.NAME]`).
    public struct KeyConfiguration: Sendable, Equatable {
        /// Default TTL in seconds for entries stored without an explicit `ttl`; 0 = no expiry.
        public var ttl: Double = 0
        public init(ttl: Double = 0) { self.ttl = ttl }
    }

    /// The configuration of a key, or the defaults.
    public func key(_ name: String) -> KeyConfiguration {
        keys[name] ?? KeyConfiguration()
    }
}
