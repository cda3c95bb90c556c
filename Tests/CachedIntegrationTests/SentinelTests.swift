import CachedProtocol
import CachedTestSupport
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// `redis-sentinel://`: one master, one replica and three real Sentinels; the daemon follows failovers.
@Suite("Redis behind Sentinel", .serialized)
struct SentinelTests {
    static let entry = params(["key": .string("Student"), "identity": int(1)])
    static let other = params(["key": .string("Student"), "identity": int(2)])
    static let config = "[redis_options]\ncommand_timeout = 1\nconnect_timeout = 0.5\ntopology_refresh_interval = 2\n"

    /// A Sentinel group and a daemon following it, up: the group, the daemon, a client, master and replica.
    func started() throws -> (SentinelGroup, DaemonProcess, LineClient, RedisServer, RedisServer) {
        let group = try SentinelGroup()
        let daemon = try DaemonProcess(config: Self.config, arguments: ["--redis", group.url])
        let c = try daemon.client()
        let master = try #require(group.master())
        let replica = try #require(group.nodes.first { $0 !== master })
        #expect(try waitUntil(timeout: 5) { (try? c.call("stats"))?["result"]?["store"]?["available"] == .bool(true) })
        return (group, daemon, c, master, replica)
    }

    func topology(_ c: LineClient) throws -> JSONValue? {
        try c.call("stats")["result"]?["store"]?["topology"]
    }

