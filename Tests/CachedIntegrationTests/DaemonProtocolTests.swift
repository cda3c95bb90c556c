import CachedProtocol
import CachedTestSupport
import Foundation
import Testing

/// Which store a daemon under test uses.
enum StoreKind: String, CaseIterable, Sendable, CustomTestStringConvertible {
    case embedded, redisUnix, redisTCP, redisTLS, sentinel, cluster
    var testDescription: String { rawValue }
    /// Every kind that talks to one Redis keyspace (one server, or a master behind Sentinel).
    static let oneKeyspace: [StoreKind] = [.redisUnix, .redisTCP, .redisTLS, .sentinel]
    /// Every kind that talks to Redis.
    static let redis: [StoreKind] = oneKeyspace + [.cluster]
}

/// A daemon plus (for the Redis kinds) its private Redis (behind Sentinel: the master; in a cluster: a
/// node whose `cli` follows redirects).
final class Fixture: @unchecked Sendable {
    let redis: RedisServer?
    let daemon: DaemonProcess
    private var sentinels: SentinelGroup?
    private(set) var cluster: ClusterGroup?

    init(_ kind: StoreKind, config: String = "") throws {
        switch kind {
        case .cluster:
            let group = try ClusterGroup()
            cluster = group
            redis = group.nodes[0]
            daemon = try DaemonProcess(config: config, arguments: ["--redis", group.url])
        case .redisTLS:
            let certs = try TestCertificates()
            let r = try RedisServer(tls: certs)
            redis = r
            daemon = try DaemonProcess(config: TLSTests.tlsConfig(certs) + config, arguments: ["--redis", r.tlsURL])
        case .sentinel:
            let group = try SentinelGroup()
            sentinels = group
            redis = group.master()
            daemon = try DaemonProcess(config: config, arguments: ["--redis", group.url])
        case .embedded:
            redis = nil
            daemon = try DaemonProcess(config: config)
        case .redisUnix:
            let r = try RedisServer()
            redis = r
            daemon = try DaemonProcess(config: config, arguments: ["--redis", r.unixURL])
        case .redisTCP:
            let r = try RedisServer(tcp: true)
            redis = r
            daemon = try DaemonProcess(config: config, arguments: ["--redis", r.tcpURL])
        }
        if kind != .embedded {
            // Resolved and connected (the listener, the pool; behind Sentinel the master first).
            let c = try daemon.client()
            guard try waitUntil(timeout: 10, { (try? c.call("stats"))?["result"]?["store"]?["available"] == .bool(true) }) else {
                throw HarnessError("the daemon did not reach Redis: \(daemon.log().suffix(1500))")
            }
        }
    }
}

func params(_ pairs: KeyValuePairs<String, JSONValue>) -> [String: JSONValue] {
    Dictionary(uniqueKeysWithValues: pairs.map { ($0.0, $0.1) })
}

func int(_ n: Int) -> JSONValue { .number(String(n)) }

@Suite("Daemon: methods on every store", .serialized)
struct DaemonMethodTests {
    @Test(arguments: StoreKind.allCases)
    func everyMethod(kind: StoreKind) throws {
        let f = try Fixture(kind)
        let c = try f.daemon.client()
        #expect(try c.call("ping")["result"] == .string("pong"))

        let entry = params(["key": .string("Student"), "identity": int(12)])
        let miss = try c.call("get", entry)["result"]
        #expect(miss?["hit"] == .bool(false))
        #expect(miss?["value"] == .null)
        // No handler for this key: the first asker gets a lease to fill it.
        #expect(miss?["lease"]?.stringValue?.count == 32)
        #expect(try c.call("set", entry.merging(["value": .string("hello")]) { $1 })["result"] == .object(["stored": .bool(true)]))
        #expect(try c.call("get", entry)["result"] == .object(["hit": .bool(true), "value": .string("hello")]))
        #expect(try c.call("delete", entry)["result"] == .object(["deleted": int(1)]))
        #expect(try c.call("delete", entry)["result"] == .object(["deleted": int(0)]))
        #expect(try c.call("get", entry)["result"]?["hit"] == .bool(false))

        let hashed = entry.merging(["hashKey": .string("Class"), "hashId": int(3)]) { $1 }
        #expect(try c.call("set", hashed.merging(["value": .string("in-hash")]) { $1 })["result"]?["stored"] == .bool(true))
        #expect(try c.call("get", hashed)["result"] == .object(["hit": .bool(true), "value": .string("in-hash")]))
        // The hash entry and the plain entry are distinct.
        #expect(try c.call("get", entry)["result"]?["hit"] == .bool(false))
        #expect(try c.call("deleteHash", params(["hashKey": .string("Class"), "hashId": int(3)]))["result"] == .object(["deleted": int(1)]))
        #expect(try c.call("get", hashed)["result"]?["hit"] == .bool(false))

        let stats = try c.call("stats")["result"]
        #expect(stats?["methods"]?["get"]?["hits"]?.intValue == 2)
        #expect(stats?["keys"]?["Student"]?["requests"]?.intValue ?? 0 >= 9)
        #expect(stats?["store"]?["available"] == .bool(true))
    }

