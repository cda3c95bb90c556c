import CachedProtocol
import CachedRedis
import CachedTestSupport
import Foundation
import Logging
import NIOCore
import NIOPosix
import Testing

@testable import CachedCore

/// The fill-lock scripts against a real `redis-server` (no daemon): each outcome of acquire, the fenced
/// store, release, and the writes that end a lock.
@Suite("Fleet lock scripts (real Redis)", .serialized)
struct FleetLockScriptTests {
    /// A started store over one private redis-server, with its own event loops.
    final class Harness: @unchecked Sendable {
        let redis: RedisServer
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let store: RedisCacheStore
        let local = LocalCache(maxBytes: 1 << 20, maxAge: .seconds(60))
        var loop: any EventLoop { group.next() }

        init() async throws {
            redis = try RedisServer()
            var configuration = try RedisConfiguration(url: redis.unixURL)
            configuration.poolSize = 1
            let events = NodeEvents()
            let topology = SingleNodeTopology(
                configuration: configuration, group: group, tracking: true, logger: Logger(label: "test"),
                onEvent: { events.deliver($0) })
            store = RedisCacheStore(topology: topology, localCache: local)
            events.connect(store)
            await store.start()
        }

        func stop() async throws {
            await store.shutdown()
            try await group.shutdownGracefully()
        }

        func cli(_ arguments: String...) throws -> String {
            try redis.cli(arguments).trimmingCharacters(in: .whitespacesAndNewlines)
        }
    }

    static let entry = StoreLocation(key: "000STUDENT#0000000012", field: nil)
    static let field = StoreLocation(key: "00000CLASS#0000000003", field: "000STUDENT#0000000012")
    /// Long enough that a loaded machine never lets a lock expire between two steps of a test.
    static let lease = Duration.seconds(60)

    @Test func acquireWinsRenewsForItsTokenAndIsHeldForOthers() async throws {
        let h = try await Harness()
        let s = h.store
        #expect(try await s.acquire(Self.entry, token: "a", lease: Self.lease, requireAbsent: true, on: h.loop).get().isWon)
        #expect(try await s.acquire(Self.entry, token: "a", lease: Self.lease, requireAbsent: true, on: h.loop).get().isWon)  // renewed
        #expect(try await s.acquire(Self.entry, token: "b", lease: Self.lease, requireAbsent: true, on: h.loop).get().isHeld)
        let meta = try #require(FleetLayout.metaKey(Self.entry.key))
        #expect(try h.cli("HGET", meta, "lock").hasPrefix("a "))
        let pttl = Int(try h.cli("PTTL", meta)) ?? -3
        #expect(pttl > 0 && pttl <= 60_000)
        // A hash field's lock is its own.
        #expect(try await s.acquire(Self.field, token: "b", lease: Self.lease, requireAbsent: true, on: h.loop).get().isWon)
        // A present entry is answered instead of a lock.
        _ = try h.cli("SET", Self.entry.key, "v1")
        guard case .present(let value) = try await s.acquire(Self.entry, token: "c", lease: Self.lease, requireAbsent: true, on: h.loop).get()
        else {
            Issue.record("present expected")
            return
        }
        #expect(String(buffer: value) == "v1")
        try await h.stop()
    }

