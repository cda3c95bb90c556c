import CachedProtocol
import CachedRedis
import Testing

@testable import CachedCore

@Suite("Redis store: errors and topology status")
struct RedisStoreErrorTests {
    @Test func redisClientErrorsBecomeTheSameCachedErrorsAsBefore() {
        let wrongType = RedisCacheStore.map(RedisClientError.reply("WRONGTYPE Operation against a key holding the wrong kind of value"))
        #expect(wrongType == CachedError(
            .storeError, "Redis error: WRONGTYPE Operation against a key holding the wrong kind of value",
            data: .object(["redis": .string("WRONGTYPE")])))
        let notRun = RedisCacheStore.map(RedisClientError.reply("TRYAGAIN Multiple keys request during rehashing of slot"))
        #expect(notRun == CachedError(
            .storeError, "Redis error: TRYAGAIN Multiple keys request during rehashing of slot", data: .object(["redis": .string("TRYAGAIN")])))
        #expect(RedisCacheStore.map(RedisClientError.noConnection) == CachedError(.storeUnavailable, "Redis unavailable: no connection to Redis is up"))
        #expect(RedisCacheStore.map(RedisClientError(.timeout, "late")).code == .storeTimeout)
        #expect(RedisCacheStore.map(RedisClientError(.connectionClosed, "gone")) == CachedError(.storeTimeout, "Redis unavailable: gone"))
        // An error reply not read from a routed command (a handshake) has no `data.redis`.
        #expect(RedisCacheStore.map(RedisClientError(.errorReply, "NOAUTH")) == CachedError(.storeError, "Redis error: NOAUTH"))
    }

    @Test func onlyARedirectThatOutlastedTheRetriesIsNotRun() {
        for word in ["TRYAGAIN", "MOVED", "ASK"] {
            #expect(RedisCacheStore.isTryAgain(RedisClientError.reply("\(word) 1 127.0.0.1:7000")))
        }
        #expect(!RedisCacheStore.isTryAgain(RedisClientError.reply("CLUSTERDOWN The cluster is down")))
        #expect(!RedisCacheStore.isTryAgain(RedisClientError(.timeout, "late")))
        // Once mapped it is a client's error, no longer asked about.
        #expect(!RedisCacheStore.isTryAgain(RedisCacheStore.map(RedisClientError.reply("TRYAGAIN x"))))
    }

    func node(_ address: String, slots: Int? = nil) -> RedisTopologyStatus.Node {
        RedisTopologyStatus.Node(address: address, role: "master", connections: 2, poolSize: 2, tracking: true, slots: slots)
    }

    func members(_ status: RedisTopologyStatus) -> Set<String> {
        guard case .object(let members) = status.json else { return [] }
        return Set(members.keys)
    }

    @Test func eachKindRendersTheMembersStatsShowed() throws {
        let single = RedisTopologyStatus.single(.init(url: "redis://127.0.0.1:6379/0", node: node("127.0.0.1:6379")))
        #expect(members(single) == ["kind", "nodes"])
        #expect(single.summary == "master 127.0.0.1:6379 (2/2 connections)")

        let sentinel = RedisTopologyStatus.sentinel(
            .init(
                url: "redis-sentinel://127.0.0.1:26379/m/0", masterName: "m", master: node("127.0.0.1:7000"),
                sentinels: [.init(address: "127.0.0.1:26379", reachable: true), .init(address: "127.0.0.1:26380", reachable: false)],
                switches: 1, lastSwitch: .init(from: "127.0.0.1:6999", to: "127.0.0.1:7000", at: 1_700_000_000.1234)))
        #expect(members(sentinel) == ["kind", "nodes", "masterName", "sentinels", "switches", "lastSwitch"])
        guard case .object(let s) = sentinel.json else { Issue.record("not an object"); return }
        #expect(s["kind"] == .string("sentinel"))
        #expect(s["lastSwitch"] == .object(["from": .string("127.0.0.1:6999"), "to": .string("127.0.0.1:7000"), "at": .number("1700000000.123")]))
        #expect(sentinel.summary == "master 127.0.0.1:7000 (2/2 connections), sentinels 1/2 reachable, last switch to 127.0.0.1:7000 at 1700000000")
        let unresolved = RedisTopologyStatus.sentinel(.init(url: "", masterName: "m", master: nil, sentinels: [], switches: 0, lastSwitch: nil))
        #expect(unresolved.nodes.isEmpty && !unresolved.available)
        #expect(unresolved.summary == "no master, sentinels 0/0 reachable")

        let cluster = RedisTopologyStatus.cluster(
            .init(
                url: "redis-cluster://127.0.0.1:7000", primaries: [node("127.0.0.1:7000", slots: 16384)],
                redirects: .init(moved: 3, ask: 1, tryAgain: 0, clusterDown: 0), refreshes: 4, unownedSlots: 0, switches: 2,
                lastRefresh: nil))
        #expect(members(cluster) == ["kind", "nodes", "redirects", "refreshes", "unownedSlots", "switches", "lastRefresh"])
        guard case .object(let c) = cluster.json, case .array(let nodes)? = c["nodes"], case .object(let first)? = nodes.first else {
            Issue.record("no nodes")
            return
        }
        #expect(first["slots"] == .number("16384"))
        #expect(c["redirects"] == .object(["moved": .number("3"), "ask": .number("1"), "tryAgain": .number("0"), "clusterDown": .number("0")]))
        #expect(c["lastRefresh"] == .null)
        #expect(cluster.summary == "cluster 1/1 primaries up, 0 slots unserved")
    }
}
