import CachedProtocol
import CachedTestSupport
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Issue 15 with real processes: several `cached` daemons sharing one `redis-server` fill an entry once
/// fleet-wide (the fill lock in Redis, fenced stores), stale-while-revalidate with grace, and the XFetch
/// early refresh. Handler calls are counted in a file shared by every worker of every daemon.
@Suite("Fleet: one fill across daemons, stale-while-revalidate, early refresh", .serialized)
struct FleetTests {
    // MARK: - Helpers

    static func entry(_ identity: Int) -> [String: JSONValue] { ["key": .string("Student"), "identity": int(identity)] }

    /// The pyredis-cache layout key of `Student`/`identity`.
    static func storeKey(_ identity: Int) -> String { "000STUDENT#" + String(format: "%010d", identity) }

    /// The entry's fill metadata hash (docs: `cached:fill:{<storeKey>}`).
    static func fillHash(_ identity: Int) -> String { "cached:fill:{\(storeKey(identity))}" }

    /// A `[keys.Student]` section. With `handler` (default) the fixture worker fills it; `ttl: nil` leaves
    /// the ttl out. (FillWorker.config fixes `ttl = 60` and its environment, hence this one.)
    static func studentKey(
        ttl: Double? = 60, handler: Bool = true, workers: Int = 2, timeout: Double = 10, mode: String = "value",
        delay: Double = 0, counter: String? = nil, done: String? = nil, version: Int = 0, extra: String = ""
    ) -> String {
        var lines = ["[keys.Student]"]
        if let ttl { lines.append("ttl = \(ttl)") }
        if handler {
            var env = "FILL_MODE = \"\(mode)\", FILL_DELAY = \"\(delay)\", FILL_VERSION = \"\(version)\""
            if let counter { env += ", FILL_COUNTER = \"\(counter)\"" }
            if let done { env += ", FILL_DONE = \"\(done)\"" }
            lines += [
                "handler = [\"/usr/bin/env\", \"python3\", \"\(FillWorker.path)\"]", "workers = \(workers)",
                "timeout = \(timeout)", "environment = { \(env) }", "restart_min_delay = 0.05",
            ]
        }
        if !extra.isEmpty { lines.append(extra) }
        return lines.joined(separator: "\n") + "\n"
    }

    /// One daemon per configuration, all on `redis`, each connected to it.
    static func fleet(_ configs: [String], redis: RedisServer) throws -> [DaemonProcess] {
        let daemons = try configs.map { try DaemonProcess(config: $0, arguments: ["--redis", redis.unixURL]) }
        for d in daemons { try waitForRedis(d) }
        return daemons
    }

    static func waitForRedis(_ d: DaemonProcess) throws {
        let c = try d.client()
        guard try waitUntil(timeout: 10, { (try? c.call("stats"))?["result"]?["store"]?["available"] == .bool(true) }) else {
            throw HarnessError("the daemon did not reach Redis: \(d.log().suffix(1500))")
        }
    }

    static func stats(_ d: DaemonProcess) throws -> JSONValue {
        try d.client().call("stats")["result"] ?? .null
    }

    /// `stats.fleet.<name>` (-1 when missing).
    static func fleetStat(_ stats: JSONValue, _ name: String) -> Int { stats["fleet"]?[name]?.intValue ?? -1 }

    static func lines(_ path: String) -> [String] {
        ((try? String(contentsOfFile: path, encoding: .utf8)) ?? "").split(separator: "\n").map(String.init)
    }

    /// Reads the answers arriving within `seconds` on the clients whose indices are in `pending` (each
    /// client has one request outstanding), removing them from `pending`; stops early when `pending` is
    /// empty or `atMost` answers were read. A client closed by the daemon is reported with `.null`.
    static func collect(
        _ clients: [LineClient], pending: inout Set<Int>, for seconds: Double, atMost: Int = .max
    ) -> [(index: Int, answer: JSONValue, at: Date)] {
        var got: [(index: Int, answer: JSONValue, at: Date)] = []
        let deadline = Date().addingTimeInterval(seconds)
        while !pending.isEmpty, got.count < atMost {
            let remaining = deadline.timeIntervalSinceNow
            if remaining <= 0 { break }
            let order = pending.sorted()
            var fds = order.map { pollfd(fd: clients[$0].fd, events: Int16(POLLIN), revents: 0) }
            let ready = poll(&fds, nfds_t(fds.count), Int32(min(remaining, 1) * 1000) + 1)
            if ready <= 0 { continue }
            for (k, p) in fds.enumerated() where p.revents != 0 {
                let i = order[k]
                pending.remove(i)
                let answer = (try? clients[i].readJSON(timeout: 2)) ?? .null
                got.append((i, answer, Date()))
                if got.count >= atMost { break }
            }
        }
        return got
    }

    /// One `get` of a steady read load.
    struct Read {
        let sent: Date
        let answered: Date
        let answer: JSONValue
        var latency: Double { answered.timeIntervalSince(sent) }
        var result: JSONValue? { answer["result"] }
        var value: String? { result?["value"]?.stringValue }
        var isStale: Bool { result?["stale"] == .bool(true) }
        /// n of a "c<n>" value (FILL_MODE count).
        var number: Int? { value.flatMap { $0.hasPrefix("c") ? Int($0.dropFirst()) : nil } }
    }

    /// Gets `identity` on `client` every `interval` until `end` (a timed-out get is recorded with `.null`).
    static func readLoop(_ client: LineClient, identity: Int, until end: Date, every interval: Double) -> [Read] {
        var reads: [Read] = []
        while Date() < end {
            let sent = Date()
            let answer = (try? client.call("get", entry(identity), timeout: 15)) ?? .null
            reads.append(Read(sent: sent, answered: Date(), answer: answer))
            Thread.sleep(forTimeInterval: interval)
        }
        return reads
    }