    @Test func anExpiredLockPassesToTheNextToken() async throws {
        let h = try await Harness()
        let s = h.store
        let started = ContinuousClock.now
        #expect(try await s.acquire(Self.entry, token: "a", lease: .seconds(2), requireAbsent: true, on: h.loop).get().isWon)
        let held = try await s.acquire(Self.entry, token: "b", lease: Self.lease, requireAbsent: true, on: h.loop).get()
        if ContinuousClock.now - started < .milliseconds(1900) { #expect(held.isHeld) }
        try await Task.sleep(for: .milliseconds(2100))
        #expect(try await s.acquire(Self.entry, token: "b", lease: Self.lease, requireAbsent: true, on: h.loop).get().isWon)
        // The first holder, stalled past its lock, is fenced out even though the entry is still absent.
        let late = try await s.store(Self.entry, token: "a", value: ByteBuffer(string: "old"), ttl: .seconds(60), mode: .fill, delta: nil, on: h.loop).get()
        #expect(late == .lockLost)
        #expect(try h.cli("EXISTS", Self.entry.key) == "0")
        let fresh = try await s.store(
            Self.entry, token: "b", value: ByteBuffer(string: "new"), ttl: .seconds(60), mode: .fill, delta: .milliseconds(42), on: h.loop
        ).get()
        #expect(fresh == .stored)
        #expect(try h.cli("GET", Self.entry.key) == "new")
        let meta = try #require(FleetLayout.metaKey(Self.entry.key))
        #expect(try h.cli("HGET", meta, "lock") == "")  // ended
        #expect(try h.cli("HGET", meta, "delta") == "42")
        #expect(Int(try h.cli("PTTL", Self.entry.key)).map { $0 > 59_000 } == true)
        try await h.stop()
    }

    @Test func fenceModesRefuseWhatWasWrittenMeanwhile() async throws {
        let h = try await Harness()
        let s = h.store
        func store(_ token: String?, _ value: String?, _ mode: FleetStoreMode) async throws -> FleetStoreOutcome {
            try await s.store(Self.entry, token: token, value: value.map { ByteBuffer(string: $0) }, ttl: .seconds(60), mode: mode, delta: nil, on: h.loop).get()
        }
        // fill: only if absent.
        _ = try h.cli("SET", Self.entry.key, "written")
        #expect(try await s.acquire(Self.entry, token: "t", lease: Self.lease, requireAbsent: false, on: h.loop).get().isWon)
        #expect(try await store("t", "filled", .fill) == .writtenMeanwhile)
        #expect(try h.cli("GET", Self.entry.key) == "written")
        let meta = try #require(FleetLayout.metaKey(Self.entry.key))
        #expect(try h.cli("HEXISTS", meta, "lock") == "0")  // a refused store ends the lock too
        // refresh: only if the entry still holds what the refresh started from.
        #expect(try await store(nil, "refreshed", .refresh(expected: ByteBuffer(string: "older"))) == .writtenMeanwhile)
        #expect(try await store(nil, "refreshed", .refresh(expected: ByteBuffer(string: "written"))) == .stored)
        #expect(try h.cli("GET", Self.entry.key) == "refreshed")
        // A refresh whose handler found no entry deletes it (if unchanged).
        #expect(try await store(nil, nil, .refresh(expected: ByteBuffer(string: "refreshed"))) == .stored)
        #expect(try h.cli("EXISTS", Self.entry.key) == "0")
        // overwrite: whatever is stored.
        _ = try h.cli("SET", Self.entry.key, "x")
        #expect(try await store(nil, "over", .overwrite) == .stored)
        #expect(try h.cli("GET", Self.entry.key) == "over")
        // A hash field is filled with HSETNX semantics.
        #expect(try await s.store(Self.field, token: nil, value: ByteBuffer(string: "f"), ttl: .zero, mode: .fill, delta: nil, on: h.loop).get() == .stored)
        #expect(try await s.store(Self.field, token: nil, value: ByteBuffer(string: "g"), ttl: .zero, mode: .fill, delta: nil, on: h.loop).get() == .writtenMeanwhile)
        #expect(try h.cli("HGET", Self.field.key, Self.field.field!) == "f")
        try await h.stop()
    }

    @Test func writesThroughCachedEndTheLockAndReleaseNeedsTheToken() async throws {
        let h = try await Harness()
        let s = h.store
        let address = EntryAddress(key: "Student", identity: .integer("12"), hash: nil)
        #expect(address.location == Self.entry)
        let meta = try #require(FleetLayout.metaKey(Self.entry.key))
        // A set ends the lock: the holder's fenced store is refused.
        #expect(try await s.acquire(Self.entry, token: "t", lease: Self.lease, requireAbsent: true, on: h.loop).get().isWon)
        try await s.set(address, value: ByteBuffer(string: "set"), ttl: .seconds(60), on: h.loop).get()
        #expect(try await s.store(Self.entry, token: "t", value: ByteBuffer(string: "old"), ttl: .seconds(60), mode: .overwrite, delta: nil, on: h.loop).get() == .lockLost)
        #expect(try h.cli("GET", Self.entry.key) == "set")
        // A delete ends it too (a fill after a delete would otherwise bring an old value back).
        #expect(try await s.acquire(Self.entry, token: "u", lease: Self.lease, requireAbsent: false, on: h.loop).get().isWon)
        #expect(try await s.delete(address, on: h.loop).get() == 1)
        #expect(try h.cli("HEXISTS", meta, "lock") == "0")
        // deleteHash ends every field's lock.
        let hashAddress = EntryAddress(key: "Student", identity: .integer("12"), hash: HashAddress(hashKey: "Class", hashId: .integer("3")))
        #expect(hashAddress.location == Self.field)
        try await s.set(hashAddress, value: ByteBuffer(string: "h"), ttl: .zero, on: h.loop).get()
        #expect(try await s.acquire(Self.field, token: "w", lease: Self.lease, requireAbsent: false, on: h.loop).get().isWon)
        #expect(try await s.deleteHash(HashAddress(hashKey: "Class", hashId: .integer("3")), on: h.loop).get() == 1)
        let hashMeta = try #require(FleetLayout.metaKey(Self.field.key))
        #expect(try h.cli("EXISTS", hashMeta) == "0")
        // Release: only the holder's token ends the lock.
        #expect(try await s.acquire(Self.entry, token: "v", lease: Self.lease, requireAbsent: true, on: h.loop).get().isWon)
        #expect(try await s.release(Self.entry, token: "other", on: h.loop).get() == false)
        #expect(try await s.release(Self.entry, token: "v", on: h.loop).get() == true)
        #expect(try await s.acquire(Self.entry, token: "z", lease: Self.lease, requireAbsent: true, on: h.loop).get().isWon)
        try await h.stop()
    }

    @Test func agedReadsCarryTheAgeIntoTheLocalCopyAndAreTracked() async throws {
        let h = try await Harness()
        let s = h.store
        let address = EntryAddress(key: "Student", identity: .integer("12"), hash: nil)
        let policy = DaemonConfiguration.AgingPolicy(staleTTL: .seconds(5), grace: .seconds(2), beta: 1)
        _ = try h.cli("SET", Self.entry.key, "v", "PX", "10000")
        _ = try h.cli("HSET", try #require(FleetLayout.metaKey(Self.entry.key)), "delta", "120")
        let read = try #require(try await s.readAged(address, policy: policy, on: h.loop).get())
        let age = try #require(read.age)
        let now = NIODeadline.now()
        // 10 s left: fresh for about 3 s more, stale until about 8 s, grace to 10 s.
        #expect(age.freshUntil > now + .milliseconds(2500) && age.freshUntil <= now + .milliseconds(3000))
        #expect(age.staleUntil - age.freshUntil == .seconds(5))
        // The expiry counts from the send, the windows from the reply: apart by one round trip at most.
        let grace = age.expiresAt - age.staleUntil
        #expect(grace <= .seconds(2) && grace > .milliseconds(1900))
        #expect(age.delta == .milliseconds(120))
        let local = try #require(s.cachedValue(address))
        #expect(local.age == age)
        // The script's read is tracked: a write elsewhere drops the local copy.
        _ = try h.cli("SET", Self.entry.key, "w")
        #expect(try waitUntil(timeout: 5) { s.cachedValue(address) == nil })
        // No expiry: no age.
        #expect(try await s.readAged(address, policy: policy, on: h.loop).get()?.age == nil)
        try await h.stop()
    }

    @Test func underMaxmemoryAFencingWriteIsRefusedLikeAPlainOne() async throws {
        let h = try await Harness()
        let address = EntryAddress(key: "Student", identity: .integer("12"), hash: nil)
        _ = try h.cli("CONFIG", "SET", "maxmemory-policy", "noeviction")
        _ = try h.cli("CONFIG", "SET", "maxmemory", "1")
        await #expect(throws: CachedError.self) { try await h.store.set(address, value: ByteBuffer(string: "v"), ttl: .zero, on: h.loop).get() }
        let stored = try? await h.store.store(Self.entry, token: nil, value: ByteBuffer(string: "v"), ttl: .zero, mode: .fill, delta: nil, on: h.loop).get()
        #expect(stored == nil)  // an OOM error
        _ = try h.cli("CONFIG", "SET", "maxmemory", "0")
        #expect(try h.cli("EXISTS", Self.entry.key) == "0")
        try await h.stop()
    }
}

extension FleetAcquire {
    var isWon: Bool {
        if case .won = self { return true }
        return false
    }
    var isHeld: Bool {
        if case .held = self { return true }
        return false
    }
}
