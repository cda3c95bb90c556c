import CachedClient
import CachedProtocol
import CachedTestSupport
import Foundation
import Testing

/// The Swift client's near cache against the real daemon: hits from the process, dropped by the daemon's
/// notifications, never the old value once another client's write has returned.
@Suite("CachedClient: near cache", .serialized)
struct NearCacheTests {
    func requests(_ c: CachedClient) async throws -> Int {
        try await c.stats()["requests"]?.intValue ?? -1
    }

    @Test(arguments: [false, true])
    func hitsComeFromTheProcessAndWritesDropThem(redis: Bool) async throws {
        let f = try ClientFixture(redis: redis)
        let near = CachedClient(socketPath: f.daemon.socketPath, nearCache: 100)
        let writer = f.newClient()
        let observer = f.newClient()
        #expect(near.nearCacheCapacity == 100)
        try await writer.set(key: "Student", identity: 1, value: "v0", ttl: 60)
        _ = try await near.get(key: "Student", identity: 1)  // may come from Redis
        #expect(try await near.get(key: "Student", identity: 1).string == "v0")  // from memory: kept
        let before = try await requests(observer)
        for _ in 0..<50 { #expect(try await near.get(key: "Student", identity: 1).string == "v0") }
        #expect(try await requests(observer) == before + 1, "no get reached the daemon (only the stats call)")
        // Another client's write is seen as soon as it has returned, every time.
        for i in 1...200 {
            try await writer.set(key: "Student", identity: 1, value: "v\(i)", ttl: 60)
            #expect(try await near.get(key: "Student", identity: 1).string == "v\(i)", "round \(i)")
            #expect(try await near.get(key: "Student", identity: 1).string == "v\(i)", "round \(i), kept")
        }
        // A delete; a hash entry and a deleteHash.
        #expect(try await writer.delete(key: "Student", identity: 1) == 1)
        #expect(try await near.get(key: "Student", identity: 1).hit == false)
        try await writer.set(key: "Student", identity: 2, hashKey: "Class", hashId: 3, value: "h")
        for _ in 0..<3 { #expect(try await near.get(key: "Student", identity: 2, hashKey: "Class", hashId: 3).string == "h") }
        #expect(try await writer.deleteHash(hashKey: "Class", hashId: 3) == 1)
        #expect(try await near.get(key: "Student", identity: 2, hashKey: "Class", hashId: 3).hit == false)
        await near.close()
    }

    @Test func aChangeStraightToRedisIsDroppedAndTheBoundHolds() async throws {
        let f = try ClientFixture(redis: true)
        let redis = try #require(f.redis)
        let near = CachedClient(socketPath: f.daemon.socketPath, nearCache: 3)
        for i in 0..<5 { try redis.cli(["SET", String(format: "000STUDENT#%010d", i), "r\(i)"]) }
        for _ in 0..<2 { for i in 0..<5 { _ = try await near.get(key: "Student", identity: i) } }
        try redis.cli(["SET", "000STUDENT#0000000004", "changed"])
        var seen = ""
        for _ in 0..<100 {
            seen = try await near.get(key: "Student", identity: 4).string ?? ""
            if seen == "changed" { break }
            try await Task.sleep(for: .milliseconds(20))
        }
        #expect(seen == "changed")
        let tracking = try await f.newClient().stats()["tracking"]
        #expect(tracking?["connections"]?.intValue == 1)
        #expect((tracking?["entries"]?.intValue ?? 99) <= 3, "the daemon tracks at most the near cache's bound")
        await near.close()
    }
}
