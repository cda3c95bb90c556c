import CachedProtocol
import CachedTestSupport
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// One test per finding of the coherence review: each failed before its fix.
@Suite("Coherence: never a stale hit, never a stranded waiter", .serialized)
struct CoherenceTests {
    static let stale = params(["key": .string("StaleKey"), "identity": int(1)])
    static let entry = params(["key": .string("Student"), "identity": int(7)])

    /// The daemon's data connections to Redis (not the invalidation listener, not redis-cli itself).
    func dataConnections(_ redis: RedisServer) throws -> [String] {
        try redis.cli(["CLIENT", "LIST"]).split(separator: "\n").compactMap { line -> String? in
            let fields = Dictionary(line.split(separator: " ").compactMap { part -> (String, String)? in
                let kv = part.split(separator: "=", maxSplits: 1)
                return kv.count == 2 ? (String(kv[0]), String(kv[1])) : nil
            }, uniquingKeysWith: { a, _ in a })
            guard fields["sub"] == "0", fields["cmd"] != "client|list", let id = fields["id"] else { return nil }
            return id
        }
    }

    /// Finding 1: Redis forgets what a connection read when it closes (redis/redis#11767), so entries that
    /// connection read must not be served from the local copy any more.
    @Test(arguments: StoreKind.oneKeyspace)
    func aKilledDataConnectionDropsWhatItRead(kind: StoreKind) throws {
        let f = try Fixture(kind)
        let redis = try #require(f.redis)
        let daemon = f.daemon
        try redis.cli(["SET", "00STALEKEY#0000000001", "old"])
        try redis.cli(["HSET", "00000CLASS#0000000003", "00STALEKEY#0000000001", "old-field"])
        let hashEntry = Self.stale.merging(["hashKey": .string("Class"), "hashId": int(3)]) { $1 }
        let c = try daemon.client()
        for _ in 0..<2 {
            #expect(try c.call("get", Self.stale)["result"]?["value"] == .string("old"))
            #expect(try c.call("get", hashEntry)["result"]?["value"] == .string("old-field"))
        }
        let local = try c.call("stats")["result"]?["store"]?["localCache"]
        #expect(local?["hits"]?.intValue == 2, "the second reads were local hits")
        let killed = try dataConnections(redis)
        #expect(!killed.isEmpty)
        for id in killed { _ = try redis.cli(["CLIENT", "KILL", "ID", id]) }
        try redis.cli(["SET", "00STALEKEY#0000000001", "new"])
        try redis.cli(["HSET", "00000CLASS#0000000003", "00STALEKEY#0000000001", "new-field"])
        // No invalidation will ever come for these keys; the daemon must not answer "old" any more. The
        // only wait allowed is for the daemon to see the close (microseconds) and reconnect (50 ms backoff).
        #expect(try waitUntil(timeout: 2, interval: 0.005) { try c.call("get", Self.stale)["result"]?["value"] == .string("new") })
        #expect(try c.call("get", hashEntry)["result"]?["value"] == .string("new-field"))
        for _ in 0..<20 { #expect(try c.call("get", Self.stale)["result"]?["value"] == .string("new")) }
        let after = try c.call("stats")["result"]?["store"]?["localCache"]
        #expect((after?["connectionsLost"]?.intValue ?? 0) >= 1)
        #expect((after?["droppedWithConnection"]?.intValue ?? 0) >= 2)
    }

    /// Finding 1, the daemon's own recycle: a command timeout closes the connection, and what it read goes.
    @Test func aCommandTimeoutRecycleDropsWhatTheConnectionRead() throws {
        let redis = try RedisServer()
        let daemon = try DaemonProcess(
            config: "[redis_options]\ncommand_timeout = 0.2\npool_size = 1\n", arguments: ["--redis", redis.unixURL])
        try redis.cli(["SET", "00STALEKEY#0000000001", "old"])
        let c = try daemon.client()
        #expect(try c.call("get", Self.stale)["result"]?["value"] == .string("old"))
        #expect(try c.call("get", Self.stale)["result"]?["value"] == .string("old"))
        // Pause every client (a write from us times out and recycles the connection), then change the key
        // directly: Redis forgot the recycled connection's reads, so no invalidation comes.
        _ = try redis.cli(["CLIENT", "PAUSE", "600", "ALL"])
        let timedOut = try c.call("set", Self.entry.merging(["value": .string("x")]) { $1 }, timeout: 5)
        #expect(timedOut["error"]?["code"] == int(-32002))
        #expect(try waitUntil(timeout: 3) { (try? redis.cli(["SET", "00STALEKEY#0000000001", "new"])) == "OK" })
        #expect(try waitUntil(timeout: 3, interval: 0.01) { try c.call("get", Self.stale)["result"]?["value"] == .string("new") })
    }

    /// Finding 2: a miss read that a concurrent `set` overtook must not hand out a lease for an entry that
    /// is stored: the holder's fill would then replace the newer value. Rounds of the race, each on a fresh
    /// entry: readers `get` while a writer plain-`set`s at the same instant, on other event loops (so on
    /// other Redis connections); every lease holder fills at once. No fill may be stored when it was sent
    /// after the plain set's answer.
    @Test func aMissOvertakenByASetNeverLeadsToAFillOverTheSet() throws {
        let redis = try RedisServer()
        let daemon = try DaemonProcess(
            config: "threads = 3\n[redis_options]\npool_size = 3\n[keys.Race]\nlease_timeout = 0.5\n[local_cache]\nmax_bytes = 0\n",
            arguments: ["--redis", redis.unixURL])
        let violations = Locked(0)
        let leaseFills = Locked(0)
        let setDone = Locked([Int: UInt64]())
        let rounds = 300
        let readers = 2
        let barrier = Barrier(parties: readers + 1)
        let group = DispatchGroup()
        for reader in 0..<readers {
            group.enter()
            Thread {
                defer { group.leave() }
                let c = try? daemon.client()
                for identity in 0..<rounds {
                    barrier.wait()
                    let e = params(["key": .string("Race"), "identity": int(identity)])
                    guard let c, let answer = try? c.call("get", e, timeout: 5), let lease = answer["result"]?["lease"]?.stringValue else { continue }
                    let sent = DispatchTime.now().uptimeNanoseconds
                    let stored = (try? c.call("set", e.merging(["value": .string("lease-\(reader)"), "lease": .string(lease)]) { $1 }))?["result"]?["stored"]
                    if stored == .bool(true) {
                        leaseFills.withLock { $0 += 1 }
                        if let done = setDone.current[identity], done < sent { violations.withLock { $0 += 1 } }
                    }
                }
            }.start()
        }
        group.enter()
        Thread {
            defer { group.leave() }
            let w = try? daemon.client()
            for identity in 0..<rounds {
                barrier.wait()
                let e = params(["key": .string("Race"), "identity": int(identity)])
                if let w, (try? w.call("set", e.merging(["value": .string("plain")]) { $1 }))?["result"]?["stored"] == .bool(true) {
                    let now = DispatchTime.now().uptimeNanoseconds
                    setDone.withLock { $0[identity] = now }
                }
            }
        }.start()
        group.wait()
        let overtaken = try daemon.client().call("stats")["result"]?["fills"]?["readsOvertaken"]?.intValue ?? 0
        print("race: \(rounds) rounds, lease fills stored \(leaseFills.current), over a completed plain set \(violations.current), reads overtaken \(overtaken)")
        #expect(violations.current == 0)
        #expect(setDone.current.count == rounds)
    }

    /// Finding 3: waiters of a lease are answered when a reload gives the key a handler and a `get` or a
    /// valueless `set` starts a handler fill for the entry.
    @Test(arguments: ["get", "set"])
    func aHandlerFillOverALeaseAnswersTheLeasesWaiters(via method: String) throws {
        let daemon = try DaemonProcess(config: "[keys.Student]\nlease_timeout = 30\n")
        let holder = try daemon.client()
        _ = try #require(try holder.call("get", Self.entry)["result"]?["lease"]?.stringValue)
        let waiter = try daemon.client()
        try waiter.send(requestLine(id: int(1), method: "get", params: Self.entry) + "\n")
        Thread.sleep(forTimeInterval: 0.1)
        try FillWorker.config(key: "Student", mode: "version", version: 3).write(
            toFile: daemon.directory + "/cached.toml", atomically: true, encoding: .utf8)
        daemon.signalOnly(SIGHUP)
        #expect(try waitUntil(timeout: 5) { daemon.log().contains("configuration reloaded") })
        let c = try daemon.client()
        let answer = try c.call(method, Self.entry, timeout: 10)
        if method == "get" {
            #expect(answer["result"]?["value"] == .string("v3:7"))
        } else {
            #expect(answer["result"]?["stored"] == .bool(true))
        }
        // The lease's waiter is answered with the handler's value, long before the 30 s lease timeout.
        let woken = try waiter.readJSON(timeout: 5)
        #expect(woken["result"]?["value"] == .string("v3:7"))
    }

    /// Finding 4: a holder whose fill failed gives the lease back, and the next waiter fills at once.
    @Test func releaseHandsTheLeaseOnAtOnce() throws {
        let daemon = try DaemonProcess(config: "[keys.Student]\nlease_timeout = 5\n")
        let holder = try daemon.client()
        let token = try #require(try holder.call("get", Self.entry)["result"]?["lease"]?.stringValue)
        let next = try daemon.client()
        try next.send(requestLine(id: int(1), method: "get", params: Self.entry) + "\n")
        Thread.sleep(forTimeInterval: 0.05)
        let started = Date()
        #expect(try holder.call("release", Self.entry.merging(["lease": .string(token)]) { $1 })["result"] == .object(["released": .bool(true)]))
        let handed = try next.readJSON(timeout: 2)
        let elapsed = Date().timeIntervalSince(started)
        let newToken = try #require(handed["result"]?["lease"]?.stringValue)
        #expect(newToken != token)
        #expect(elapsed < 1, "handed on after \(elapsed) s")
        // The old token is worth nothing now.
        #expect(try holder.call("release", Self.entry.merging(["lease": .string(token)]) { $1 })["result"] == .object(["released": .bool(false)]))
        #expect(try holder.call("set", Self.entry.merging(["lease": .string(token), "value": .string("x")]) { $1 })["result"]?["stored"] == .bool(false))
        #expect(try next.call("set", Self.entry.merging(["lease": .string(newToken), "value": .string("y")]) { $1 })["result"]?["stored"] == .bool(true))
        // Bad params are -32602.
        #expect(try holder.call("release", Self.entry)["error"]?["code"] == int(-32602))
        let stats = try holder.call("stats")["result"]?["fills"]
        #expect(stats?["leasesReleased"]?.intValue == 1)
    }

    /// Finding 5: a reader that never fills asks with `"lease": false`: it neither takes a lease nor
    /// waits behind one.
    @Test func aGetWithoutLeaseNeverTakesOneNorWaits() throws {
        let daemon = try DaemonProcess(config: "[keys.Student]\nlease_timeout = 5\n")
        let looker = try daemon.client()
        let noLease = Self.entry.merging(["lease": .bool(false)]) { $1 }
        #expect(try looker.call("get", noLease)["result"] == .object(["hit": .bool(false), "value": .null]))
        // It took no lease: a filler gets one at once.
        let filler = try daemon.client()
        let token = try #require(try filler.call("get", Self.entry, timeout: 1)["result"]?["lease"]?.stringValue)
        // With a lease out, the looker is still answered at once.
        let started = Date()
        #expect(try looker.call("get", noLease, timeout: 1)["result"]?["hit"] == .bool(false))
        #expect(Date().timeIntervalSince(started) < 0.5)
        _ = try filler.call("set", Self.entry.merging(["lease": .string(token), "value": .string("v")]) { $1 })
        #expect(try looker.call("get", noLease)["result"]?["value"] == .string("v"))
        #expect(try looker.call("get", Self.entry.merging(["lease": .string("no")]) { $1 })["error"]?["code"] == int(-32602))
    }

    /// Finding 6: a get that reaches Redis looks the local copy up once, and counts one miss.
    @Test func aMissLooksTheLocalCopyUpOnce() throws {
        let redis = try RedisServer()
        let daemon = try DaemonProcess(arguments: ["--redis", redis.unixURL])
        try redis.cli(["SET", "000STUDENT#0000000007", "v"])
        let c = try daemon.client()
        #expect(try c.call("get", Self.entry)["result"]?["value"] == .string("v"))
        #expect(try c.call("get", Self.entry)["result"]?["value"] == .string("v"))
        let local = try c.call("stats")["result"]?["store"]?["localCache"]
        #expect(local?["misses"]?.intValue == 1)
        #expect(local?["hits"]?.intValue == 1)
        // Batches are answered from the local copy too.
        try c.send("[" + requestLine(id: int(1), method: "get", params: Self.entry) + ","
            + requestLine(id: int(2), method: "get", params: Self.entry) + "]\n")
        guard case .array(let batch) = try c.readJSON() else {
            Issue.record("a batch is answered by an array")
            return
        }
        #expect(batch.count == 2)
        let after = try c.call("stats")["result"]?["store"]?["localCache"]
        #expect(after?["hits"]?.intValue == 3)
        #expect(after?["misses"]?.intValue == 1)
    }
}
