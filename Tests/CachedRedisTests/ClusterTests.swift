@testable import CachedRedis
import CachedTestSupport
import NIOCore
import Testing

@Suite("Redis Cluster: slots, URLs, slot maps")
struct ClusterUnitTests {
    /// The slot function against `CLUSTER KEYSLOT` of a real cluster-enabled redis-server, for pyredis-cache
    /// names, hash tags, empty and unclosed tags, and random names.
    @Test func hashSlotsMatchRedis() throws {
        let redis = try RedisServer(tcp: true, extraArguments: ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"])
        var names = ["", "a", "foo", "{user1000}.following", "{user1000}.followers", "foo{}{bar}", "foo{{bar}}zap", "foo{bar}{zap}", "{}x", "x{", "}{x}"]
        for i in 0..<1000 { names.append(String(format: "000STUDENT#%010d", i)) }
        for i in 0..<500 { names.append(String(format: "00000CLASS#%010d", i)) }
        var rng = SystemRandomNumberGenerator()
        let alphabet = Array("abcXYZ019{}#_-.:")
        for _ in 0..<1500 {
            names.append(String((0..<Int.random(in: 1...24, using: &rng)).map { _ in alphabet.randomElement(using: &rng)! }))
        }
        // Inline commands, pipelined: one reply line (":slot") per name, in order.
        let client = try LineClient(path: redis.socketPath)
        for chunk in stride(from: 0, to: names.count, by: 500) {
            let part = names[chunk..<min(chunk + 500, names.count)]
            try client.send(part.map { "CLUSTER KEYSLOT \"\($0)\"\r\n" }.joined())
            for name in part {
                let line = try #require(try client.readLine()).trimmingCharacters(in: .whitespacesAndNewlines)
                #expect(line == ":\(HashSlot.of(name))", "\(name)")
            }
        }
    }

    @Test func urls() throws {
        let c = try ClusterConfiguration(url: "redis-cluster://app:pw@10.0.0.1:7000,10.0.0.2,[::1]:7002")
        #expect(c.seeds == [.init(host: "10.0.0.1", port: 7000), .init(host: "10.0.0.2", port: 6379), .init(host: "::1", port: 7002)])
        #expect(c.data.username == "app" && c.data.password == "pw" && c.data.database == 0 && c.data.tls == nil)
        #expect(c.redactedDescription == "redis-cluster://app:***@10.0.0.1:7000,10.0.0.2:6379,[::1]:7002")
        #expect(try ClusterConfiguration(url: "rediss-cluster://h:1/0").data.tls != nil)
        for bad in ["redis-cluster://", "redis-cluster://a:1/3", "redis-cluster://a:1,,b:2", "redis://a:1", "redis-cluster://a:0"] {
            #expect(throws: RedisURLError.self, "\(bad)") { try ClusterConfiguration(url: bad) }
        }
    }

    func bulk(_ s: String) -> RedisReply { .bulk(ByteBuffer(string: s)) }

    @Test func slotMapsFromShardsAndSlots() throws {
        func node(_ port: Int, _ role: String, health: String = "online") -> RedisReply {
            .array([bulk("id"), bulk("x\(port)"), bulk("port"), .integer(Int64(port)), bulk("ip"), bulk("127.0.0.1"),
                    bulk("endpoint"), bulk("127.0.0.1"), bulk("role"), bulk(role), bulk("health"), bulk(health)])
        }
        let shards = RedisReply.array([
            .array([bulk("slots"), .array([.integer(0), .integer(5460)]), bulk("nodes"), .array([node(7000, "master"), node(7003, "replica")])]),
            .array([bulk("slots"), .array([.integer(5461), .integer(10922)]), bulk("nodes"), .array([node(7001, "master", health: "failed"), node(7004, "replica")])]),
            .array([bulk("slots"), .array([.integer(10923), .integer(16000), .integer(16001), .integer(16383)]), bulk("nodes"), .array([node(7002, "master")])]),
        ])
        let map = try ClusterSlotMap.parse(shards: shards, tls: false)
        #expect(map.owner(of: 0) == .init(host: "127.0.0.1", port: 7000))
        #expect(map.owner(of: 5461) == nil, "a failed master serves nothing")
        #expect(map.owner(of: 16383) == .init(host: "127.0.0.1", port: 7002))
        #expect(map.unownedSlots == 5462)
        #expect(map.primaries.count == 2)
        let slots = RedisReply.array([
            .array([.integer(0), .integer(8191), .array([bulk("127.0.0.1"), .integer(7000), bulk("a")])]),
            .array([.integer(8192), .integer(16383), .array([bulk("127.0.0.1"), .integer(7001), bulk("b")]), .array([bulk("127.0.0.1"), .integer(7004)])]),
        ])
        let moved = try ClusterSlotMap.parse(slots: slots)
        #expect(moved.owner(of: 8191)?.port == 7000 && moved.owner(of: 8192)?.port == 7001)
        #expect(moved.primariesThatLostSlots(since: map) == [.init(host: "127.0.0.1", port: 7002)])
        #expect(throws: RedisClientError.self) { try ClusterSlotMap.parse(slots: .array([.integer(1)])) }
    }
}