    @Test func resolvesTheMasterThroughTheSentinelsAndShowsTheTopology() throws {
        let group = try SentinelGroup()
        let daemon = try DaemonProcess(config: Self.config, arguments: ["--redis", group.url])
        let c = try daemon.client()
        let master = try #require(group.master())
        #expect(try waitUntil(timeout: 5) { (try? c.call("stats"))?["result"]?["store"]?["available"] == .bool(true) })
        let topology = try self.topology(c)
        #expect(topology?["kind"] == .string("sentinel"))
        #expect(topology?["masterName"] == .string("mymaster"))
        #expect(topology?["nodes"]?[0]?["address"] == .string("127.0.0.1:\(master.servicePort!)"))
        #expect(topology?["nodes"]?[0]?["role"] == .string("master"))
        #expect(try waitUntil(timeout: 5) {
            guard case .array(let sentinels)? = try self.topology(c)?["sentinels"] else { return false }
            return sentinels.count == 3 && sentinels.allSatisfy { $0["reachable"] == .bool(true) }
        })
        #expect(topology?["switches"] == int(0))
        // Entries land on the master, the local copy works and a direct write invalidates it.
        #expect(try c.call("set", Self.entry.merging(["value": .string("one")]) { $1 })["result"]?["stored"] == .bool(true))
        #expect(try master.cli(["GET", "000STUDENT#0000000001"]) == "one")
        #expect(try c.call("get", Self.entry)["result"]?["value"] == .string("one"))
        #expect(try c.call("get", Self.entry)["result"]?["value"] == .string("one"))
        #expect((try c.call("stats")["result"]?["store"]?["localCache"]?["hits"]?.intValue ?? 0) >= 1)
        try master.cli(["SET", "000STUDENT#0000000001", "two"])
        #expect(try waitUntil(timeout: 2, interval: 0.005) { try c.call("get", Self.entry)["result"]?["value"] == .string("two") })
    }

    /// `kill -9` of the master under a steady load: every request is answered within the command timeout
    /// (a result, -32000 while no master is up, or -32002 for a command in flight when the master died),
    /// the daemon serves from the new master within one second of the promotion, and nothing read from
    /// the old master is served afterwards.
    @Test func followsAFailoverAfterTheMasterIsKilled() throws {
        let (group, daemon, c, oldMaster, replica) = try started()
        // An entry read through the daemon (kept in its local copy) before the failover.
        try oldMaster.cli(["SET", "000STUDENT#0000000002", "before"])
        _ = try oldMaster.cli(["WAIT", "1", "1000"])
        #expect(try c.call("get", Self.other)["result"]?["value"] == .string("before"))
        #expect(try c.call("get", Self.other)["result"]?["value"] == .string("before"))

        let load = try LoadThread(daemon: daemon, entry: Self.entry)
        #expect(try waitUntil(timeout: 5) { load.successes >= 20 })
        let killedAt = Date()
        oldMaster.stop(signal: SIGKILL)
        #expect(try waitUntil(timeout: 20, interval: 0.02) { group.masterPort() == replica.port })
        let promotedAt = Date()
        #expect(try waitUntil(timeout: 5, interval: 0.01) { load.firstSuccess(sentAfter: killedAt) != nil })
        Thread.sleep(forTimeInterval: 0.5)
        let records = load.stop()
        let first = try #require(load.firstSuccess(sentAfter: killedAt))
        let promotion = promotedAt.timeIntervalSince(killedAt)
        let served = first.timeIntervalSince(killedAt)
        print("sentinel failover: kill -> promotion seen \(Int(promotion * 1000)) ms, kill -> first answer from the new master \(Int(served * 1000)) ms")
        #expect(served <= promotion + 1.0, "served from the new master \(served - promotion) s after the promotion")
        // Every request was answered, in time, with a result or a documented error.
        for record in records {
            #expect(record.latency <= 1.6, "\(record)")
            #expect(record.code == nil || record.code == -32000 || record.code == -32002, "\(record)")
        }
        #expect(records.contains { $0.code != nil }, "the kill was seen by some request")
        // The new master holds what the daemon acknowledged last.
        let last = try #require(records.last { $0.code == nil && $0.method == "set" })
        #expect(try replica.cli(["GET", "000STUDENT#0000000001"]) == last.value)
        // Nothing read from the old master is served: a direct write on the new master is seen at once.
        try replica.cli(["SET", "000STUDENT#0000000002", "after"])
        #expect(try waitUntil(timeout: 2, interval: 0.005) { try c.call("get", Self.other)["result"]?["value"] == .string("after") })
        let topology = try self.topology(c)
        #expect(topology?["switches"] == int(1))
        #expect(topology?["lastSwitch"]?["to"] == .string("127.0.0.1:\(replica.servicePort!)"))
        #expect(topology?["nodes"]?[0]?["address"] == .string("127.0.0.1:\(replica.servicePort!)"))
        #expect((try c.call("stats")["result"]?["store"]?["localCache"]?["nodesRemoved"]?.intValue ?? 0) == 1)
    }

    /// `SENTINEL FAILOVER`: the old master stays up and becomes a replica; the daemon follows the
    /// `+switch-master` announcement and writes go on to the new master.
    @Test func followsAManualFailoverWhileTheOldMasterStaysUp() throws {
        let (group, daemon, c, oldMaster, replica) = try started()
        #expect(try c.call("set", Self.entry.merging(["value": .string("one")]) { $1 })["result"]?["stored"] == .bool(true))
        #expect(try c.call("get", Self.entry)["result"]?["value"] == .string("one"))
        _ = try group.sentinelCLI(port: group.sentinelPorts[0], ["SENTINEL", "FAILOVER", "mymaster"])
        #expect(try waitUntil(timeout: 15, interval: 0.05) {
            try self.topology(c)?["nodes"]?[0]?["address"] == .string("127.0.0.1:\(replica.servicePort!)")
        }, "\(daemon.log().suffix(2000))")
        #expect(try waitUntil(timeout: 5, interval: 0.05) {
            try c.call("set", Self.entry.merging(["value": .string("two")]) { $1 })["result"]?["stored"] == .bool(true)
        })
        #expect(try replica.cli(["GET", "000STUDENT#0000000001"]) == "two")
        #expect(try c.call("get", Self.entry)["result"]?["value"] == .string("two"))
        // Sentinel turns the old master into a replica of the new one once it sees the old master report
        // itself master in INFO, which Sentinel asks of a master every 10 s: up to 10 s and more (a 10 s wait
        // failed here now and then).
        #expect(try waitUntil(timeout: 25, interval: 0.1) { try oldMaster.cli(["ROLE"]).hasPrefix("slave") })
    }

    /// `rediss-sentinel://`: TLS to the Sentinels and to the data nodes (replication over TLS too), and a
    /// failover followed over TLS.
    @Test func tlsToTheSentinelsAndTheDataNodes() throws {
        let certs = try TestCertificates()
        let group = try SentinelGroup(tls: certs)
        let master = try #require(group.master())
        let replica = try #require(group.nodes.first { $0 !== master })
        let daemon = try DaemonProcess(config: Self.config + "tls_ca_file = \"\(certs.caCertificate)\"\n", arguments: ["--redis", group.url])
        let c = try daemon.client()
        #expect(try waitUntil(timeout: 5) { (try? c.call("stats"))?["result"]?["store"]?["available"] == .bool(true) }, "\(daemon.log().suffix(1500))")
        #expect(try c.call("set", Self.entry.merging(["value": .string("tls")]) { $1 })["result"]?["stored"] == .bool(true))
        #expect(try master.cli(["GET", "000STUDENT#0000000001"]) == "tls")
        #expect(try self.topology(c)?["url"] == nil)  // the URL is under store.url
        #expect(try c.call("stats")["result"]?["store"]?["url"]?.stringValue?.hasPrefix("rediss-sentinel://") == true)
        master.stop(signal: SIGKILL)
        #expect(try waitUntil(timeout: 20, interval: 0.05) {
            try c.call("set", Self.entry.merging(["value": .string("after")]) { $1 })["result"]?["stored"] == .bool(true)
        }, "\(daemon.log().suffix(1500))")
        #expect(try replica.cli(["GET", "000STUDENT#0000000001"]) == "after")
    }

    /// The URL's credentials and database are the data nodes'; `sentinel_password` is the Sentinels'.
    @Test func credentialsDatabaseAndSentinelPassword() throws {
        let group = try SentinelGroup(password: "data-pw", sentinelPassword: "sentinel-pw")
        let master = try #require(group.master())
        let url = group.url(credentials: ":data-pw@", database: 3)
        let daemon = try DaemonProcess(config: Self.config + "sentinel_password = \"sentinel-pw\"\n", arguments: ["--redis", url])
        let c = try daemon.client()
        #expect(try waitUntil(timeout: 5) { (try? c.call("stats"))?["result"]?["store"]?["available"] == .bool(true) })
        #expect(try c.call("set", Self.entry.merging(["value": .string("db3")]) { $1 })["result"]?["stored"] == .bool(true))
        #expect(try master.cli(["-n", "3", "GET", "000STUDENT#0000000001"]) == "db3")
        #expect(try master.cli(["-n", "0", "EXISTS", "000STUDENT#0000000001"]) == "0")
        // Without the Sentinels' password no master is found: degraded, and the log says why.
        let refused = try DaemonProcess(config: Self.config, arguments: ["--redis", url])
        #expect(try refused.client().call("get", Self.entry)["error"]?["code"] == int(-32000))
        #expect(try waitUntil(timeout: 5) { refused.log().contains("NOAUTH") || refused.log().contains("AUTH") })
    }

    /// No Sentinel reachable: the daemon starts degraded and answers -32000 at once, then finds the master
    /// when a Sentinel is back.
    @Test func startsDegradedWhenNoSentinelAnswers() throws {
        let port = RedisServer.freePort()
        let daemon = try DaemonProcess(config: Self.config, arguments: ["--redis", "redis-sentinel://127.0.0.1:\(port)/mymaster"])
        let c = try daemon.client()
        let started = Date()
        #expect(try c.call("get", Self.entry)["error"]?["code"] == int(-32000))
        #expect(Date().timeIntervalSince(started) < 0.5)
        #expect(try waitUntil(timeout: 5) { daemon.log().contains("cannot resolve the Redis master through Sentinel") })
        #expect(try c.call("stats")["result"]?["store"]?["topology"]?["sentinels"]?[0]?["reachable"] == JSONValue.bool(false))
    }
}

