import CachedRedis
import Logging

/// Everything `cached` can be configured with. Every setting has a default; see README.md.
///
/// Settings come in two groups, so that a reload cannot silently miss one: ``live`` is applied as a
/// whole by a reload (SIGHUP), ``startup`` takes effect only when the daemon starts (a reload that
/// changes any of it says which in the log). A new setting goes into one of the two.
public struct DaemonConfiguration: Sendable, Equatable {
    /// Applied by a reload.
    public var live = Live()
    /// Applied at start only.
    public var startup = Startup()

    public init() {}

    /// What a reload applies at once: key settings, access lists, the drain deadline.
    public struct Live: Sendable, Equatable {
        /// Per-key settings, by key name as clients send it.
        public var keys: [String: KeyConfiguration] = [:]
        /// If set, only peers with one of these user ids may connect (checked with SO_PEERCRED at accept).
        public var allowUIDs: [UInt32]?
        /// If set, only peers in one of these groups (names or numbers; primary or supplementary) may connect.
        /// When both lists are set, a peer allowed by either is accepted.
        public var allowGroups: [String]?
        /// Per-key access by peer (`[[access]]`); empty: every peer that may connect may do everything.
        public var access: [AccessRule] = []
        /// The time in-flight requests get to finish at shutdown; the rest are answered -32007.
        public var shutdownTimeout: Duration = .seconds(10)
        public init() {}
    }

    /// What needs a restart: the socket, the store, threads, limits, memory budgets, logging.
    public struct Startup: Sendable, Equatable {
        /// Path of the Unix socket to serve (unless a socket is passed by systemd).
        public var socketPath: String = "/run/cached/cached.sock"
        /// File mode of a socket `cached` binds itself.
        public var socketMode: UInt16 = 0o660
        /// Group owning a socket `cached` binds itself (name or number); nil = the daemon's group.
        public var socketGroup: String?
        /// Where entries live.
        public var store: Store = .embedded
        public var redis = RedisOptions()
        public var logLevel: Logger.Level = .info
        /// Event-loop threads; 0 means one per two cores (at least one).
        public var threads: Int = 0
        public var limits = Limits()
        public var embedded = EmbeddedOptions()
        public var localCache = LocalCacheOptions()
        public var metrics = MetricsOptions()
        public init() {}
    }

    /// The Prometheus endpoint (docs/metrics.md).
    public struct MetricsOptions: Sendable, Equatable {
        /// `HOST:PORT` or an absolute Unix socket path to serve `GET /metrics` on; nil = off.
        public var listen: String?
        /// Keys with a label of their own in per-key metrics; the others count under `(other)`.
        public var topKeys = 50
        public init() {}
    }

    /// The store the daemon uses.
    public enum Store: Sendable, Equatable {
        /// The in-process store (no Redis).
        case embedded
        /// One Redis server at this URL (`redis://`, `rediss://`, `unix://`).
        case redis(url: String)
        /// The master behind Redis Sentinel (`redis-sentinel://`, `rediss-sentinel://`).
        case sentinel(url: String)
        /// A Redis Cluster from its seed nodes (`redis-cluster://`, `rediss-cluster://`).
        case cluster(url: String)

        /// `redis` setting: an empty URL selects the embedded store; `redis-sentinel://` and
        /// `rediss-sentinel://` select Sentinel, `redis-cluster://` and `rediss-cluster://` a cluster.
        public init(redisURL: String?) {
            guard let redisURL, !redisURL.isEmpty else {
                self = .embedded
                return
            }
            if SentinelConfiguration.isSentinelURL(redisURL) {
                self = .sentinel(url: redisURL)
            } else if ClusterConfiguration.isClusterURL(redisURL) {
                self = .cluster(url: redisURL)
            } else {
                self = .redis(url: redisURL)
            }
        }

        public var name: String {
            switch self {
            case .embedded: "embedded"
            case .redis: "redis"
            case .sentinel: "sentinel"
            case .cluster: "cluster"
            }
        }

