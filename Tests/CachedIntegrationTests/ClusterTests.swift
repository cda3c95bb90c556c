import CachedProtocol
import CachedTestSupport
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// `redis-cluster://`: three primaries and three replicas; entries go to their slot's primary, and the
/// daemon follows resharding and failover by itself.
@Suite("Redis Cluster", .serialized)
struct ClusterTests {
    static let config = "[redis_options]\ncommand_timeout = 1\nconnect_timeout = 0.5\n"

    static func entry(_ identity: Int) -> [String: JSONValue] {
        params(["key": .string("Student"), "identity": int(identity)])
    }

    static func redisKey(_ identity: Int) -> String { String(format: "000STUDENT#%010d", identity) }

    func started() throws -> (ClusterGroup, DaemonProcess, LineClient) {
        let group = try ClusterGroup()
        let daemon = try DaemonProcess(config: Self.config, arguments: ["--redis", group.url])
        let c = try daemon.client()
        #expect(try waitUntil(timeout: 10) { (try? c.call("stats"))?["result"]?["store"]?["available"] == .bool(true) })
        return (group, daemon, c)
    }

    func topology(_ c: LineClient) throws -> JSONValue? {
        try c.call("stats")["result"]?["store"]?["topology"]
    }

    /// A direct `GET` on `node`, without following redirects.
    func directGet(_ node: RedisServer, _ key: String) throws -> String {
        node.followRedirects = false
        defer { node.followRedirects = true }
        return try node.cli(["GET", key])
    }

    @Test func entriesLandOnTheNodeThatOwnsTheirSlot() throws {
        let (group, daemon, c) = try started()
        defer { withExtendedLifetime(daemon) {} }
        let topology = try self.topology(c)
        #expect(topology?["kind"] == .string("cluster"))
        guard case .array(let nodes)? = topology?["nodes"] else { Issue.record("no nodes"); return }
        #expect(nodes.count == 3)
        #expect(nodes.reduce(0) { $0 + ($1["slots"]?.intValue ?? 0) } == 16384)
        #expect(topology?["unownedSlots"] == int(0))
        var owners: Set<Int> = []
        for identity in 0..<30 {
            #expect(try c.call("set", Self.entry(identity).merging(["value": .string("v\(identity)")]) { $1 })["result"]?["stored"] == .bool(true))
            let owner = try #require(try group.owner(of: Self.redisKey(identity)))
            owners.insert(owner.port!)
            #expect(try directGet(owner, Self.redisKey(identity)) == "v\(identity)")
            #expect(try c.call("get", Self.entry(identity))["result"]?["value"] == .string("v\(identity)"))
        }
        #expect(owners.count == 3, "30 names spread over the three primaries")
        // A hash entry goes by its hash's name.
        let hashed = Self.entry(1).merging(["hashKey": .string("Class"), "hashId": int(3), "value": .string("h")]) { $1 }
        #expect(try c.call("set", hashed)["result"]?["stored"] == .bool(true))
        let hashOwner = try #require(try group.owner(of: "00000CLASS#0000000003"))
        hashOwner.followRedirects = false
        #expect(try hashOwner.cli(["HGET", "00000CLASS#0000000003", Self.redisKey(1)]) == "h")
        hashOwner.followRedirects = true
        // Local copies per node, invalidated by a direct write on the owner.
        #expect(try c.call("get", Self.entry(5))["result"]?["value"] == .string("v5"))
        try group.nodes[0].cli(["SET", Self.redisKey(5), "changed"])
        #expect(try waitUntil(timeout: 2, interval: 0.005) { try c.call("get", Self.entry(5))["result"]?["value"] == .string("changed") })
        #expect((try c.call("stats")["result"]?["store"]?["localCache"]?["hits"]?.intValue ?? 0) >= 1)
    }

