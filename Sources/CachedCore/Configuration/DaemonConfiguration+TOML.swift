import CachedProtocol
import CachedRedis
import Logging
import TOMLKit

/// A configuration file that could not be used.
public struct ConfigurationError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

extension DaemonConfiguration {
    /// Reads a TOML configuration. Unknown keys and wrong types are errors naming the key, so a typo
    /// never silently falls back to a default.
    public init(toml text: String) throws(ConfigurationError) {
        self.init()
        let table: TOMLTable
        do {
            table = try TOMLTable(string: text)
        } catch let error as TOMLParseError {
            throw ConfigurationError("invalid TOML at line \(error.source.begin.line), column \(error.source.begin.column): \(error.description)")
        } catch {
            throw ConfigurationError("invalid TOML: \(error)")
        }
        var root = TableReader(table, path: "")
        if let v = try root.string("socket") { startup.socketPath = v }
        if let v = try root.int("socket_mode", range: 0...0o777) { startup.socketMode = UInt16(v) }
        if let v = try root.string("socket_group") { startup.socketGroup = v }
        if let v = try root.intArray("allow_uids", range: 0...Int(UInt32.max - 1)) { live.allowUIDs = v.map { UInt32($0) } }
        if let v = try root.stringOrIntArray("allow_groups") { live.allowGroups = v }
        if let v = try root.duration("shutdown_timeout") { live.shutdownTimeout = v }
        for (index, var t) in (try root.tables("access") ?? []).enumerated() {
            var rule = AccessRule(name: try t.string("name") ?? "access[\(index)]")
            rule.users = try t.stringOrIntArray("users") ?? []
            rule.groups = try t.stringOrIntArray("groups") ?? []
            guard !rule.users.isEmpty || !rule.groups.isEmpty else {
                throw ConfigurationError("access \(rule.name): name the users or groups it is for (users = [...], groups = [...])")
            }
            rule.read = try (t.stringArray("read") ?? []).map { text throws(ConfigurationError) in try KeyPattern(text) }
            rule.write = try (t.stringArray("write") ?? []).map { text throws(ConfigurationError) in try KeyPattern(text) }
            rule.admin = try t.bool("admin") ?? false
            try t.finish()
            guard !live.access.contains(where: { $0.name == rule.name }) else {
                throw ConfigurationError("access: two rules named \(rule.name)")
            }
            live.access.append(rule)
        }
        if let v = try root.string("redis") { startup.store = Store(redisURL: v) }
        if let v = try root.string("log_level") { startup.logLevel = try Self.logLevel(v) }
        if let v = try root.int("threads", range: 0...256) { startup.threads = v }
        if var t = try root.table("redis_options") {
            if let v = try t.int("pool_size", range: 1...64) { startup.redis.poolSize = v }
            if let v = try t.duration("connect_timeout") { startup.redis.connectTimeout = v }
            if let v = try t.duration("command_timeout") { startup.redis.commandTimeout = v }
            if let v = try t.duration("reconnect_max_delay") { startup.redis.reconnectMaxDelay = v }
            if let v = try t.string("tls_ca_file") { startup.redis.tlsCAFile = v }
            if let v = try t.string("tls_cert_file") { startup.redis.tlsCertFile = v }
            if let v = try t.string("tls_key_file") { startup.redis.tlsKeyFile = v }
            if let v = try t.string("tls_server_name") { startup.redis.tlsServerName = v }
            if let v = try t.string("sentinel_password") { startup.redis.sentinelPassword = v }
            if let v = try t.duration("topology_refresh_interval") { startup.redis.topologyRefreshInterval = v }
            try t.finish()
        }
        if var t = try root.table("limits") {
            if let v = try t.int("max_line_bytes", range: 256...(1 << 30)) { startup.limits.maxLineBytes = v }
            if let v = try t.int("max_depth", range: 2...512) { startup.limits.maxDepth = v }
            if let v = try t.int("max_batch", range: 1...100_000) { startup.limits.maxBatch = v }
            if let v = try t.int("max_connections", range: 1...1_000_000) { startup.limits.maxConnections = v }
            if let v = try t.int("max_in_flight", range: 1...100_000) { startup.limits.maxInFlight = v }
            if let v = try t.int("max_output_bytes", range: 4096...(1 << 32)) { startup.limits.maxOutputBytes = v }
            if let v = try t.duration("line_timeout") { startup.limits.lineTimeout = v }
            if let v = try t.duration("idle_timeout") { startup.limits.idleTimeout = v }
            if let v = try t.duration("request_timeout") {
                guard v <= .seconds(Int64(RequestTimeout.maximum)) else {
                    throw ConfigurationError("limits.request_timeout: at most \(Int(RequestTimeout.maximum)) seconds")
                }
                startup.limits.requestTimeout = v
            }
            if let v = try t.int("max_tracked_entries", range: 1...10_000_000) { startup.limits.maxTrackedEntries = v }
            try t.finish()
        }
        if var t = try root.table("local_cache") {
            if let v = try t.int("max_bytes", range: 0...(1 << 40)) { startup.localCache.maxBytes = v }
            if let v = try t.duration("max_age") { startup.localCache.maxAge = v }
            if let v = try t.duration("max_staleness") { startup.localCache.maxStaleness = v }
            if let v = try t.string("proof_file") { startup.localCache.proofFile = v }
            try t.finish()
        }
        if var t = try root.table("metrics") {
            if let v = try t.string("listen") { startup.metrics.listen = v }
            if let v = try t.int("top_keys", range: 0...10_000) { startup.metrics.topKeys = v }
            try t.finish()
        }
        if var t = try root.table("embedded") {
            if let v = try t.int("max_bytes", range: 1024...(1 << 40)) { startup.embedded.maxBytes = v }
            try t.finish()
        }
        if var t = try root.table("keys") {
            for name in t.table.keys.sorted() {
                guard var k = try t.table(name) else { continue }
                var key = KeyConfiguration()
                if let v = try k.duration("ttl") { key.ttl = v }
                if let v = try k.duration("negative_ttl") { key.negativeTTL = v }
                if let v = try k.duration("lease_timeout") { key.leaseTimeout = max(v, .milliseconds(10)) }
                if let v = try k.int("fallback_concurrency", range: 0...1024) { key.fallbackConcurrency = v }
                if let v = try k.bool("fleet_single_flight") { key.fleetSingleFlight = v }
                if let v = try k.duration("stale_ttl") { key.staleTTL = v }
                if let v = try k.duration("grace") { key.grace = v }
                if let v = try k.number("early_refresh_beta", range: 0...100) { key.earlyRefreshBeta = v }
                if let command = try k.stringArray("handler") {
                    guard !command.isEmpty, !command[0].isEmpty else {
                        throw ConfigurationError("keys.\(name).handler must name a program")
                    }
                    var handler = HandlerConfiguration(command: command)
                    if let v = try k.int("workers", range: 1...256) { handler.workers = v }
                    if let v = try k.duration("timeout") { handler.timeout = max(v, .milliseconds(1)) }
                    if let v = try k.stringTable("environment") { handler.environment = v }
                    if let v = try k.string("working_directory") { handler.workingDirectory = v }
                    if let v = try k.int("queue_limit", range: 0...1_000_000) { handler.queueLimit = v }
                    if let v = try k.duration("restart_min_delay") { handler.restartMinDelay = v }
                    if let v = try k.duration("restart_max_delay") { handler.restartMaxDelay = v }
                    if let v = try k.int("max_line_bytes", range: 1024...(1 << 30)) { handler.maxLineBytes = v }
                    key.handler = handler
                }
                try k.finish()
                live.keys[name] = key
            }
            try t.finish()
        }
        try root.finish()
    }