    static func percentile(_ values: [Double], _ p: Double) -> Double {
        guard !values.isEmpty else { return .nan }
        let sorted = values.sorted()
        return sorted[min(sorted.count - 1, Int((Double(sorted.count - 1) * p).rounded()))]
    }

    static func ms(_ seconds: Double) -> String { String(format: "%.1f ms", seconds * 1000) }

    // MARK: - One fill across the fleet

    @Test func threeDaemonsColdStampedeCausesOneHandlerCall() throws {
        raiseFileLimit(to: 4096)
        let redis = try RedisServer()
        let dir = try makeTemporaryDirectory("fleet")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let counter = dir + "/calls"
        let handlerSeconds = 0.3
        let config = Self.studentKey(workers: 4, delay: handlerSeconds, counter: counter)
        let daemons = try Self.fleet([config, config, config], redis: redis)
        let perDaemon = 300
        // Client j talks to daemon j % 3, so the gets reach the three daemons interleaved.
        let clients = try (0..<(perDaemon * 3)).map { try daemons[$0 % 3].client() }
        let started = Date()
        for (i, c) in clients.enumerated() {
            try c.send(requestLine(id: int(i), method: "get", params: Self.entry(12)) + "\n")
        }
        let sendsTook = Date().timeIntervalSince(started)
        var pending = Set(clients.indices)
        let answers = Self.collect(clients, pending: &pending, for: 20)
        #expect(pending.isEmpty, "\(pending.count) of \(clients.count) clients got no answer within 20 s")
        var values: [String: Int] = [:]
        for a in answers { values[a.answer["result"]?["value"]?.stringValue ?? "<\(a.answer)>", default: 0] += 1 }
        #expect(values == ["Student:12:[]:{}": clients.count], "answers: \(values.prefix(5))")
        let calls = FillWorker.calls(counter)
        #expect(calls == 1, "handler calls across the three daemons")
        let latest = answers.map { $0.at.timeIntervalSince(started) }.max() ?? -1
        for d in 0..<3 {
            let last = answers.filter { $0.index % 3 == d }.map { $0.at.timeIntervalSince(started) }.max() ?? -1
            print("fleet stampede: daemon \(d + 1): last of \(perDaemon) answered after \(Self.ms(last))")
        }
        print("fleet stampede: 3 daemons x \(perDaemon) cold gets: \(calls) handler call(s); all answered \(Self.ms(latest)) after the first send (the sends took \(Self.ms(sendsTook)); handler \(Self.ms(handlerSeconds)))")

        let stats = try daemons.map { try Self.stats($0) }
        let won = stats.map { Self.fleetStat($0, "locksWon") }
        let lost = stats.map { Self.fleetStat($0, "locksLost") }
        let waits = stats.map { Self.fleetStat($0, "waits") }
        print("fleet stampede: locksWon \(won), locksLost \(lost), waits \(waits)")
        #expect(won.reduce(0, +) == 1, "exactly one fill lock won fleet-wide: \(won)")
        #expect(won.allSatisfy { $0 >= 0 } && lost.allSatisfy { $0 >= 0 } && waits.allSatisfy { $0 >= 0 }, "stats.fleet is missing members")
        for d in 0..<3 where won[d] == 0 {
            #expect(lost[d] >= 1, "daemon \(d + 1) did not win the lock, so it found it held")
            #expect(waits[d] >= 1, "daemon \(d + 1) did not win the lock, so it waited for the winner's fill")
        }
        // (Gets sent after the fill landed are plain hits: the sends take longer than the handler.)
        for d in 0..<3 {
            let mine = answers.filter { $0.index % 3 == d }
            let hits = mine.filter { $0.answer["result"]?["hit"] == .bool(true) }.count
            print("fleet stampede: daemon \(d + 1) (locksWon \(won[d])): \(mine.count - hits) answers hit false, \(hits) hit true")
        }
        #expect(try redis.cli(["GET", Self.storeKey(12)]) == "Student:12:[]:{}")
        #expect((Int(try redis.cli(["PTTL", Self.storeKey(12)])) ?? 0) > 55_000)
        #expect(try redis.cli(["HEXISTS", Self.fillHash(12), "lock"]) == "0", "the fenced store deletes the lock")
        // Every daemon now answers from the entry without another call.
        for d in daemons { #expect(try d.client().call("get", Self.entry(12))["result"]?["hit"] == .bool(true)) }
        #expect(FillWorker.calls(counter) == 1)
        _ = clients
    }

    @Test func threeDaemonsLeaseFlowGrantsOneLeaseFleetWide() throws {
        raiseFileLimit(to: 4096)
        let redis = try RedisServer()
        // No handler: a miss hands out a lease. lease_timeout (also the fleet lock's lifetime) outlasts the test's steps.
        let config = Self.studentKey(handler: false, extra: "lease_timeout = 15")
        let daemons = try Self.fleet([config, config, config], redis: redis)
        let perDaemon = 300
        let clients = try (0..<(perDaemon * 3)).map { try daemons[$0 % 3].client() }
        for (i, c) in clients.enumerated() {
            try c.send(requestLine(id: int(i), method: "get", params: Self.entry(12)) + "\n")
        }
        var pending = Set(clients.indices)
        // The first answer is the lease; nobody else is answered while it is out.
        let first = Self.collect(clients, pending: &pending, for: 10, atMost: 1)
        let early = Self.collect(clients, pending: &pending, for: 1.5)
        #expect(early.isEmpty, "answered while the lease was out: \(early.prefix(3).map { "client \($0.index): \($0.answer)" })")
        let holder = try #require(first.first, "nobody got an answer (a lease) within 10 s")
        let lease = try #require(holder.answer["result"]?["lease"]?.stringValue, "the first answer has no lease: \(holder.answer)")
        print("fleet lease flow: the lease went to a client of daemon \(holder.index % 3 + 1)")
        #expect(try redis.cli(["HEXISTS", Self.fillHash(12), "lock"]) == "1", "the fleet fill lock is held in \(Self.fillHash(12)) while the lease is out")
        let stored = try clients[holder.index].call(
            "set", Self.entry(12).merging(["value": .string("filled"), "lease": .string(lease)]) { $1 })
        #expect(stored["result"]?["stored"] == .bool(true), "the holder's set: \(stored)")
        let started = Date()
        let rest = Self.collect(clients, pending: &pending, for: 15)
        #expect(pending.isEmpty, "\(pending.count) waiters got no answer within 15 s of the holder's set")
        let answers = early + rest
        var values: [String: Int] = [:]
        for a in answers { values[a.answer["result"]?["value"]?.stringValue ?? "<\(a.answer)>", default: 0] += 1 }
        #expect(values == ["filled": clients.count - 1], "waiters' answers: \(values.prefix(5))")
        #expect(answers.allSatisfy { $0.answer["result"]?["hit"] == .bool(false) }, "docs/protocol.md: every waiter gets hit false")
        let leases = answers.filter { $0.answer["result"]?["lease"] != nil }.count + 1
        #expect(leases == 1, "leases handed out fleet-wide")
        let latest = rest.map { $0.at.timeIntervalSince(started) }.max() ?? -1
        print("fleet lease flow: \(leases) lease for \(clients.count) gets on 3 daemons; \(answers.count) waiters answered within \(Self.ms(latest)) of the set")
        let stats = try daemons.map { try Self.stats($0) }
        let won = stats.map { Self.fleetStat($0, "locksWon") }
        let granted = stats.map { $0["fills"]?["leasesGranted"]?.intValue ?? -1 }
        print("fleet lease flow: locksWon \(won), leasesGranted \(granted), waits \(stats.map { Self.fleetStat($0, "waits") })")
        #expect(won.reduce(0, +) == 1)
        #expect(granted.reduce(0, +) == 1, "stats.fills.leasesGranted summed over the daemons: \(granted), but clients were handed \(leases) lease")
        #expect(try redis.cli(["GET", Self.storeKey(12)]) == "filled")
        #expect(try redis.cli(["HEXISTS", Self.fillHash(12), "lock"]) == "0", "the lease's set releases the fleet lock")
    }

    @Test func killedLockHolderIsReplacedOnceItsLockExpires() throws {
        raiseFileLimit(to: 4096)
        let redis = try RedisServer()
        let dir = try makeTemporaryDirectory("fleet")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let counter = dir + "/calls"
        let lease = 1.5
        let survivorHandler = 0.3
        // The holder's fill takes 3 s and is killed midway. The survivors fill faster than the lock's
        // lifetime, so the survivor that takes over can store (a fill slower than its lock never stores:
        // that is the fencing test below).
        let holderConfig = Self.studentKey(delay: 3.0, counter: counter, extra: "lease_timeout = \(lease)")
        let survivorConfig = Self.studentKey(delay: survivorHandler, counter: counter, extra: "lease_timeout = \(lease)")
        let daemons = try Self.fleet([holderConfig, survivorConfig, survivorConfig], redis: redis)
        let holderClients = try (0..<20).map { _ in try daemons[0].client() }
        let survivorClients = try (0..<200).map { try daemons[1 + $0 % 2].client() }
        let sent = Date()
        for (i, c) in holderClients.enumerated() {
            try c.send(requestLine(id: int(i), method: "get", params: Self.entry(12)) + "\n")
        }
        #expect(try waitUntil(timeout: 5) { FillWorker.calls(counter) == 1 }, "daemon 1's handler call started")
        let lock = try redis.cli(["HGET", Self.fillHash(12), "lock"])
        #expect(!lock.isEmpty, "daemon 1 holds the fill lock in \(Self.fillHash(12)) (\"<token> <deadline>\")")
        for (i, c) in survivorClients.enumerated() {
            try c.send(requestLine(id: int(1000 + i), method: "get", params: Self.entry(12)) + "\n")
        }
        Thread.sleep(forTimeInterval: 0.3)
        #expect(FillWorker.calls(counter) == 1, "daemons 2 and 3 found the lock held and wait")
        var pending = Set(survivorClients.indices)
        let tooEarly = Self.collect(survivorClients, pending: &pending, for: 0.01)
        #expect(tooEarly.isEmpty, "answered before any fill: \(tooEarly.prefix(3).map(\.answer))")
        #expect(daemons[0].stop(signal: SIGKILL, timeout: 5) == 128 + SIGKILL)
        let killed = Date()
        let answers = Self.collect(survivorClients, pending: &pending, for: 15)
        #expect(pending.isEmpty, "\(pending.count) of \(survivorClients.count) waiters on the surviving daemons got no answer within 15 s")
        var values: [String: Int] = [:]
        for a in answers + tooEarly { values[a.answer["result"]?["value"]?.stringValue ?? "<\(a.answer)>", default: 0] += 1 }
        #expect(values == ["Student:12:[]:{}": survivorClients.count], "survivors' answers: \(values.prefix(5))")
        let firstAnswer = answers.map { $0.at.timeIntervalSince(sent) }.min() ?? -1
        let lastAnswer = answers.map { $0.at.timeIntervalSince(sent) }.max() ?? -1
        // The lock was taken after `sent`, so it expired no earlier than sent + lease: no survivor may fill before.
        #expect(firstAnswer >= lease, "a survivor was answered \(Self.ms(firstAnswer)) after daemon 1 took the lock, before it expired (\(Self.ms(lease)))")
        print("fleet kill -9: holder killed \(Self.ms(killed.timeIntervalSince(sent))) into its fill; lock lifetime \(Self.ms(lease)); survivors answered \(Self.ms(firstAnswer))...\(Self.ms(lastAnswer)) after the holder took the lock (\(Self.ms(lastAnswer - lease - survivorHandler)) after expiry + the survivor's handler)")
        #expect(FillWorker.calls(counter) == 2, "the killed holder's call and one survivor's")
        let stats = try daemons[1...].map { try Self.stats($0) }
        let won = stats.map { Self.fleetStat($0, "locksWon") }
        let waits = stats.map { Self.fleetStat($0, "waits") }
        print("fleet kill -9: survivors' locksWon \(won), locksLost \(stats.map { Self.fleetStat($0, "locksLost") }), waits \(waits), waitsGaveUp \(stats.map { Self.fleetStat($0, "waitsGaveUp") })")
        #expect(won.reduce(0, +) == 1, "one survivor took the expired lock")
        #expect(waits.allSatisfy { $0 >= 1 }, "both survivors waited for daemon 1's fill first")
        #expect(try redis.cli(["GET", Self.storeKey(12)]) == "Student:12:[]:{}")
        #expect(try redis.cli(["HEXISTS", Self.fillHash(12), "lock"]) == "0")
        for c in holderClients { #expect(c.isClosedByPeer(timeout: 2), "a client of the killed daemon") }
    }

    // MARK: - Fencing

    @Test func aFillThatOutlivesItsLockDoesNotOverwriteAValueSetMeanwhile() throws {
        let redis = try RedisServer()
        let dir = try makeTemporaryDirectory("fleet")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let counter = dir + "/calls"
        let done = dir + "/done"
        let lease = 3.0
        let slow = 4.5
        let daemons = try Self.fleet(
            [Self.studentKey(delay: slow, counter: counter, done: done, extra: "lease_timeout = \(lease)"),
             Self.studentKey(delay: 0.2, counter: counter, done: done, extra: "lease_timeout = \(lease)")],
            redis: redis)
        // Identity 12 is set through daemon 2 while daemon 1 still holds the lock, 13 after its lock expired.
        let c12 = try daemons[0].client()
        let c13 = try daemons[0].client()
        let sent = Date()
        try c12.send(requestLine(id: int(12), method: "get", params: Self.entry(12)) + "\n")
        try c13.send(requestLine(id: int(13), method: "get", params: Self.entry(13)) + "\n")
        #expect(try waitUntil(timeout: 5) { FillWorker.calls(counter) == 2 }, "daemon 1's two fills started")
        #expect(try redis.cli(["HEXISTS", Self.fillHash(12), "lock"]) == "1")
        #expect(try redis.cli(["HEXISTS", Self.fillHash(13), "lock"]) == "1")
        let other = try daemons[1].client()
        Thread.sleep(until: sent.addingTimeInterval(1.0))
        #expect(try other.call("set", Self.entry(12).merging(["value": .string("meanwhile-12")]) { $1 })["result"]?["stored"] == .bool(true))
        Thread.sleep(until: sent.addingTimeInterval(lease + 0.3))
        #expect(try redis.cli(["HEXISTS", Self.fillHash(13), "lock"]) == "0", "daemon 1's lock on 13 expired")
        #expect(try other.call("set", Self.entry(13).merging(["value": .string("meanwhile-13")]) { $1 })["result"]?["stored"] == .bool(true))
        #expect(Self.lines(done).isEmpty, "daemon 1's slow fills are still running")
        let a12 = try c12.readJSON(timeout: 10)
        let a13 = try c13.readJSON(timeout: 10)
        print("fencing: daemon 1's late fills answered \(jsonText(a12)) and \(jsonText(a13)) (\(Self.ms(Date().timeIntervalSince(sent))) after the gets)")
        #expect(try waitUntil(timeout: 5) { Self.lines(done).count == 2 })
        Thread.sleep(forTimeInterval: 0.5)  // any store after the handler's answer has landed by now
        #expect(try redis.cli(["GET", Self.storeKey(12)]) == "meanwhile-12", "set while the lock was held, then overwritten by the late fill?")
        #expect(try redis.cli(["GET", Self.storeKey(13)]) == "meanwhile-13", "set after the lock expired, then overwritten by the late fill?")
        // Neither daemon serves the late fill's value from memory afterwards.
        for d in daemons {
            #expect(try d.client().call("get", Self.entry(12))["result"]?["value"] == .string("meanwhile-12"))
            #expect(try d.client().call("get", Self.entry(13))["result"]?["value"] == .string("meanwhile-13"))
        }
        #expect(FillWorker.calls(counter) == 2)
        let fenced = try daemons.map { Self.fleetStat(try Self.stats($0), "fencedOut") }
        print("fencing: fencedOut \(fenced)")
    }

    /// The soak's one `stale-fill` (docs/reliability.md): a fill made without the lock used to be stored with
    /// `SET NX`, which a write through another daemon followed by a delete does not stop, so the older value
    /// got in. Now such a fill is not stored, and a get that joins it after the handler call reads again.
    @Test func aFillWithoutTheLockIsNotStoredAfterAWriteAndADeleteThroughAnotherDaemon() throws {
        let redis = try RedisServer()
        let dir = try makeTemporaryDirectory("fleet")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let counter = dir + "/calls"
        let lease = 1.0  // daemon 1 gives up waiting after 2 x 1 + 1 = 3 s; a fill (0.8 s) fits in its lock
        let daemons = try Self.fleet(
            [Self.studentKey(delay: 0.8, counter: counter, extra: "lease_timeout = \(lease)"),
             Self.studentKey(counter: counter, extra: "lease_timeout = \(lease)")],
            redis: redis)
        // A lock that nobody will end in time: another daemon's, stuck (a minute from Redis's now).
        let now = try redis.cli(["TIME"]).split(separator: "\n").map { Int($0.trimmingCharacters(in: .whitespaces)) ?? 0 }
        let until = now[0] * 1000 + now[1] / 1000 + 60_000
        _ = try redis.cli(["HSET", Self.fillHash(21), "lock", "stuck \(until)"])
        let first = try daemons[0].client()
        let late = try daemons[0].client()
        let sent = Date()
        try first.send(requestLine(id: int(1), method: "get", params: Self.entry(21)) + "\n")
        #expect(try waitUntil(timeout: 8) { FillWorker.calls(counter) == 1 }, "daemon 1 gave up waiting and called its handler")
        // While the handler runs: a set and a delete through daemon 2 (the set ends the stuck lock).
        let other = try daemons[1].client()
        #expect(try other.call("set", Self.entry(21).merging(["value": .string("written-21")]) { $1 })["result"]?["stored"] == .bool(true))
        #expect(try other.call("delete", Self.entry(21))["result"]?["deleted"] == .number("1"))
        // A get that begins now, after the write: the fill's value (read from its source before the
        // write) is not for it.
        try late.send(requestLine(id: int(2), method: "get", params: Self.entry(21)) + "\n")
        let a1 = try first.readJSON(timeout: 8)
        print("unfenced fill: answered \(jsonText(a1)) \(Self.ms(Date().timeIntervalSince(sent))) after the get")
        #expect(a1["result"]?["cached"] == .bool(false), "a fill without the lock is answered as not stored")
        #expect(a1["result"]?["value"] != nil && a1["result"]?["value"] != .null)
        Thread.sleep(forTimeInterval: 0.2)
        #expect(try redis.cli(["EXISTS", Self.storeKey(21)]) == "0", "the fill without the lock was stored after the write and the delete")
        // The late get read again: a new flight, under the (now free) lock, with a second handler call.
        let a2 = try late.readJSON(timeout: 8)
        print("unfenced fill: the late get answered \(jsonText(a2))")
        #expect(a2["result"]?["value"] != nil && a2["result"]?["value"] != .null, "late get: \(jsonText(a2))")
        #expect(a2["result"]?["cached"] == nil, "the late get's fill took the lock and was stored: \(jsonText(a2))")
        #expect(FillWorker.calls(counter) == 2, "the late get read again instead of taking the unfenced value")
        #expect(Self.fleetStat(try Self.stats(daemons[0]), "unfencedFills") == 1)
    }

    @Test func aFillThatOutlivesItsLockLosesToTheNextHoldersFill() throws {
        let redis = try RedisServer()
        let dir = try makeTemporaryDirectory("fleet")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let counter = dir + "/calls"
        let done = dir + "/done"
        let lease = 4.0
        let slow = 5.0
        let second = 3.0
        // Daemon 1 answers v1, daemon 2 v2. Timeline (s): 0 daemon 1 locks and calls (5 s); 4 its lock
        // expires; 4.3 daemon 2 misses, locks, calls (3 s); 5 daemon 1's handler returns while the entry
        // is absent and daemon 2 holds the lock: it must not store; 7.3 daemon 2 stores v2 (lock held until 8.3).
        let daemons = try Self.fleet(
            [Self.studentKey(mode: "version", delay: slow, counter: counter, done: done, version: 1, extra: "lease_timeout = \(lease)"),
             Self.studentKey(mode: "version", delay: second, counter: counter, done: done, version: 2, extra: "lease_timeout = \(lease)")],
            redis: redis)
        let c1 = try daemons[0].client()
        let c2 = try daemons[1].client()
        let sent = Date()
        try c1.send(requestLine(id: int(1), method: "get", params: Self.entry(7)) + "\n")
        #expect(try waitUntil(timeout: 5) { FillWorker.calls(counter) == 1 }, "daemon 1's fill started")
        let firstLock = try redis.cli(["HGET", Self.fillHash(7), "lock"])
        #expect(!firstLock.isEmpty, "daemon 1 holds the lock")
        Thread.sleep(until: sent.addingTimeInterval(lease + 0.3))
        #expect(try redis.cli(["HEXISTS", Self.fillHash(7), "lock"]) == "0", "daemon 1's lock expired")
        let sent2 = Date()
        try c2.send(requestLine(id: int(2), method: "get", params: Self.entry(7)) + "\n")
        #expect(try waitUntil(timeout: 2) { FillWorker.calls(counter) == 2 }, "daemon 2 took the expired lock and called its handler")
        let secondLock = try redis.cli(["HGET", Self.fillHash(7), "lock"])
        #expect(!secondLock.isEmpty && secondLock != firstLock, "daemon 2 holds a lock of its own: \(secondLock) (was \(firstLock))")
        // Daemon 1's handler answers (4 s after its call); give its store attempt time to land.
        #expect(try waitUntil(timeout: 5) { Self.lines(done).count >= 1 })
        let d1Returned = Date()
        Thread.sleep(forTimeInterval: 0.4)
        let doneNow = Self.lines(done).map { $0.split(separator: " ").first.map(String.init) ?? "" }
        #expect(doneNow == ["1"], "premise: only daemon 1's handler had returned (daemon 2's was still running): \(doneNow)")
        #expect(try redis.cli(["EXISTS", Self.storeKey(7)]) == "0", "daemon 1's fill outlived its lock but stored its value into the absent entry")
        let a2 = try c2.readJSON(timeout: 10)
        #expect(a2["result"]?["value"] == .string("v2:7"))
        let a1 = try c1.readJSON(timeout: 10)
        print("fencing (versions): daemon 1's handler returned \(Self.ms(d1Returned.timeIntervalSince(sent))) after its get (lock \(Self.ms(lease))), daemon 2 took the lock \(Self.ms(sent2.timeIntervalSince(sent))) in; daemon 1 answered \(jsonText(a1)), daemon 2 \(jsonText(a2))")
        #expect(a1["result"]?["value"]?.stringValue?.hasPrefix("v") == true, "daemon 1's client still gets a value: \(jsonText(a1))")
        Thread.sleep(forTimeInterval: 0.3)
        #expect(try redis.cli(["GET", Self.storeKey(7)]) == "v2:7")
        for d in daemons { #expect(try d.client().call("get", Self.entry(7))["result"]?["value"] == .string("v2:7")) }
        #expect(FillWorker.calls(counter) == 2)
        let stats = try daemons.map { try Self.stats($0) }
        let won = stats.map { Self.fleetStat($0, "locksWon") }
        let fenced = stats.map { Self.fleetStat($0, "fencedOut") }
        print("fencing (versions): locksWon \(won), fencedOut \(fenced)")
        #expect(won == [1, 1], "each daemon won the lock once: \(won)")
        #expect(fenced == [1, 0], "daemon 1's store was fenced out: \(fenced)")
    }

    // MARK: - Stale-while-revalidate

    @Test func staleWhileRevalidateAnswersAtOnceAndRefreshesOncePerWindow() throws {
        let redis = try RedisServer()
        let dir = try makeTemporaryDirectory("fleet")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let counter = dir + "/calls"
        let ttl = 2.0
        let staleTTL = 5.0
        let handlerSeconds = 0.8
        let daemon = try DaemonProcess(
            config: Self.studentKey(ttl: ttl, mode: "count", delay: handlerSeconds, counter: counter, extra: "stale_ttl = \(staleTTL)"),
            arguments: ["--redis", redis.unixURL])
        try Self.waitForRedis(daemon)
        let c = try daemon.client()
        let first = try c.call("get", Self.entry(12), timeout: 10)
        #expect(first["result"]?["value"] == .string("c1"))
        let pttl = Double(try redis.cli(["PTTL", Self.storeKey(12)])) ?? -1
        let firstFreshEnd = Date().addingTimeInterval(pttl / 1000 - staleTTL)
        #expect(pttl > (ttl + staleTTL) * 1000 - 700 && pttl <= (ttl + staleTTL) * 1000, "stored for ttl + stale_ttl: PTTL \(pttl)")

        // A steady read load (every 20 ms) across three expiries: fills at about 0, 2.8, 5.6 and 8.4 s.
        let start = Date()
        let reads = Self.readLoop(c, identity: 12, until: start.addingTimeInterval(8.5), every: 0.02)
        Thread.sleep(forTimeInterval: handlerSeconds + 0.7)  // a refresh started by the last reads lands
        let calls = FillWorker.calls(counter)
        let storedNow = try redis.cli(["GET", Self.storeKey(12)])

        let bad = reads.filter { $0.result?["hit"] != .bool(true) || $0.number == nil }
        #expect(bad.isEmpty, "\(bad.count) reads were not hits with a value, e.g. \(bad.prefix(3).map(\.answer))")
        let numbers = reads.compactMap(\.number)
        #expect(numbers == numbers.sorted(), "a value went back to an older one")
        let seen = Array(Set(numbers)).sorted()
        #expect(seen == Array(1...(seen.last ?? 1)), "values seen: \(seen)")
        #expect(seen.count >= 3, "the value changed after each refresh: saw \(seen)")
        let stale = reads.filter(\.isStale)
        let fresh = reads.filter { !$0.isStale }
        let staleLatencies = stale.map(\.latency)
        print("stale-while-revalidate: \(reads.count) reads, \(stale.count) stale; stale latency p50 \(Self.ms(Self.percentile(staleLatencies, 0.5))) p99 \(Self.ms(Self.percentile(staleLatencies, 0.99))) max \(Self.ms(staleLatencies.max() ?? .nan)); fresh hits p50 \(Self.ms(Self.percentile(fresh.map(\.latency), 0.5))) max \(Self.ms(fresh.map(\.latency).max() ?? .nan)); handler \(Self.ms(handlerSeconds))")
        #expect(!stale.isEmpty)
        #expect(Self.percentile(staleLatencies, 0.5) < 0.05, "stale answers wait (median)")
        #expect((staleLatencies.max() ?? 0) < handlerSeconds, "a stale answer waited for the refresh")
        #expect((reads.map(\.latency).max() ?? 0) < handlerSeconds, "a read waited for a refresh")

        // Per value: fresh for ttl after it appeared, then stale until the next value, the handler's duration later.
        var windows = 0
        for n in seen {
            let ofN = reads.filter { $0.number == n }
            guard let firstStale = ofN.first(where: \.isStale) else { continue }
            windows += 1
            let freshFor: Double
            if n == 1 {
                freshFor = firstStale.sent.timeIntervalSince(firstFreshEnd) + ttl
            } else {
                freshFor = firstStale.sent.timeIntervalSince(ofN[0].sent)
            }
            #expect(freshFor >= ttl - 0.3 && freshFor <= ttl + 1.0, "c\(n) was fresh for \(freshFor) s, ttl \(ttl)")
            #expect(!ofN.drop(while: { !$0.isStale }).contains { !$0.isStale }, "c\(n) was fresh again after being stale")
            if let next = reads.first(where: { $0.number == n + 1 }) {
                let staleFor = next.sent.timeIntervalSince(firstStale.sent)
                print("stale-while-revalidate: c\(n) fresh for \(String(format: "%.2f", freshFor)) s, stale for \(String(format: "%.2f", staleFor)) s (\(ofN.filter(\.isStale).count) stale answers) until c\(n + 1)")
                #expect(staleFor >= handlerSeconds - 0.1 && staleFor <= handlerSeconds + 1.5, "the refresh of c\(n) took \(staleFor) s")
            }
        }
        // Exactly one refresh per stale window: every call after the first is one window's refresh, and each
        // call's value was stored (the last one may not have been read yet).
        print("stale-while-revalidate: \(calls) handler calls for \(windows) stale windows; Redis holds \(storedNow)")
        #expect(calls - 1 == windows, "handler calls \(calls) for \(windows) stale windows")
        #expect(storedNow == "c\(calls)")
        let s = try Self.stats(daemon)
        print("stale-while-revalidate: stats.fleet \(jsonText(s["fleet"] ?? .null))")
        #expect(Self.fleetStat(s, "staleAnswers") == stale.count, "stats.fleet.staleAnswers against the stale answers read")
        #expect(s["keys"]?["Student"]?["stale"]?.intValue == stale.count, "stats.keys.Student.stale: the same, by key")
        #expect(Self.fleetStat(s, "refreshes") == calls - 1)
        #expect(Self.fleetStat(s, "refreshesFailed") == 0)
    }

    @Test func graceServesTheStaleValueWhileRefreshesFailThenTheError() throws {
        let redis = try RedisServer()
        let dir = try makeTemporaryDirectory("fleet")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let counter = dir + "/calls"
        let ttl = 2.0
        let staleTTL = 2.0
        let grace = 3.0
        let handlerSeconds = 0.3
        let daemon = try DaemonProcess(
            config: Self.studentKey(
                ttl: ttl, mode: "fail-after-first", delay: handlerSeconds, counter: counter,
                extra: "stale_ttl = \(staleTTL)\ngrace = \(grace)"),
            arguments: ["--redis", redis.unixURL])
        try Self.waitForRedis(daemon)
        let c = try daemon.client()
        #expect(try c.call("get", Self.entry(12))["result"]?["value"] == .string("c1"))
        let pttl = Double(try redis.cli(["PTTL", Self.storeKey(12)])) ?? -1
        let expiresAt = Date().addingTimeInterval(pttl / 1000)
        let total = ttl + staleTTL + grace
        #expect(pttl > total * 1000 - 700 && pttl <= total * 1000, "stored for ttl + stale_ttl + grace: PTTL \(pttl)")
        let freshEnd = expiresAt.addingTimeInterval(-(staleTTL + grace))
        let staleEnd = expiresAt.addingTimeInterval(-grace)

        let reads = Self.readLoop(c, identity: 12, until: expiresAt.addingTimeInterval(2.5), every: 0.05)
        let margin = 0.3
        let errorMargin = 0.6
        let value = reads.filter { $0.value == "c1" }
        let errors = reads.filter { $0.answer["error"]?["code"]?.intValue == -32004 }
        #expect(value.count + errors.count == reads.count, "other answers: \(reads.filter { $0.value != "c1" && $0.answer["error"] == nil }.prefix(3).map(\.answer))")
        let beforeStale = reads.filter { $0.answered < freshEnd.addingTimeInterval(-margin) }
        #expect(beforeStale.allSatisfy { $0.value == "c1" && !$0.isStale }, "fresh answers: \(beforeStale.filter { $0.isStale || $0.value != "c1" }.prefix(3).map(\.answer))")
        let inStale = reads.filter { $0.sent > freshEnd.addingTimeInterval(margin) && $0.answered < staleEnd.addingTimeInterval(-margin) }
        let inGrace = reads.filter { $0.sent > staleEnd.addingTimeInterval(margin) && $0.answered < expiresAt.addingTimeInterval(-margin) }
        let afterGrace = reads.filter { $0.sent > expiresAt.addingTimeInterval(errorMargin) }
        #expect(!inStale.isEmpty && !inGrace.isEmpty && !afterGrace.isEmpty)
        #expect(inStale.allSatisfy { $0.value == "c1" && $0.isStale }, "stale window: \(inStale.filter { !$0.isStale || $0.value != "c1" }.prefix(3).map(\.answer))")
        #expect(inGrace.allSatisfy { $0.value == "c1" && $0.isStale }, "grace: \(inGrace.filter { !$0.isStale || $0.value != "c1" }.prefix(3).map(\.answer))")
        #expect(afterGrace.allSatisfy { $0.answer["error"]?["code"]?.intValue == -32004 }, "after grace: \(afterGrace.filter { $0.answer["error"] == nil }.prefix(3).map(\.answer))")
        if let firstError = errors.first {
            #expect(!reads.drop(while: { $0.sent < firstError.sent }).contains { $0.value != nil }, "a value was served after the error")
            let at = firstError.sent.timeIntervalSince(expiresAt)
            print("grace: first error \(String(format: "%+.2f", at)) s from the entry's expiry in Redis: \(jsonText(firstError.answer))")
            #expect(at > -errorMargin, "the error came before grace ended")
        }
        let stats = try Self.stats(daemon)
        let calls = FillWorker.calls(counter)
        print("grace: \(reads.count) reads: \(beforeStale.count) fresh, \(inStale.count) in the stale window (latency p50 \(Self.ms(Self.percentile(inStale.map(\.latency), 0.5)))), \(inGrace.count) in grace (latency p50 \(Self.ms(Self.percentile(inGrace.map(\.latency), 0.5)))), \(errors.count) errors; \(calls) handler calls; stats.fleet \(jsonText(stats["fleet"] ?? .null))")
        #expect(Self.fleetStat(stats, "refreshesFailed") >= 1)
        #expect(Self.fleetStat(stats, "graceAnswers") >= inGrace.count, "stats.fleet.graceAnswers against the grace answers read (\(inGrace.count))")
        #expect(Self.fleetStat(stats, "staleAnswers") >= inStale.count)
        #expect(Self.percentile(inStale.map(\.latency), 0.5) < 0.05, "stale answers in the stale window are not held for the failing refresh")
    }

    // MARK: - Early refresh (XFetch)

    @Test func earlyRefreshKeepsReadersFromWaitingAtExpiry() throws {
        let redis = try RedisServer()
        let dir = try makeTemporaryDirectory("fleet")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let counter = dir + "/calls"
        let ttl = 3.0
        let loadSeconds = 30.0
        let daemon = try DaemonProcess(
            config: Self.studentKey(ttl: ttl, mode: "count", delay: 0.2, counter: counter, extra: "early_refresh_beta = 1.0"),
            arguments: ["--redis", redis.unixURL])
        try Self.waitForRedis(daemon)
        #expect(try daemon.client().call("get", Self.entry(12))["result"]?["value"] == .string("c1"))
        let callsBefore = FillWorker.calls(counter)
        // Four readers, each every 5 ms: several hundred reads/s. (With β = 1 and Δ = 0.2 s, the chance that
        // no read triggers the refresh early enough for it to land before expiry is exp(-(Δ/interval)·e^(-1.25)):
        // a few percent per expiry at 50 reads/s, negligible at a few hundred.)
        let readers = 4
        let clients = try (0..<readers).map { _ in try daemon.client() }
        let all = Locked<[[Read]]>(Array(repeating: [], count: readers))
        let end = Date().addingTimeInterval(loadSeconds)
        onThreads(readers) { i in
            let reads = Self.readLoop(clients[i], identity: 12, until: end, every: 0.005)
            all.withLock { $0[i] = reads }
        }
        Thread.sleep(forTimeInterval: 0.5)
        let refreshes = FillWorker.calls(counter) - callsBefore
        let reads = all.current.flatMap { $0 }
        let waited = reads.filter { $0.result?["hit"] == .bool(false) }
        let errors = reads.filter { $0.result == nil }
        let latencies = reads.map(\.latency)
        let slow = reads.filter { $0.latency > 0.15 }
        let stats = try Self.stats(daemon)
        let early = Self.fleetStat(stats, "earlyRefreshes")
        let seen = Set(reads.compactMap(\.number))
        print("XFetch: ttl \(ttl) s, beta 1, handler 200 ms, \(String(format: "%.0f", loadSeconds)) s, \(reads.count) reads: \(waited.count) waited for a fill (hit false), \(errors.count) errors, \(slow.count) over 150 ms; latency p50 \(Self.ms(Self.percentile(latencies, 0.5))) p99 \(Self.ms(Self.percentile(latencies, 0.99))) max \(Self.ms(latencies.max() ?? .nan)); \(refreshes) handler calls after the first (one per TTL would be \(Int(loadSeconds / ttl))); earlyRefreshes \(early); \(seen.count) values seen")
        #expect(errors.isEmpty, "errors: \(errors.prefix(3).map(\.answer))")
        #expect(waited.isEmpty, "\(waited.count) reads waited for a fill at expiry")
        #expect(Double(refreshes) >= loadSeconds / ttl / 2 && Double(refreshes) <= loadSeconds / ttl * 2.5, "\(refreshes) refreshes in \(loadSeconds) s")
        #expect(early > 0)
        #expect(early == refreshes, "every call after the first was an early refresh: earlyRefreshes \(early), calls \(refreshes)")
        #expect(seen.count >= 5, "the value changed with the refreshes: \(seen.sorted())")
        for (i, r) in all.current.enumerated() {
            let numbers = r.compactMap(\.number)
            #expect(numbers == numbers.sorted(), "reader \(i) saw a value go back")
        }
    }

    // MARK: - Configuration

    static func checkConfig(_ text: String) throws -> (status: Int32, output: String) {
        let dir = try makeTemporaryDirectory("check")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try text.write(toFile: dir + "/cached.toml", atomically: true, encoding: .utf8)
        let process = try ChildProcess(
            DaemonProcess.binary, ["--check-config", "--config", dir + "/cached.toml", "--redis", "redis://127.0.0.1:6379/0"],
            outputPath: dir + "/out")
        let status = process.wait()
        return (status, (try? String(contentsOfFile: dir + "/out", encoding: .utf8)) ?? "")
    }

    @Test func checkConfigRefusesStaleTTLWithoutHandlerOrTTLAndANegativeBeta() throws {
        let valid = try Self.checkConfig(Self.studentKey(ttl: 2, extra: "stale_ttl = 5\ngrace = 3\nearly_refresh_beta = 1.0\nfleet_single_flight = true"))
        #expect(valid.status == 0 && valid.output.contains("configuration OK"), "a valid configuration: \(valid)")
        let noHandler = try Self.checkConfig(Self.studentKey(ttl: 2, handler: false, extra: "stale_ttl = 5"))
        #expect(noHandler.status != 0)
        #expect(noHandler.output.contains("stale_ttl") && noHandler.output.contains("handler"), "stale_ttl without a handler: \(noHandler.output)")
        for ttl: Double? in [nil, 0] {
            let noTTL = try Self.checkConfig(Self.studentKey(ttl: ttl, extra: "stale_ttl = 5"))
            #expect(noTTL.status != 0)
            let rest = noTTL.output.replacingOccurrences(of: "stale_ttl", with: "")
            #expect(noTTL.output.contains("stale_ttl") && rest.contains("ttl"), "stale_ttl with ttl \(ttl.map { "\($0)" } ?? "absent"): \(noTTL.output)")
        }
        let negative = try Self.checkConfig(Self.studentKey(ttl: 2, extra: "early_refresh_beta = -1.0"))
        #expect(negative.status != 0)
        #expect(negative.output.contains("early_refresh_beta"), "a negative early_refresh_beta: \(negative.output)")
        print("check-config messages:\n  \(noHandler.output.trimmingCharacters(in: .whitespacesAndNewlines))\n  \(negative.output.trimmingCharacters(in: .whitespacesAndNewlines))")
    }
}