    @Test(arguments: StoreKind.allCases)
    func binaryAndUnicodeValuesRoundTrip(kind: StoreKind) throws {
        let f = try Fixture(kind)
        let c = try f.daemon.client()
        let allBytes = Data((0...255).map { UInt8($0) }).base64EncodedString()
        let entry = params(["key": .string("Blob"), "identity": .string("all-bytes")])
        #expect(try c.call("set", entry.merging(["value": .string(allBytes), "encoding": .string("base64")]) { $1 })["result"]?["stored"] == .bool(true))
        let answer = try c.call("get", entry)["result"]
        #expect(answer?["value"] == .string(allBytes))
        #expect(answer?["encoding"] == .string("base64"))
        if let redis = f.redis {
            #expect(try redis.cliBytes(["GET", "000000BLOB#all-bytes"]) == Array(0...255))
        }
        let text = "naïve \u{1F600} \"quoted\" \\ \n\t \u{2028}"
        let e2 = params(["key": .string("Text"), "identity": int(1)])
        _ = try c.call("set", e2.merging(["value": .string(text)]) { $1 })
        let got = try c.call("get", e2)["result"]
        #expect(got?["value"] == .string(text))
        #expect(got?["encoding"] == nil)
    }

    @Test(arguments: [StoreKind.embedded, .redisUnix, .redisTLS])
    func ttls(kind: StoreKind) throws {
        let f = try Fixture(kind, config: "[keys.Session]\nttl = 30\n")
        let c = try f.daemon.client()
        let short = params(["key": .string("Student"), "identity": int(1), "value": .string("v"), "ttl": .number("0.3")])
        _ = try c.call("set", short)
        #expect(try c.call("get", params(["key": .string("Student"), "identity": int(1)]))["result"]?["hit"] == .bool(true))
        if let redis = f.redis {
            let pttl = Int(try redis.cli(["PTTL", "000STUDENT#0000000001"])) ?? -99
            #expect(pttl > 0 && pttl <= 300)
            _ = try c.call("set", params(["key": .string("Session"), "identity": int(7), "value": .string("s")]))
            let configured = Int(try redis.cli(["PTTL", "000SESSION#0000000007"])) ?? -99
            #expect(configured > 29_000 && configured <= 30_000)
            _ = try c.call("set", params(["key": .string("Session"), "identity": int(8), "value": .string("s"), "ttl": int(0)]))
            #expect(try redis.cli(["PTTL", "000SESSION#0000000008"]) == "-1")
        }
        #expect(try waitUntil(timeout: 3) {
            try c.call("get", params(["key": .string("Student"), "identity": int(1)]))["result"]?["hit"] == .bool(false)
        })
    }
}