    /// Checks what no single setting can: `tls_*` settings need a `rediss://` or `rediss-sentinel://`
    /// Redis URL (never plain when TLS was asked for), `sentinel_password` a Sentinel URL, and the URL
    /// must parse. Run once the command line has been applied.
    public func validate() throws(ConfigurationError) {
        let r = startup.redis
        let asksForTLS = [r.tlsCAFile, r.tlsCertFile, r.tlsKeyFile, r.tlsServerName].contains { $0 != nil }
        if asksForTLS, startup.store != .embedded, !startup.store.usesTLS {
            throw ConfigurationError("redis_options.tls_* are set, but the Redis URL is not rediss://, rediss-sentinel:// or rediss-cluster://")
        }
        if r.sentinelPassword != nil, startup.store.name != "sentinel" {
            throw ConfigurationError("redis_options.sentinel_password is set, but the Redis URL is not redis-sentinel://")
        }
        if r.topologyRefreshInterval <= .zero {
            throw ConfigurationError("redis_options.topology_refresh_interval must be positive")
        }
        do {
            switch startup.store {
            case .embedded: break
            case .redis(let url): _ = try RedisConfiguration(url: url)
            case .sentinel(let url): _ = try SentinelConfiguration(url: url)
            case .cluster(let url): _ = try ClusterConfiguration(url: url)
            }
        } catch {
            throw ConfigurationError("redis: \(error)")
        }
        if r.tlsCertFile != nil, r.tlsKeyFile == nil {
            throw ConfigurationError("redis_options.tls_cert_file is set but tls_key_file is not")
        }
        if let listen = startup.metrics.listen, !listen.hasPrefix("/") {
            do { _ = try MetricsServer.address(listen) } catch { throw ConfigurationError("\(error)") }
        }
        for (name, key) in live.keys.sorted(by: { $0.key < $1.key }) where key.aging != nil {
            let settings = "keys.\(name): stale_ttl, grace and early_refresh_beta"
            guard key.handler != nil else {
                throw ConfigurationError("\(settings) need a handler (a background refresh calls it)")
            }
            guard key.ttl > .zero else {
                throw ConfigurationError("\(settings) need a ttl above 0 (they act around the entry's expiry)")
            }
            guard startup.store != .embedded else {
                throw ConfigurationError("\(settings) need a Redis store (the entry's age is read from Redis with PTTL)")
            }
        }
    }

