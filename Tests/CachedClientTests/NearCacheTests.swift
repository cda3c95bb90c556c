import CachedClient
import CachedProtocol
import CachedTestSupport
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

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

    /// The daemon stopped with SIGSTOP while the entry changes in Redis: its proof page stops, and with the
    /// bound the near cache stops answering the old value within `max_staleness`; without it (the twin), the
    /// old value is answered all along.
    @Test(arguments: [0.3, 0.0])
    func aStalledDaemonLeavesNoOldNearHitPastTheBound(bound: Double) async throws {
        let f = try ClientFixture(redis: true, config: "[local_cache]\nmax_staleness = \(bound)\n")
        let redis = try #require(f.redis)
        let observer = f.newClient()
        #expect(try await waitUntilAsync { try await observer.stats()["store"]?["localCache"]?["enabled"] == .bool(true) })
        try redis.cli(["SET", "000STUDENT#0000000005", "v1"])
        let near = CachedClient(socketPath: f.daemon.socketPath, nearCache: 100)
        for _ in 0..<2 { _ = try await near.get(key: "Student", identity: 5) }
        let before = try await requests(observer)
        #expect(try await near.get(key: "Student", identity: 5).string == "v1")
        #expect(try await requests(observer) == before + 1, "a near hit (only the stats call reached the daemon)")
        f.daemon.signalOnly(SIGSTOP)
        defer { f.daemon.signalOnly(SIGCONT) }
        #expect(try waitUntil(timeout: 5) { processStopped(f.daemon.pid) })
        try redis.cli(["SET", "000STUDENT#0000000005", "v2"])
        let written = NIODeadlineSeconds.now()
        var lastOld: Double?
        var old = 0
        var unanswered = false
        while NIODeadlineSeconds.now() < written + 1.5 {
            // A near miss goes to the stopped daemon and waits: then the watch ends.
            guard let value = await answer(within: 0.1, { try? await near.get(key: "Student", identity: 5).string }) else {
                unanswered = true
                break
            }
            if value == "v1" {
                old += 1
                lastOld = NIODeadlineSeconds.now() - written
            }
            try await Task.sleep(for: .milliseconds(5))
        }
        if bound > 0 {
            #expect(unanswered, "the near cache stopped answering by itself")
            if let lastOld { #expect(lastOld <= bound + 0.1, "old value \(lastOld) s after the write") }
        } else {
            #expect(old > 10 && (lastOld ?? 0) > 1.2, "without the bound the old value stays: \(old), \(String(describing: lastOld))")
        }
        f.daemon.signalOnly(SIGCONT)
        #expect(try await waitUntilAsync { try await near.get(key: "Student", identity: 5).string == "v2" })
        await near.close()
    }
}

/// Seconds on `CLOCK_MONOTONIC`.
enum NIODeadlineSeconds {
    static func now() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }
}

/// Whether every thread of `pid` is stopped (kill(SIGSTOP) returns before they all are).
func processStopped(_ pid: Int32) -> Bool {
    guard let tasks = try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task") else { return false }
    return tasks.allSatisfy { task in
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/task/\(task)/stat", encoding: .utf8),
            let close = stat.lastIndex(of: ")")
        else { return false }
        return stat[stat.index(after: close)...].split(separator: " ").first == "T"
    }
}

/// The value `body` produces within `seconds`, or nil when it is still running then (it is left running).
func answer(within seconds: Double, _ body: @escaping @Sendable () async -> String?) async -> String?? {
    let box = AnswerBox()
    Task { box.set(await body()) }
    let end = NIODeadlineSeconds.now() + seconds
    while NIODeadlineSeconds.now() < end {
        if let value = box.value { return value }
        try? await Task.sleep(for: .milliseconds(1))
    }
    return nil
}

final class AnswerBox: @unchecked Sendable {
    private let lock = NSLock()
    private var stored: String??
    func set(_ value: String?) { lock.withLock { stored = .some(value) } }
    var value: String?? { lock.withLock { stored } }
}

/// Polls an async condition for up to `timeout` seconds.
func waitUntilAsync(timeout: Double = 10, _ condition: () async throws -> Bool) async throws -> Bool {
    let end = NIODeadlineSeconds.now() + timeout
    while NIODeadlineSeconds.now() < end {
        if try await condition() { return true }
        try await Task.sleep(for: .milliseconds(10))
    }
    return false
}