    /// Issue 15 on a cluster: two daemons, cold stampedes on entries of all three primaries cost one
    /// handler call each (the fill lock's metadata key shares its entry's slot, so the scripts run on the
    /// entry's primary), and a stale window works there too.
    @Test func oneFillPerEntryAcrossDaemonsAndStaleAnswers() throws {
        raiseFileLimit(to: 4096)
        let group = try ClusterGroup()
        let dir = try makeTemporaryDirectory("fleet-cluster")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let counter = dir + "/calls"
        let config = Self.config + FillWorker.config(workers: 2, delay: 0.3, counter: counter)
            + FillWorker.config(key: "Aged", workers: 1, delay: 0.4, extra: "ttl = 1\nstale_ttl = 30")
                .replacingOccurrences(of: "ttl = 60\n", with: "")
        let daemons = try (0..<2).map { _ in try DaemonProcess(config: config, arguments: ["--redis", group.url]) }
        let probe = try daemons[0].client()
        #expect(try waitUntil(timeout: 10) { (try? probe.call("stats"))?["result"]?["store"]?["available"] == .bool(true) })
        // Three names on three different primaries.
        var identities: [Int] = []
        var owners: Set<Int> = []
        for identity in 0..<60 where identities.count < 3 {
            let owner = try #require(try group.owner(of: Self.redisKey(identity)))
            if owners.insert(owner.port!).inserted { identities.append(identity) }
        }
        #expect(identities.count == 3)
        var clients: [(LineClient, Int)] = []
        for identity in identities {
            for daemon in daemons {
                for _ in 0..<40 { clients.append((try daemon.client(), identity)) }
            }
        }
        for (i, (c, identity)) in clients.enumerated() {
            try c.send(requestLine(id: .number(String(i)), method: "get", params: Self.entry(identity)) + "\n")
        }
        for (c, identity) in clients {
            let answer = try c.readJSON(timeout: 15)
            #expect(answer["result"]?["value"] == .string("Student:\(identity):[]:{}"))
        }
        #expect(FillWorker.calls(counter) == 3, "one handler call per entry across both daemons")
        var won = 0
        for daemon in daemons {
            won += try daemon.client().call("stats")["result"]?["fleet"]?["locksWon"]?.intValue ?? 0
        }
        #expect(won == 3)
        // The locks ended with the fenced stores: no metadata key is left on any primary.
        for identity in identities {
            let owner = try #require(try group.owner(of: Self.redisKey(identity)))
            owner.followRedirects = false
            #expect(try owner.cli(["EXISTS", "cached:fill:{\(Self.redisKey(identity))}"]) == "0")
            owner.followRedirects = true
        }
        // Stale-while-revalidate on the cluster: past ttl, answered at once and marked stale.
        let aged: [String: JSONValue] = params(["key": .string("Aged"), "identity": int(identities[1])])
        #expect(try probe.call("get", aged)["result"]?["hit"] == .bool(false))
        Thread.sleep(forTimeInterval: 1.3)
        let started = Date()
        let stale = try probe.call("get", aged)
        #expect(Date().timeIntervalSince(started) < 0.3, "not the handler's 0.4 s")
        #expect(stale["result"]?["stale"] == .bool(true))
        #expect(try waitUntil(timeout: 5) { try probe.call("get", aged)["result"]?["stale"] == nil })
        withExtendedLifetime(daemons) {}
    }

    /// `rediss-cluster://`: TLS to every node (the cluster bus and replication over TLS too).
    @Test func tlsToEveryNode() throws {
        let certs = try TestCertificates()
        let group = try ClusterGroup(tls: certs)
        let daemon = try DaemonProcess(
            config: Self.config + "tls_ca_file = \"\(certs.caCertificate)\"\n", arguments: ["--redis", group.url])
        let c = try daemon.client()
        #expect(try waitUntil(timeout: 10) { (try? c.call("stats"))?["result"]?["store"]?["available"] == .bool(true) }, "\(daemon.log().suffix(1500))")
        #expect(try topology(c)?["unownedSlots"] == int(0))
        for identity in 0..<12 {
            #expect(try c.call("set", Self.entry(identity).merging(["value": .string("t\(identity)")]) { $1 })["result"]?["stored"] == .bool(true))
            let owner = try #require(try group.owner(of: Self.redisKey(identity)))
            #expect(try directGet(owner, Self.redisKey(identity)) == "t\(identity)")
            #expect(try c.call("get", Self.entry(identity))["result"]?["value"] == .string("t\(identity)"))
        }
    }

