import CachedProtocol
import CachedTestSupport
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The staleness bound under faults that close nothing (docs/reliability.md, "Silent faults"): packets
/// between the daemon and Redis dropped with iptables on the test's own loopback port, the entry changed in
/// Redis through its Unix socket (as another host would), and every answer watched. Each test that holds
/// the bound has a twin without it that finds the old value, so the fault is shown to matter.
@Suite(
    "Staleness bound under silent faults", .serialized,
    .enabled(if: PacketFilter.unavailableReason == nil, "\(PacketFilter.unavailableReason ?? "")"))
struct SilentFaultTests {
    static let entry: [String: JSONValue] = ["key": .string("Student"), "identity": .number("1")]
    static let redisKey = "000STUDENT#0000000001"
    /// How late past the bound an old value may still be seen: the watch loop's own step and scheduling.
    static let slack = 0.1

    struct Setup {
        let redis: RedisServer
        let daemon: DaemonProcess
        let client: LineClient
        let filter = PacketFilter()
    }

    static func setUp(maxStaleness: Double, commandTimeout: Double = 0.5) throws -> Setup {
        let redis = try RedisServer(tcp: true)
        let daemon = try DaemonProcess(
            config: """
                [local_cache]
                max_staleness = \(maxStaleness)
                [redis_options]
                command_timeout = \(commandTimeout)
                [keys.Student]
                ttl = 60
                """, arguments: ["--redis", redis.tcpURL])
        let client = try daemon.client()
        // Wait for the listener: only then are reads kept locally.
        _ = try waitUntil(timeout: 5) { try client.call("stats")["result"]?["store"]?["localCache"]?["enabled"] == .bool(true) }
        try redis.cli(["SET", redisKey, "v1"])
        _ = try client.call("get", entry)
        #expect(try client.call("get", entry)["result"]?["value"] == .string("v1"))
        return Setup(redis: redis, daemon: daemon, client: client)
    }

    /// Watches gets for `seconds` after the write; returns how long after it the old value was last answered
    /// (nil: never) and how many answers were the old value.
    static func watch(_ setup: Setup, after write: Double, seconds: Double) throws -> (last: Double?, old: Int) {
        var last: Double?
        var old = 0
        let end = write + seconds
        while now() < end {
            let answer = try setup.client.call("get", entry, timeout: 5)
            if answer["result"]?["value"] == .string("v1") {
                last = now() - write
                old += 1
            }
            usleep(5_000)
        }
        return (last, old)
    }