        /// Whether the URL asks for TLS (`rediss://`, `rediss-sentinel://`).
        public var usesTLS: Bool {
            switch self {
            case .embedded: false
            case .redis(let url): url.hasPrefix("rediss://")
            case .sentinel(let url): url.hasPrefix("rediss-sentinel://")
            case .cluster(let url): url.hasPrefix("rediss-cluster://")
            }
        }
    }

    /// Redis connection settings.
    public struct RedisOptions: Sendable, Equatable {
        public var poolSize = 2
        public var connectTimeout: Duration = .seconds(1)
        public var commandTimeout: Duration = .seconds(1)
        public var reconnectMaxDelay: Duration = .seconds(2)
        /// TLS (for a `rediss://` URL): CA file (nil: the system trust store), client certificate and key
        /// (for `tls-auth-clients yes`), and the name to verify and send as SNI (nil: the URL's host).
        public var tlsCAFile: String?
        public var tlsCertFile: String?
        public var tlsKeyFile: String?
        public var tlsServerName: String?
        /// `AUTH` for the Sentinels (the URL's credentials are the data nodes').
        public var sentinelPassword: String?
        /// How often the topology (the master behind Sentinel, a cluster's slot map) is read again even when
        /// nothing suggests a change.
        public var topologyRefreshInterval: Duration = .seconds(5)
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
        /// How long a request line may take from its first byte to its newline; zero = no limit.
        public var lineTimeout: Duration = .seconds(10)
        /// How long a connection may stay without reading or writing anything before it is closed; zero = never.
        public var idleTimeout: Duration = .seconds(600)
        /// The deadline of a request that names no `timeout`, from when its line was read: at it the request is
        /// answered -32009; zero = none. Long enough for a normal lease or handler fill (their timeouts are 5 s).
        public var requestTimeout: Duration = .seconds(10)
        /// Most entries tracked per connection that asked for tracking (`track`); a connection may ask for fewer.
        public var maxTrackedEntries = 10_000
        public init() {}
    }

    /// The coherent local copy of Redis entries (client-side caching with invalidation).
    public struct LocalCacheOptions: Sendable, Equatable {
        /// Memory budget; 0 disables the local cache (every get goes to Redis).
        public var maxBytes = 64 * 1024 * 1024
        /// How long an entry may be served locally at most, even without an invalidation.
        public var maxAge: Duration = .seconds(300)
        /// The staleness bound: a hit from the local copy (or a client's near cache) is served only while
        /// every invalidation Redis sent before `now - maxStaleness` is proved to have arrived (heartbeats
        /// keep the proof fresh); zero = no bound (hits are served until an invalidation or `maxAge`).
        public var maxStaleness: Duration = .milliseconds(500)
        /// The proof page near caches map (docs/protocol.md, `track`); nil: the socket's path + `.proof`.
        public var proofFile: String?
        public init() {}

        /// How often idle Redis connections send a heartbeat under the bound: a fifth of it (10 ms to 1 s),
        /// so that the proof is at most two beats and a round trip old on a healthy path.
        public var heartbeatInterval: Duration? {
            guard maxStaleness > .zero else { return nil }
            return min(max(maxStaleness / 5, .milliseconds(10)), .seconds(1))
        }
    }

    /// The in-process store used when no Redis URL is configured.
    public struct EmbeddedOptions: Sendable, Equatable {
        /// Memory budget for keys and values; least recently used entries are evicted beyond it.
        public var maxBytes = 64 * 1024 * 1024
        public init() {}
    }