    /// `redis-cli --cluster reshard` of 1,500 slots, including the loaded entries', while clients write and
    /// read them: every request answered, no error, every value read is the last one written.
    @Test func followsAReshardUnderLoad() throws {
        let (group, daemon, c) = try started()
        // Entries whose slots are among the first 1,500 of their primary: the reshard moves them.
        let source = try #require(try group.owner(ofSlot: 0))
        let target = try #require(try group.owner(ofSlot: 16383))
        let moving = (0..<5000).filter { (try? group.slot(of: Self.redisKey($0))).map { $0 < 1500 } ?? false }.prefix(3)
        #expect(moving.count == 3)
        let loads = try moving.map { try LoadThread(daemon: daemon, entry: Self.entry($0)) }
        #expect(try waitUntil(timeout: 5) { loads.allSatisfy { $0.successes >= 20 } })
        let started = Date()
        _ = try ChildProcess.output(
            "/usr/bin/redis-cli",
            ["--cluster", "reshard", "127.0.0.1:\(source.port!)", "--cluster-from", try group.id(of: source),
             "--cluster-to", try group.id(of: target), "--cluster-slots", "1500", "--cluster-yes"])
        let took = Date().timeIntervalSince(started)
        Thread.sleep(forTimeInterval: 1.0)
        let records = loads.flatMap { $0.stop() }
        print("cluster reshard of 1500 slots took \(Int(took * 1000)) ms; \(records.count) requests meanwhile")
        for identity in moving {
            #expect(try group.owner(of: Self.redisKey(identity)) === target)
        }
        for record in records {
            #expect(record.code == nil, "\(record)")
            #expect(record.latency <= 1.6, "\(record)")
        }
        for (identity, load) in zip(moving, loads) {
            let last = try #require(load.lastWritten)
            #expect(try directGet(target, Self.redisKey(identity)) == last)
            #expect(try c.call("get", Self.entry(identity))["result"]?["value"] == .string(last))
        }
        let redirects = try topology(c)?["redirects"]
        #expect((redirects?["moved"]?.intValue ?? 0) + (redirects?["ask"]?.intValue ?? 0) >= 1, "\(String(describing: redirects))")
    }

    /// `kill -9` of a primary under load: its replica is promoted and the daemon serves the slot again
    /// within `cluster-node-timeout` plus 2 s; every request is answered in time.
    @Test func followsAFailoverUnderLoad() throws {
        let (group, daemon, c) = try started()
        let identity = 7
        let owner = try #require(try group.owner(of: Self.redisKey(identity)))
        let load = try LoadThread(daemon: daemon, entry: Self.entry(identity))
        #expect(try waitUntil(timeout: 5) { load.successes >= 20 })
        let killedAt = Date()
        owner.stop(signal: SIGKILL)
        let limit = Double(ClusterGroup.nodeTimeoutMilliseconds) / 1000 + 2
        // The promotion as the surviving nodes see it (their CLUSTER NODES names another primary).
        #expect(try waitUntil(timeout: 15, interval: 0.01) { (try? group.owner(of: Self.redisKey(identity))).map { $0 !== owner } ?? false })
        let promoted = Date().timeIntervalSince(killedAt)
        #expect(try waitUntil(timeout: 5, interval: 0.01) { load.firstSuccess(sentAfter: killedAt) != nil })
        Thread.sleep(forTimeInterval: 0.5)
        let records = load.stop()
        let first = try #require(load.firstSuccess(sentAfter: killedAt))
        let served = first.timeIntervalSince(killedAt)
        print(
            "cluster failover: kill -> promotion seen \(Int(promoted * 1000)) ms, kill -> first answer from the promoted replica "
                + "\(Int(served * 1000)) ms (node timeout \(ClusterGroup.nodeTimeoutMilliseconds) ms)")
        // Redis's own election (node timeout, then a rank-based delay of 0.5 to 1 s or more) can take longer
        // than node timeout + 2 s; the daemon's part is what follows the promotion.
        #expect(served <= max(limit, promoted + 1.0), "served again \(served) s after the kill, \(served - promoted) s after the promotion")
        for record in records {
            #expect(record.latency <= 1.6, "\(record)")
            #expect(record.code == nil || record.code == -32000 || record.code == -32002 || record.code == -32003, "\(record)")
        }
        let newOwner = try #require(try group.owner(of: Self.redisKey(identity)))
        #expect(newOwner !== owner)
        let last = try #require(records.last { $0.code == nil && $0.method == "set" })
        #expect(try directGet(newOwner, Self.redisKey(identity)) == last.value)
        #expect(try c.call("get", Self.entry(identity))["result"]?["value"] == .string(last.value ?? ""))
        #expect((try c.call("stats")["result"]?["store"]?["localCache"]?["nodesRemoved"]?.intValue ?? 0) >= 1)
    }
}