    static func now() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }

    /// The local ports of the daemon's connections to Redis: the listener's and the data connections'.
    static func daemonPorts(_ redis: RedisServer) throws -> (listener: [Int], data: [Int]) {
        var listener: [Int] = []
        var data: [Int] = []
        for line in try redis.cli(["CLIENT", "LIST"]).split(whereSeparator: \.isNewline) {
            let fields = Dictionary(
                line.split(separator: " ").compactMap { part -> (String, String)? in
                    let kv = part.split(separator: "=", maxSplits: 1)
                    return kv.count == 2 ? (String(kv[0]), String(kv[1])) : nil
                }, uniquingKeysWith: { a, _ in a })
            guard let addr = fields["addr"], addr.hasPrefix("127.0.0.1:"), let port = Int(addr.dropFirst("127.0.0.1:".count)) else { continue }
            if fields["sub"] != "0" || fields["cmd"] == "subscribe" { listener.append(port) } else if fields["cmd"] != "client|list" { data.append(port) }
        }
        return (listener, data)
    }

    /// Blackholes the path to Redis, changes the entry in Redis, and watches the answers for `seconds`.
    static func blackholeAndWatch(_ s: Setup, seconds: Double) throws -> (last: Double?, old: Int) {
        try s.filter.blackhole(port: try #require(s.redis.port))
        try s.redis.cli(["SET", Self.redisKey, "v2"])
        defer { s.filter.removeAll() }
        return try Self.watch(s, after: Self.now(), seconds: seconds)
    }

    @Test func blackholeNeverServesAnOldValuePastTheBound() throws {
        let s = try Self.setUp(maxStaleness: 0.3)
        let (last, _) = try Self.blackholeAndWatch(s, seconds: 2.0)
        if let last { #expect(last <= 0.3 + Self.slack, "old value answered \(last) s after the write") }
        // The healed path brings the new value, never the old one back.
        #expect(try waitUntil(timeout: 10) { try s.client.call("get", Self.entry, timeout: 5)["result"]?["value"] == .string("v2") })
        let after = try Self.watch(s, after: Self.now(), seconds: 0.5)
        #expect(after.old == 0)
        let local = try s.client.call("stats")["result"]?["store"]?["localCache"]
        #expect((local?["proofLapses"]?.intValue ?? 0) + (local?["lapsedHits"]?.intValue ?? 0) > 0, "\(String(describing: local))")
    }

    @Test func withoutTheBoundTheBlackholeServesTheOldValue() throws {
        let s = try Self.setUp(maxStaleness: 0)
        let (last, old) = try Self.blackholeAndWatch(s, seconds: 1.5)
        // What the bound prevents: the old value for the whole watch.
        #expect(old > 10)
        #expect((last ?? 0) > 1.2)
    }

    @Test(arguments: ["listener", "data"])
    func oneForgottenFlowNeverServesAnOldValuePastTheBound(flow: String) throws {
        let s = try Self.setUp(maxStaleness: 0.3)
        let port = try #require(s.redis.port)
        let ports = try Self.daemonPorts(s.redis)
        let target = try #require(flow == "listener" ? ports.listener.first : ports.data.first, "\(ports)")
        try s.filter.blackhole(flowFrom: target, to: port)
        try s.redis.cli(["SET", Self.redisKey, "v2"])
        let write = Self.now()
        let (last, _) = try Self.watch(s, after: write, seconds: 2.0)
        if let last { #expect(last <= 0.3 + Self.slack, "old value answered \(last) s after the write (\(flow) flow dropped)") }
        // The connection whose heartbeat went unanswered was closed and replaced: a new one on another port
        // (Redis still lists the old one: the daemon's FIN was dropped too).
        let replaced = try waitUntil(timeout: 5) {
            let now = try Self.daemonPorts(s.redis)
            return flow == "listener" ? now.listener.contains { !ports.listener.contains($0) } : now.data.contains { !ports.data.contains($0) }
        }
        #expect(replaced)
        s.filter.removeAll()
        #expect(try waitUntil(timeout: 10) { try s.client.call("get", Self.entry, timeout: 5)["result"]?["value"] == .string("v2") })
    }

    @Test func withoutTheBoundAForgottenListenerFlowServesTheOldValue() throws {
        let s = try Self.setUp(maxStaleness: 0)
        let ports = try Self.daemonPorts(s.redis)
        try s.filter.blackhole(flowFrom: try #require(ports.listener.first), to: try #require(s.redis.port))
        try s.redis.cli(["SET", Self.redisKey, "v2"])
        let (last, old) = try Self.watch(s, after: Self.now(), seconds: 1.5)
        s.filter.removeAll()
        #expect(old > 10)
        #expect((last ?? 0) > 1.2)
    }

    @Test func packetLossNeverServesAnOldValuePastTheBound() throws {
        let s = try Self.setUp(maxStaleness: 0.3)
        try s.filter.loss(port: try #require(s.redis.port), probability: 0.4)
        var worst = 0.0
        for round in 0..<5 {
            try s.redis.cli(["SET", Self.redisKey, "w\(round)"])
            let write = Self.now()
            var last: Double?
            while Self.now() < write + 0.8 {
                let value = try s.client.call("get", Self.entry, timeout: 5)["result"]?["value"]
                if value != nil, value != .string("w\(round)") { last = Self.now() - write }
                usleep(5_000)
            }
            worst = max(worst, last ?? 0)
        }
        s.filter.removeAll()
        #expect(worst <= 0.3 + Self.slack, "an old value \(worst) s after its write under 40% loss")
    }

    /// Redis Cluster: each node's listener and connections carry the bound. One primary's port is blackholed
    /// (its cluster bus stays up: no failover), the entry is changed on that primary through its Unix socket.
    @Test func aBlackholedClusterPrimaryNeverServesAnOldValuePastTheBound() throws {
        let group = try ClusterGroup()
        let daemon = try DaemonProcess(
            config: "[local_cache]\nmax_staleness = 0.3\n[redis_options]\ncommand_timeout = 0.5\nconnect_timeout = 0.5\n",
            arguments: ["--redis", group.url])
        let client = try daemon.client()
        #expect(try waitUntil(timeout: 10) { (try? client.call("stats"))?["result"]?["store"]?["available"] == .bool(true) })
        let owner = try #require(try group.owner(of: Self.redisKey))
        owner.followRedirects = false
        defer { owner.followRedirects = true }
        try owner.cli(["SET", Self.redisKey, "v1"])
        #expect(try waitUntil(timeout: 10) {
            _ = try client.call("get", Self.entry)
            return try client.call("get", Self.entry)["result"]?["value"] == .string("v1")
                && (client.call("stats")["result"]?["store"]?["localCache"]?["hits"]?.intValue ?? 0) > 0
        })
        let filter = PacketFilter()
        try filter.blackhole(port: try #require(owner.port))
        try owner.cli(["SET", Self.redisKey, "v2"])
        let write = Self.now()
        var last: Double?
        while Self.now() < write + 2.0 {
            if try client.call("get", Self.entry, timeout: 5)["result"]?["value"] == .string("v1") { last = Self.now() - write }
            usleep(5_000)
        }
        filter.removeAll()
        if let last { #expect(last <= 0.3 + Self.slack, "old value answered \(last) s after the write") }
        #expect(try waitUntil(timeout: 15) { try client.call("get", Self.entry, timeout: 5)["result"]?["value"] == .string("v2") })
    }
}