/// A client that writes then reads one entry in a loop through the daemon and records every answer.
final class LoadThread: @unchecked Sendable {
    struct Record: CustomStringConvertible {
        var method: String
        var sentAt: Date
        var latency: Double
        var code: Int?
        var value: String?
        var description: String { "\(method) at \(sentAt.timeIntervalSince1970) took \(latency) s: \(code.map { "error \($0)" } ?? value ?? "ok")" }
    }

    private let lock = NSLock()
    private var records: [Record] = []
    private var stopped = false
    private let done = DispatchSemaphore(value: 0)

    init(daemon: DaemonProcess, entry: [String: JSONValue]) throws {
        let client = try daemon.client()
        Thread.detachNewThread { [self] in
            var i = 0
            while !lock.withLock({ stopped }) {
                i += 1
                let value = "v\(i)"
                for method in ["set", "get"] {
                    let params = method == "set" ? entry.merging(["value": .string(value)]) { $1 } : entry
                    let sentAt = Date()
                    let answer = try? client.call(method, params, timeout: 5)
                    let latency = Date().timeIntervalSince(sentAt)
                    let code = answer == nil ? -1 : answer?["error"]?["code"]?.intValue
                    let got: String? = method == "set" ? value : {
                        if case .string(let s)? = answer?["result"]?["value"] { return s } else { return nil }
                    }()
                    lock.withLock { records.append(Record(method: method, sentAt: sentAt, latency: latency, code: code, value: got)) }
                }
                usleep(2000)
            }
            done.signal()
        }
    }

    var successes: Int { lock.withLock { records.filter { $0.code == nil }.count } }

    /// The value of the last `set` that was acknowledged.
    var lastWritten: String? { lock.withLock { records.last { $0.code == nil && $0.method == "set" }?.value } }

    /// When the first successful answer to a request sent after `date` came.
    func firstSuccess(sentAfter date: Date) -> Date? {
        lock.withLock {
            records.first { $0.code == nil && $0.sentAt > date }.map { $0.sentAt.addingTimeInterval($0.latency) }
        }
    }

    func stop() -> [Record] {
        lock.withLock { stopped = true }
        done.wait()
        return lock.withLock { records }
    }
}
