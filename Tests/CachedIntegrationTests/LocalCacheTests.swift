import CachedProtocol
import CachedTestSupport
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite("Local cache coherent with Redis (client-side caching)", .serialized)
struct LocalCacheTests {
    static let entry: [String: JSONValue] = ["key": .string("Student"), "identity": .number("1")]
    static let hashEntry: [String: JSONValue] = ["key": .string("Student"), "identity": .number("1"), "hashKey": .string("Class"), "hashId": .number("3")]

    func redisGets(_ redis: RedisServer) throws -> Int {
        let stats = try redis.cli(["INFO", "commandstats"])
        let total = stats.split(whereSeparator: \.isNewline).filter { $0.hasPrefix("cmdstat_get:") || $0.hasPrefix("cmdstat_hget:") }
            .compactMap { line in line.split(separator: "=")[1].split(separator: ",").first.flatMap { Int($0) } }
        return total.reduce(0, +)
    }

    func value(_ c: LineClient, _ params: [String: JSONValue] = Self.entry) throws -> JSONValue? {
        try c.call("get", params)["result"]?["value"]
    }

    @Test(arguments: StoreKind.oneKeyspace)
    func repeatedHitsAreServedWithoutRedis(kind: StoreKind) throws {
        let f = try Fixture(kind)
        let redis = try #require(f.redis)
        let daemon = f.daemon
        try redis.cli(["SET", "000STUDENT#0000000001", "v1"])
        try redis.cli(["HSET", "00000CLASS#0000000003", "000STUDENT#0000000001", "h1"])
        let c = try daemon.client()
        for _ in 0..<50 {
            #expect(try value(c) == .string("v1"))
            #expect(try value(c, Self.hashEntry) == .string("h1"))
        }
        #expect(try redisGets(redis) == 2)
        let local = try c.call("stats")["result"]?["store"]?["localCache"]
        #expect(local?["enabled"] == .bool(true))
        #expect(local?["hits"]?.intValue == 98)
    }

    @Test(arguments: StoreKind.oneKeyspace)
    func writesByAnyoneExpiryAndFlushesInvalidate(kind: StoreKind) throws {
        let f = try Fixture(kind)
        let redis = try #require(f.redis)
        let daemon = f.daemon
        let c = try daemon.client()
        try redis.cli(["SET", "000STUDENT#0000000001", "v1"])
        #expect(try value(c) == .string("v1"))
        // Another client writes: the next read sees it.
        try redis.cli(["SET", "000STUDENT#0000000001", "v2"])
        #expect(try waitUntil(timeout: 2, interval: 0.001) { try value(c) == .string("v2") })
        // A hash field written elsewhere.
        try redis.cli(["HSET", "00000CLASS#0000000003", "000STUDENT#0000000001", "h1"])
        #expect(try value(c, Self.hashEntry) == .string("h1"))
        try redis.cli(["HSET", "00000CLASS#0000000003", "000STUDENT#0000000001", "h2"])
        #expect(try waitUntil(timeout: 2, interval: 0.001) { try value(c, Self.hashEntry) == .string("h2") })
        // Expiry in Redis.
        try redis.cli(["SET", "000STUDENT#0000000002", "short", "PX", "200"])
        let short: [String: JSONValue] = ["key": .string("Student"), "identity": .number("2")]
        #expect(try value(c, short) == .string("short"))
        #expect(try waitUntil(timeout: 3) { try c.call("get", short)["result"]?["hit"] == .bool(false) })
        // FLUSHALL.
        #expect(try value(c) == .string("v2"))
        try redis.cli(["FLUSHALL"])
        #expect(try waitUntil(timeout: 2, interval: 0.001) { try c.call("get", Self.entry)["result"]?["hit"] == .bool(false) })
        // Writes through cached itself.
        _ = try c.call("set", Self.entry.merging(["value": .string("mine")]) { $1 })
        #expect(try value(c) == .string("mine"))
        _ = try c.call("delete", Self.entry)
        #expect(try c.call("get", Self.entry)["result"]?["hit"] == .bool(false))
    }

    @Test(arguments: [StoreKind.redisUnix, .redisTLS])
    func noStaleValueSurvivesARedisRestart(kind: StoreKind) throws {
        let f = try Fixture(kind)
        let redis = try #require(f.redis)
        let daemon = f.daemon
        let c = try daemon.client()
        try redis.cli(["SET", "000STUDENT#0000000001", "before-crash"])
        #expect(try value(c) == .string("before-crash"))
        redis.stop(signal: SIGKILL)
        try redis.start()  // empty: nothing was saved
        try redis.cli(["SET", "000STUDENT#0000000001", "after-restart"])
        #expect(try waitUntil(timeout: 5) { try value(c) == .string("after-restart") })
        // And invalidation works with the new listener.
        try redis.cli(["SET", "000STUDENT#0000000001", "later"])
        #expect(try waitUntil(timeout: 2, interval: 0.001) { try value(c) == .string("later") })
    }

    @Test(arguments: StoreKind.redis)
    func concurrentWritersNeverLeaveAStaleValueBehind(kind: StoreKind) throws {
        let f = try Fixture(kind)
        let redis = try #require(f.redis)
        let daemon = f.daemon
        let stop = Locked(false)
        let done = DispatchGroup()
        // Readers hammer the key through cached while a writer changes it in Redis directly.
        for _ in 0..<4 {
            done.enter()
            Thread {
                defer { done.leave() }
                guard let c = try? daemon.client() else { return }
                while !stop.current { _ = try? c.call("get", Self.entry) }
            }.start()
        }
        for i in 0..<300 {
            try redis.cli(["SET", "000STUDENT#0000000001", "w\(i)"])
        }
        stop.withLock { $0 = true }
        done.wait()
        let c = try daemon.client()
        #expect(try waitUntil(timeout: 2, interval: 0.005) { try value(c) == .string("w299") })
        Thread.sleep(forTimeInterval: 0.2)
        #expect(try value(c) == .string("w299"))
    }

    @Test func disabledByConfiguration() throws {
        let redis = try RedisServer()
        let daemon = try DaemonProcess(config: "[local_cache]\nmax_bytes = 0\n", arguments: ["--redis", redis.unixURL])
        try redis.cli(["SET", "000STUDENT#0000000001", "v"])
        let c = try daemon.client()
        for _ in 0..<5 { #expect(try value(c) == .string("v")) }
        #expect(try redisGets(redis) == 5)
    }
}