    /// Settings of one key (`[keys.NAME]`).
    public struct KeyConfiguration: Sendable, Equatable {
        /// Default TTL for entries stored without an explicit `ttl`; zero = no expiry.
        public var ttl: Duration = .zero
        /// The sync handler that fills a missing entry; nil = clients fill it themselves under a lease.
        public var handler: HandlerConfiguration?
        /// How long a "no such entry" answer from the handler is remembered (in the daemon only); zero = never.
        public var negativeTTL: Duration = .zero
        /// How long a lease is held for a client fill before the next waiter gets a new lease.
        public var leaseTimeout: Duration = .seconds(5)
        /// Handler calls at once for this key while the store is unavailable (fallback cap).
        public var fallbackConcurrency = 2
        /// One fill per entry across every daemon sharing the Redis store (a fill lock in Redis, fenced
        /// stores); nil = on with a Redis store. No effect with the embedded store.
        public var fleetSingleFlight: Bool?
        /// Stale-while-revalidate: for this long after `ttl`, a get answers the entry at once, marked
        /// stale, while one background refresh runs fleet-wide; zero = off.
        public var staleTTL: Duration = .zero
        /// After the stale window, for this long a get waits for a refresh and, if it fails, is answered
        /// the old value marked stale instead of the error; zero = off.
        public var grace: Duration = .zero
        /// XFetch's β: each hit may start one early background refresh before `ttl` ends; 0 = off.
        public var earlyRefreshBeta: Double = 0

        /// The key's stale window, grace and early refresh, when any is on.
        public var aging: AgingPolicy? {
            guard staleTTL > .zero || grace > .zero || earlyRefreshBeta > 0 else { return nil }
            return AgingPolicy(staleTTL: staleTTL, grace: grace, beta: earlyRefreshBeta)
        }

        /// How long an entry of this key lives in the store when stored with `ttl`: the stale window
        /// and grace are added to it (zero stays zero: no expiry).
        public func storeTTL(_ ttl: Duration) -> Duration {
            guard ttl > .zero, let aging else { return ttl }
            return ttl + aging.staleTTL + aging.grace
        }

        public init(ttl: Duration = .zero, handler: HandlerConfiguration? = nil) {
            self.ttl = ttl
            self.handler = handler
        }
    }

    /// A key's stale-while-revalidate window, grace and early-refresh β (see ``KeyConfiguration``).
    public struct AgingPolicy: Sendable, Equatable {
        public var staleTTL: Duration
        public var grace: Duration
        public var beta: Double
        public init(staleTTL: Duration, grace: Duration, beta: Double) {
            self.staleTTL = staleTTL
            self.grace = grace
            self.beta = beta
        }
    }

    /// How a key's sync handler runs: long-lived worker processes speaking JSON-RPC on stdin/stdout.
    public struct HandlerConfiguration: Sendable, Equatable {
        /// The worker program and its arguments (`argv[0]` is looked up in `PATH`).
        public var command: [String]
        /// Worker processes kept running.
        public var workers = 1
        /// How long one sync call may take; past it the call fails and the worker is replaced.
        public var timeout: Duration = .seconds(5)
        /// Extra environment variables for the workers (added to the daemon's environment).
        public var environment: [String: String] = [:]
        /// Working directory of the workers; nil = the daemon's.
        public var workingDirectory: String?
        /// Calls that may wait for a free worker; beyond it callers get the overload error.
        public var queueLimit = 1000
        /// Restart backoff after a worker exits: first delay, doubled per consecutive failure up to the maximum.
        public var restartMinDelay: Duration = .milliseconds(100)
        public var restartMaxDelay: Duration = .seconds(5)
        /// Longest answer line a worker may write, in bytes.
        public var maxLineBytes = 16 * 1024 * 1024

        public init(command: [String]) { self.command = command }
    }

    /// The configuration of a key, or the defaults.
    ///
    /// Names match without regard to case, as the store does (`Student` and `student` are one entry).
    public func key(_ name: String) -> KeyConfiguration {
        if let exact = live.keys[name] { return exact }
        let upper = name.uppercased()
        return live.keys.first { $0.key.uppercased() == upper }?.value ?? KeyConfiguration()
    }
}
