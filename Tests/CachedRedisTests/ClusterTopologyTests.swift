import CachedTestSupport
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Testing

@testable import CachedRedis

/// ``ClusterTopology`` run by ``TopologyDriver`` against a real cluster (six `redis-server`s).
@Suite("Cluster topology against real nodes", .serialized)
struct ClusterTopologyTests {
    @Test func routesBySlotFollowsMovedToTheOwnerAndShutsItsNodesDown() async throws {
        let cluster = try ClusterGroup()
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let loop = group.next()
        let events = NIOLockedValueBox<[RedisNodeEvent]>([])
        let topology = ClusterTopology(
            configuration: try ClusterConfiguration(url: cluster.url), group: group, tracking: false, logger: Logger(label: "test")
        ) { event in events.withLockedValue { $0.append(event) } }
        await topology.start()
        guard case .cluster(let first) = topology.status else {
            Issue.record("not a cluster status")
            return
        }
        #expect(first.primaries.count == 3 && first.unownedSlots == 0 && first.refreshes >= 1)
        #expect(first.primaries.reduce(0) { $0 + ($1.slots ?? 0) } == HashSlot.count)

        for i in 0..<30 {
            #expect(try await topology.send(RedisCommand("SET", .string("key\(i)"), .string("v\(i)")), key: "key\(i)", on: loop).get() == .status("OK"))
        }
        // Sent on purpose to a primary that does not own the slot: `MOVED`, followed to the owner.
        let owner = try #require(topology.route("key0", preferring: loop))
        let elsewhere = try #require((0..<64).lazy.compactMap { topology.route("other\($0)", preferring: loop) }.first { $0.node !== owner.node })
        let answer = try await topology.execute(RedisCommand("GET", "key0"), key: "key0", route: elsewhere).get()
        #expect(answer.reply == .bulk(ByteBuffer(string: "v0")))
        #expect(answer.route.node === owner.node)
        guard case .cluster(let after) = topology.status else { return }
        #expect(after.redirects.moved == 1 && after.redirects.ask == 0)

        // An error reply that is no redirect fails typed, with its code.
        let wrongType = await #expect(throws: RedisClientError.self) {
            try await topology.send(RedisCommand("HGET", "key0", "f"), key: "key0", on: loop).get()
        }
        #expect(wrongType?.code == .errorReply && wrongType?.redisCode == "WRONGTYPE")

        await topology.shutdown()
        #expect(topology.route("key0", preferring: loop) == nil)
        // Nothing left the topology: no node was reported removed.
        #expect(!events.withLockedValue { $0 }.contains { if case .removed = $0 { true } else { false } })
        try await group.shutdownGracefully()
        _ = cluster
    }
}