    static func logLevel(_ name: String) throws(ConfigurationError) -> Logger.Level {
        guard let level = Logger.Level(rawValue: name.lowercased()) else {
            throw ConfigurationError("log_level must be one of trace, debug, info, notice, warning, error, critical")
        }
        return level
    }
}

extension Double {
    /// `5`, `0.5`, `1e9`: how a bound reads in an error message.
    fileprivate var formatted: String {
        self == rounded() && abs(self) < 1e15 ? String(Int(self)) : "\(self)"
    }
}

/// Reads a TOML table, remembering which keys were used.
struct TableReader {
    let table: TOMLTable
    let path: String
    private var used: Set<String> = []

    init(_ table: TOMLTable, path: String) {
        self.table = table
        self.path = path
    }

    private func name(_ key: String) -> String { path.isEmpty ? key : "\(path).\(key)" }

    mutating func string(_ key: String) throws(ConfigurationError) -> String? {
        used.insert(key)
        guard let value = table[key] else { return nil }
        guard let s = value.string else { throw ConfigurationError("\(name(key)) must be a string") }
        return s
    }

    mutating func int(_ key: String, range: ClosedRange<Int>) throws(ConfigurationError) -> Int? {
        used.insert(key)
        guard let value = table[key] else { return nil }
        guard let i = value.int else { throw ConfigurationError("\(name(key)) must be an integer") }
        guard range.contains(i) else {
            throw ConfigurationError("\(name(key)) must be between \(range.lowerBound) and \(range.upperBound)")
        }
        return i
    }

    /// A non-negative number of seconds (integer or float).
    /// A number of seconds (integer or fractional, 0 to 1e9) as a `Duration`.
    mutating func duration(_ key: String) throws(ConfigurationError) -> Duration? {
        try seconds(key).map { .nanoseconds(Int64(($0 * 1e9).rounded())) }
    }

    mutating func seconds(_ key: String) throws(ConfigurationError) -> Double? {
        try number(key, range: 0...1e9, what: "a number of seconds")
    }

