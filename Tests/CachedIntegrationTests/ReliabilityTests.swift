import CachedProtocol
import CachedTestSupport
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite("Reliability: hostile input and limits", .serialized)
struct HostileInputTests {
    func code(_ answer: JSONValue) -> Int? { answer["error"]?["code"]?.intValue }

    @Test func badInputGetsTheRightErrorFastAndWritesNothing() throws {
        let f = try Fixture(.redisUnix, config: "[limits]\nmax_line_bytes = 65536\n")
        let redis = try #require(f.redis)
        let c = try f.daemon.client()
        var cases: [([UInt8], Int)] = [
            (Array(#"{"jsonrpc":"2.0","id":1,"method":"set","params":{"key":"Stu"#.utf8) + [0xC3, 0x28] + Array(#"dent","identity":1,"value":"x"}}"#.utf8), -32700),
            (Array(#"{"jsonrpc":"2.0","id":2,"method":"set","params":{"key":"Student","identity":1,"value":"\udfff"}}"#.utf8), -32700),
            (Array(#"{"jsonrpc":"2.0","id":3,"method":"set","params":{"key":"Stu\u0000dent","identity":1,"value":"x"}}"#.utf8), -32602),
            (Array(#"{"jsonrpc":"2.0","id":4,"method":"set","params":{"key":"Student","identity":1e999999,"value":"x"}}"#.utf8), -32602),
            (Array(#"{"jsonrpc":"2.0","id":5,"method":"set","params":{"key":"Student","identity":1,"value":"x","ttl":1e999999}}"#.utf8), -32602),
            (Array(#"{"jsonrpc":"2.0","id":6,"method":"set","params":{"key":"Student","identity":1,"value":"x","ttl":-0.5}}"#.utf8), -32602),
            (Array(String(repeating: "[", count: 10_000).utf8), -32001),
            (Array(String(repeating: "{\"a\":", count: 5_000).utf8), -32001),
        ]
        // Wrong types in every parameter of set.
        let good: [String: JSONValue] = ["key": .string("Student"), "identity": .number("1"), "value": .string("x"), "ttl": .number("1"), "hashKey": .string("Class"), "hashId": .number("2"), "encoding": .string("utf8"), "lease": .string("t"), "args": .array([]), "kwargs": .object([:])]
        for (name, wrong) in [("key", JSONValue.number("1")), ("identity", .bool(true)), ("value", .number("1")), ("ttl", .string("1")), ("hashKey", .array([])), ("hashId", .object([:])), ("encoding", .string("rot13")), ("lease", .number("1")), ("args", .object([:])), ("kwargs", .array([]))] {
            var params = good
            params[name] = wrong
            cases.append((Array(requestLine(id: .string(name), method: "set", params: params).utf8), -32602))
        }
        for (line, expected) in cases {
            let started = Date()
            try c.send(line + [0x0A])
            let answer = try c.readJSON()
            #expect(code(answer) == expected, "\(String(decoding: line.prefix(70), as: UTF8.self)) -> \(answer)")
            #expect(Date().timeIntervalSince(started) < 0.5)
        }
        #expect(try c.call("ping")["result"] == .string("pong"))
        #expect(try redis.cli(["DBSIZE"]) == "0")
    }

    @Test func overLongLinesDoNotGrowMemoryAndDoNotDisturbOthers() throws {
        let daemon = try DaemonProcess(config: "[limits]\nmax_line_bytes = 1048576\n")
        let other = try daemon.client()
        let junk = [UInt8](repeating: UInt8(ascii: "x"), count: 1_048_577)
        // Warm up once, then measure over 30 attempts.
        let first = try daemon.client()
        try? first.send(junk)
        _ = first.isClosedByPeer()
        let before = residentKiB(pid: daemon.pid)
        for _ in 0..<30 {
            let c = try daemon.client()
            try? c.send(junk)
            let answer = try c.readJSON()
            #expect(code(answer) == -32001)
            #expect(c.isClosedByPeer())
        }
        let after = residentKiB(pid: daemon.pid)
        print("RSS before/after 30 over-long lines: \(before) KiB / \(after) KiB")
        #expect(after - before < 16 * 1024)
        #expect(try other.call("ping")["result"] == .string("pong"))
    }

    @Test func tricklingAndIdleClientsAreClosedWhileOthersAreServed() throws {
        raiseFileLimit(to: 4096)
        let daemon = try DaemonProcess(config: "[limits]\nline_timeout = 2.0\nidle_timeout = 3.0\n")
        let baseline = openFileCount(pid: daemon.pid)
        let tricklers = try (0..<1000).map { _ in try daemon.client() }
        let idle = try (0..<50).map { _ in try daemon.client() }
        let started = Date()
        // One byte every 0.5 s: always "active", but never completing a line.
        var closed = Set<Int>()
        var round = 0
        while closed.count < tricklers.count && Date().timeIntervalSince(started) < 8 {
            for (i, t) in tricklers.enumerated() where !closed.contains(i) {
                if (try? t.send("{")) == nil { closed.insert(i) }
            }
            // A fresh client is served normally meanwhile.
            let fresh = try daemon.client()
            #expect(try fresh.call("ping", timeout: 2)["result"] == .string("pong"))
            Thread.sleep(forTimeInterval: 0.5)
            round += 1
        }
        let elapsed = Date().timeIntervalSince(started)
        for t in tricklers {
            let answer = try? t.readJSON(timeout: 1)
            if let answer { #expect(code(answer) == -32001) }
        }
        #expect(tricklers.allSatisfy { $0.isClosedByPeer(timeout: 2) })
        #expect(idle.allSatisfy { $0.isClosedByPeer(timeout: 3) })
        print("1000 trickling connections closed after \(String(format: "%.1f", elapsed)) s (line_timeout 2 s)")
        #expect(try waitUntil(timeout: 5) { openFileCount(pid: daemon.pid) <= baseline + 2 })
    }

    @Test func tenThousandPipelinedRequestsInOneWrite() throws {
        let daemon = try DaemonProcess()
        let c = try daemon.client()
        var payload = ""
        for i in 0..<10_000 {
            payload += requestLine(id: .number(String(i)), method: "ping") + "\n"
        }
        try c.send(payload)
        var seen = Set<Int>()
        for _ in 0..<10_000 {
            let answer = try c.readJSON()
            let id = try #require(answer["id"]?.intValue)
            #expect(answer["result"] == .string("pong"))
            #expect(seen.insert(id).inserted)
        }
        #expect(seen.count == 10_000)
    }

    @Test func aClientThatNeverReadsIsDisconnectedPastTheOutputBound() throws {
        let daemon = try DaemonProcess(config: "[limits]\nmax_output_bytes = 262144\n")
        let writer = try daemon.client()
        let big = String(repeating: "v", count: 60_000)
        _ = try writer.call("set", ["key": .string("Blob"), "identity": .number("1"), "value": .string(big)])
        let other = try daemon.client()
        let greedy = try daemon.client()
        // 2000 gets of a 60 KB value = 120 MB of answers it never reads.
        let line = requestLine(id: .number("1"), method: "get", params: ["key": .string("Blob"), "identity": .number("1")]) + "\n"
        for _ in 0..<2000 {
            if (try? greedy.send(line)) == nil { break }
        }
        #expect(try waitUntil(timeout: 10) { daemon.log().contains("passed the output limit") })
        #expect(try other.call("ping")["result"] == .string("pong"))
        #expect(residentKiB(pid: daemon.pid) < 200 * 1024)
    }

    @Test func tenThousandConcurrentClientsUnderTheLimitAreAllServed() throws {
        let limit = raiseFileLimit(to: 12_000)
        try #require(limit >= 10_100, "open-file limit \(limit) is too low for 10,000 clients")
        let daemon = try DaemonProcess(config: "[limits]\nmax_connections = 10050\n")
        var clients: [LineClient] = []
        clients.reserveCapacity(10_000)
        for _ in 0..<10_000 { clients.append(try daemon.client()) }
        for (i, c) in clients.enumerated() { try c.send(requestLine(id: .number(String(i)), method: "ping") + "\n") }
        var served = 0
        for (i, c) in clients.enumerated() {
            // Generous: on a loaded 2-core machine 10,000 answers can take a while; a lost answer still fails.
            let answer: JSONValue
            do {
                answer = try c.readJSON(timeout: 30)
            } catch {
                let stats = try? daemon.client().call("stats")["result"]?["connections"]
                Issue.record("client \(i) got no answer (\(error)); daemon connections \(String(describing: stats)); log tail: \(daemon.log().suffix(1500))")
                throw error
            }
            if answer["id"] == .number(String(i)), answer["result"] == .string("pong") { served += 1 }
        }
        #expect(served == 10_000)
        print("10,000 concurrent clients served; daemon RSS \(residentKiB(pid: daemon.pid) / 1024) MiB")
    }
}

@Suite("Reliability: Redis faults", .serialized)
struct RedisFaultTests {
    static let entry: [String: JSONValue] = ["key": .string("Student"), "identity": .number("1")]

    /// Runs `clients` threads doing gets until `stop` is set; records each call's latency and outcome.
    final class Load: @unchecked Sendable {
        let stop = Locked(false)
        let results = Locked<[(Date, Double, Int?)]>([])  // (when, seconds, error code or nil)
        let wrongIDs = Locked(0)
        let hangs = Locked(0)
        let done = DispatchGroup()

        /// `writes`: sets (which always reach Redis) instead of gets (which the local cache may answer).
        func start(_ daemon: DaemonProcess, clients: Int, writes: Bool = false) {
            for i in 0..<clients {
                done.enter()
                Thread {
                    defer { self.done.leave() }
                    guard let c = try? daemon.client() else { return }
                    var n = 0
                    while !self.stop.current {
                        n += 1
                        let started = Date()
                        do {
                            let params = writes ? RedisFaultTests.entry.merging(["value": .string("v\(n)")]) { $1 } : RedisFaultTests.entry
                            try c.send(requestLine(id: .number(String(i * 1_000_000 + n)), method: writes ? "set" : "get", params: params) + "\n")
                            let answer = try c.readJSON(timeout: 3)
                            if answer["id"] != .number(String(i * 1_000_000 + n)) { self.wrongIDs.withLock { $0 += 1 } }
                            let code = answer["error"]?["code"]?.intValue
                            self.results.withLock { $0.append((Date(), Date().timeIntervalSince(started), code)) }
                        } catch {
                            self.hangs.withLock { $0 += 1 }
                            return
                        }
                        Thread.sleep(forTimeInterval: 0.005)
                    }
                }.start()
            }
        }

        func finish() {
            stop.withLock { $0 = true }
            done.wait()
        }
    }

    @Test func kill9DuringLoadEveryRequestIsAnsweredAndHitsResume() throws {
        let redis = try RedisServer()
        let daemon = try DaemonProcess(arguments: ["--redis", redis.unixURL])
        _ = try daemon.client().call("set", Self.entry.merging(["value": .string("v")]) { $1 })
        let load = Load()
        load.start(daemon, clients: 8)
        Thread.sleep(forTimeInterval: 0.5)
        redis.stop(signal: SIGKILL)
        let killedAt = Date()
        Thread.sleep(forTimeInterval: 1.0)
        try redis.start()
        let restartedAt = Date()
        try redis.cli(["SET", "000STUDENT#0000000001", "v"])
        Thread.sleep(forTimeInterval: 2.5)
        load.finish()
        let results = load.results.current
        #expect(load.hangs.current == 0)
        #expect(load.wrongIDs.current == 0)
        #expect(results.allSatisfy { $0.1 < 1.0 })
        let outage = results.filter { $0.0 > killedAt && $0.0 < restartedAt }
        #expect(outage.contains { $0.2 == -32000 })
        // Commands in flight when Redis died have an unknown outcome (-32002); later ones fail fast (-32000).
        #expect(outage.allSatisfy { $0.2 == nil || $0.2 == -32000 || $0.2 == -32002 })
        // Within 2 s of Redis returning, hits resume and no stale-connection errors follow.
        let after = results.filter { $0.0 > restartedAt.addingTimeInterval(2.0) }
        #expect(!after.isEmpty)
        #expect(after.allSatisfy { $0.2 == nil })
        let firstHit = results.first { $0.0 > restartedAt && $0.2 == nil }.map { $0.0.timeIntervalSince(restartedAt) }
        print("kill -9: \(results.count) answers, max latency \(String(format: "%.0f", (results.map(\.1).max() ?? 0) * 1000)) ms; hits resumed \(String(format: "%.0f", (firstHit ?? -1) * 1000)) ms after restart")
    }

    @Test func hungRedisFailsAtTheCommandTimeoutAndRecovers() throws {
        let redis = try RedisServer()
        let daemon = try DaemonProcess(config: "[redis_options]\ncommand_timeout = 0.3\n", arguments: ["--redis", redis.unixURL])
        _ = try daemon.client().call("set", Self.entry.merging(["value": .string("v")]) { $1 })
        // Hits keep coming from the local cache while Redis hangs (correctly: nothing can change meanwhile),
        // so load Redis with writes.
        let hits = try daemon.client()
        #expect(try hits.call("get", Self.entry)["result"]?["hit"] == .bool(true))
        let load = Load()
        load.start(daemon, clients: 8, writes: true)
        Thread.sleep(forTimeInterval: 0.3)
        redis.send(signal: SIGSTOP)
        let stoppedAt = Date()
        Thread.sleep(forTimeInterval: 1.5)
        redis.send(signal: SIGCONT)
        let resumedAt = Date()
        Thread.sleep(forTimeInterval: 2.5)
        load.finish()
        let results = load.results.current
        #expect(load.hangs.current == 0)
        #expect(load.wrongIDs.current == 0)
        let during = results.filter { $0.0 > stoppedAt.addingTimeInterval(0.5) && $0.0 < resumedAt }
        #expect(during.contains { $0.2 == -32002 || $0.2 == -32000 })
        #expect(results.allSatisfy { $0.1 < 1.5 })
        #expect(results.filter { $0.0 > resumedAt.addingTimeInterval(1.5) }.allSatisfy { $0.2 == nil })
    }

    @Test func hitsAreServedLocallyWhileRedisHangs() throws {
        let redis = try RedisServer()
        let daemon = try DaemonProcess(config: "[redis_options]\ncommand_timeout = 0.3\n", arguments: ["--redis", redis.unixURL])
        let c = try daemon.client()
        _ = try c.call("set", Self.entry.merging(["value": .string("v")]) { $1 })
        #expect(try c.call("get", Self.entry)["result"]?["value"] == .string("v"))
        redis.send(signal: SIGSTOP)
        defer { redis.send(signal: SIGCONT) }
        let started = Date()
        for _ in 0..<100 {
            #expect(try c.call("get", Self.entry, timeout: 2)["result"]?["value"] == .string("v"))
        }
        #expect(Date().timeIntervalSince(started) < 1)
    }

    @Test func redisErrorRepliesAreMappedToDocumentedErrors() throws {
        let redis = try RedisServer()
        let daemon = try DaemonProcess(arguments: ["--redis", redis.unixURL])
        let c = try daemon.client()
        // OOM: no memory for writes.
        try redis.cli(["CONFIG", "SET", "maxmemory-policy", "noeviction"])
        try redis.cli(["CONFIG", "SET", "maxmemory", "1"])
        let oom = try c.call("set", Self.entry.merging(["value": .string("v")]) { $1 })
        #expect(oom["error"]?["code"]?.intValue == -32003)
        #expect(oom["error"]?["data"]?["redis"] == .string("OOM"))
        try redis.cli(["CONFIG", "SET", "maxmemory", "0"])
        // READONLY: a replica refuses writes (its master does not exist; reads still work).
        try redis.cli(["REPLICAOF", "127.0.0.1", "1"])
        let readonly = try c.call("set", Self.entry.merging(["value": .string("v")]) { $1 })
        #expect(readonly["error"]?["code"]?.intValue == -32003)
        #expect(readonly["error"]?["data"]?["redis"] == .string("READONLY"))
        #expect(try c.call("get", Self.entry)["result"]?["hit"] == .bool(false))
        try redis.cli(["REPLICAOF", "NO", "ONE"])
        // NOAUTH: a password set while cached runs; new connections are refused until it is configured.
        try redis.cli(["CONFIG", "SET", "requirepass", "now-secret"])
        try redis.cli(["-a", "now-secret", "--no-auth-warning", "CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"])
        #expect(try waitUntil(timeout: 5) { (try? c.call("get", Self.entry))?["error"]?["code"]?.intValue == -32000 })
        #expect(try waitUntil(timeout: 3) { daemon.log().contains("NOAUTH") })
        #expect(try c.call("ping")["result"] == .string("pong"))
    }
}