@Suite("Daemon: pyredis-cache layout in Redis", .serialized)
struct RedisLayoutTests {
    @Test(arguments: StoreKind.redis)
    func writesAreVisibleToRedisCLIAndForeignWritesAreHits(kind: StoreKind) throws {
        let f = try Fixture(kind)
        let redis = try #require(f.redis)
        let c = try f.daemon.client()
        _ = try c.call("set", params(["key": .string("Student"), "identity": int(12), "value": .string("{\"name\":\"x\"}")]))
        #expect(try redis.cli(["GET", "000STUDENT#0000000012"]) == "{\"name\":\"x\"}")
        _ = try c.call("set", params(["key": .string("Student"), "identity": int(-5), "value": .string("neg")]))
        #expect(try redis.cli(["GET", "000STUDENT#-000000005"]) == "neg")
        _ = try c.call("set", params(["key": .string("Student"), "identity": int(12), "hashKey": .string("Class"), "hashId": int(3), "value": .string("h")]))
        #expect(try redis.cli(["HGET", "00000CLASS#0000000003", "000STUDENT#0000000012"]) == "h")

        try redis.cli(["SET", "000STUDENT#0000000099", "written-elsewhere"])
        #expect(try c.call("get", params(["key": .string("student"), "identity": int(99)]))["result"] == .object(["hit": .bool(true), "value": .string("written-elsewhere")]))
        try redis.cli(["HSET", "00000CLASS#0000000004", "000STUDENT#0000000001", "hash-elsewhere"])
        #expect(try c.call("get", params(["key": .string("Student"), "identity": int(1), "hashKey": .string("Class"), "hashId": int(4)]))["result"]?["value"] == .string("hash-elsewhere"))
    }

    @Test(arguments: StoreKind.redis)
    func wrongTypeIsAStoreError(kind: StoreKind) throws {
        let f = try Fixture(kind)
        let redis = try #require(f.redis)
        try redis.cli(["HSET", "000STUDENT#0000000001", "f", "v"])
        let answer = try f.daemon.client().call("get", params(["key": .string("Student"), "identity": int(1)]))
        #expect(answer["error"]?["code"]?.intValue == -32003)
        #expect(answer["error"]?["data"]?["redis"] == .string("WRONGTYPE"))
    }

    @Test func passwordAndDatabaseSelection() throws {
        let redis = try RedisServer(password: "s3cret")
        let daemon = try DaemonProcess(arguments: ["--redis", "unix://\(redis.socketPath)?db=3&password=s3cret"])
        let c = try daemon.client()
        _ = try c.call("set", params(["key": .string("Student"), "identity": int(1), "value": .string("db3")]))
        #expect(try redis.cli(["-n", "3", "GET", "000STUDENT#0000000001"]) == "db3")
        #expect(try redis.cli(["-n", "0", "EXISTS", "000STUDENT#0000000001"]) == "0")

        let wrong = try DaemonProcess(arguments: ["--redis", "unix://\(redis.socketPath)?password=wrong"])
        let answer = try wrong.client().call("get", params(["key": .string("Student"), "identity": int(1)]))
        #expect(answer["error"]?["code"]?.intValue == -32000)
    }

    @Test func redisStoppedAndRestartedMidTest() throws {
        let f = try Fixture(.redisUnix)
        let redis = try #require(f.redis)
        let c = try f.daemon.client()
        let entry = params(["key": .string("Student"), "identity": int(1)])
        _ = try c.call("set", entry.merging(["value": .string("before")]) { $1 })
        redis.stop(signal: SIGKILL)
        // Fails fast with store-unavailable; nothing hangs.
        let started = Date()
        var sawUnavailable = false
        for _ in 0..<20 {
            let answer = try c.call("get", entry, timeout: 2)
            if answer["error"]?["code"]?.intValue == -32000 { sawUnavailable = true }
        }
        #expect(sawUnavailable)
        #expect(Date().timeIntervalSince(started) < 5)
        #expect(try c.call("set", entry.merging(["value": .string("x")]) { $1 })["error"]?["code"]?.intValue == -32000)
        try redis.start()
        try redis.cli(["SET", "000STUDENT#0000000001", "after"])
        // Service resumes by itself.
        #expect(try waitUntil(timeout: 5) { try c.call("get", entry)["result"]?["value"] == .string("after") })
    }
}