    mutating func bool(_ key: String) throws(ConfigurationError) -> Bool? {
        used.insert(key)
        guard let value = table[key] else { return nil }
        guard let b = value.bool else { throw ConfigurationError("\(name(key)) must be true or false") }
        return b
    }

    /// A number (integer or float) within `range`.
    mutating func number(_ key: String, range: ClosedRange<Double>, what: String = "a number") throws(ConfigurationError) -> Double? {
        used.insert(key)
        guard let value = table[key] else { return nil }
        let number: Double
        if let i = value.int {
            number = Double(i)
        } else if let d = value.double {
            number = d
        } else {
            throw ConfigurationError("\(name(key)) must be \(what)")
        }
        guard number.isFinite, range.contains(number) else {
            let unit = what == "a number of seconds" ? " seconds" : ""
            throw ConfigurationError("\(name(key)) must be between \(range.lowerBound.formatted)\(unit) and \(range.upperBound.formatted)\(unit)")
        }
        return number
    }

    mutating func stringArray(_ key: String) throws(ConfigurationError) -> [String]? {
        used.insert(key)
        guard let value = table[key] else { return nil }
        guard let array = value.array else { throw ConfigurationError("\(name(key)) must be an array of strings") }
        var result: [String] = []
        for element in array {
            guard let s = element.string else { throw ConfigurationError("\(name(key)) must be an array of strings") }
            result.append(s)
        }
        return result
    }

    mutating func intArray(_ key: String, range: ClosedRange<Int>) throws(ConfigurationError) -> [Int]? {
        used.insert(key)
        guard let value = table[key] else { return nil }
        guard let array = value.array else { throw ConfigurationError("\(name(key)) must be an array of integers") }
        var result: [Int] = []
        for element in array {
            guard let i = element.int, range.contains(i) else { throw ConfigurationError("\(name(key)) must be an array of integers") }
            result.append(i)
        }
        return result
    }

    /// Names or numbers, as strings.
    mutating func stringOrIntArray(_ key: String) throws(ConfigurationError) -> [String]? {
        used.insert(key)
        guard let value = table[key] else { return nil }
        guard let array = value.array else { throw ConfigurationError("\(name(key)) must be an array of names or numbers") }
        var result: [String] = []
        for element in array {
            if let s = element.string {
                result.append(s)
            } else if let i = element.int {
                result.append(String(i))
            } else {
                throw ConfigurationError("\(name(key)) must be an array of names or numbers")
            }
        }
        return result
    }

    mutating func stringTable(_ key: String) throws(ConfigurationError) -> [String: String]? {
        used.insert(key)
        guard let value = table[key] else { return nil }
        guard let t = value.table else { throw ConfigurationError("\(name(key)) must be a table of strings") }
        var result: [String: String] = [:]
        for k in t.keys {
            guard let s = t[k]?.string else { throw ConfigurationError("\(name(key)).\(k) must be a string") }
            result[k] = s
        }
        return result
    }

    /// An array of tables (`[[key]]`).
    mutating func tables(_ key: String) throws(ConfigurationError) -> [TableReader]? {
        used.insert(key)
        guard let value = table[key] else { return nil }
        guard let array = value.array else { throw ConfigurationError("\(name(key)) must be an array of tables ([[\(name(key))]])") }
        var result: [TableReader] = []
        for (i, element) in array.enumerated() {
            guard let t = element.table else { throw ConfigurationError("\(name(key)) must be an array of tables ([[\(name(key))]])") }
            result.append(TableReader(t, path: "\(name(key))[\(i)]"))
        }
        return result
    }

    mutating func table(_ key: String) throws(ConfigurationError) -> TableReader? {
        used.insert(key)
        guard let value = table[key] else { return nil }
        guard let t = value.table else { throw ConfigurationError("\(name(key)) must be a table") }
        return TableReader(t, path: name(key))
    }

    func finish() throws(ConfigurationError) {
        for key in table.keys.sorted() where !used.contains(key) {
            throw ConfigurationError("unknown setting \(name(key))")
        }
    }
}
