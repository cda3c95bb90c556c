import CachedProtocol
import CachedTestSupport
import Foundation
import Testing

@Suite("Daemon: leases for keys without a handler", .serialized)
struct LeaseTests {
    static let entry = params(["key": .string("Student"), "identity": int(42)])

    func sendGet(_ c: LineClient, id: Int) throws {
        try c.send(requestLine(id: int(id), method: "get", params: Self.entry) + "\n")
    }

    func leaseSet(_ c: LineClient, token: String, value: String) throws -> JSONValue {
        try c.call("set", Self.entry.merging(["value": .string(value), "lease": .string(token)]) { $1 })
    }

    @Test(arguments: [StoreKind.embedded, .redisUnix, .redisTLS, .sentinel, .cluster])
    func holderStoresAndWaitersWake(kind: StoreKind) throws {
        let f = try Fixture(kind)
        let holder = try f.daemon.client()
        let lease = try #require(try holder.call("get", Self.entry)["result"]?["lease"]?.stringValue)
        let waiters = try (0..<5).map { _ in try f.daemon.client() }
        for (i, w) in waiters.enumerated() { try sendGet(w, id: 100 + i) }
        Thread.sleep(forTimeInterval: 0.1)  // the waiters are parked on the lease
        let started = Date()
        #expect(try leaseSet(holder, token: lease, value: "filled")["result"] == .object(["stored": .bool(true)]))
        var latencies: [Double] = []
        for w in waiters {
            let answer = try w.readJSON(timeout: 3)
            latencies.append(Date().timeIntervalSince(started))
            #expect(answer["result"]?["value"] == .string("filled"))
            #expect(answer["result"]?["lease"] == nil)
        }
        print("lease waiters woke \(String(format: "%.2f", (latencies.max() ?? 0) * 1000)) ms after the holder's set")
        #expect(try holder.call("get", Self.entry)["result"]?["hit"] == .bool(true))
        // The token is spent.
        #expect(try leaseSet(holder, token: lease, value: "again")["result"]?["stored"] == .bool(false))
    }

    @Test func holderDisconnectsAndTheNextWaiterGetsTheLease() throws {
        let f = try Fixture(.redisUnix)
        var holder: LineClient? = try f.daemon.client()
        _ = try #require(try holder!.call("get", Self.entry)["result"]?["lease"]?.stringValue)
        let b = try f.daemon.client()
        let c = try f.daemon.client()
        try sendGet(b, id: 1)
        Thread.sleep(forTimeInterval: 0.05)
        try sendGet(c, id: 2)
        Thread.sleep(forTimeInterval: 0.05)
        holder = nil  // closes the socket
        let bAnswer = try b.readJSON(timeout: 3)
        let newLease = try #require(bAnswer["result"]?["lease"]?.stringValue)
        #expect(try leaseSet(b, token: newLease, value: "from-b")["result"]?["stored"] == .bool(true))
        #expect(try c.readJSON(timeout: 3)["result"]?["value"] == .string("from-b"))
        _ = holder
    }

    @Test func deleteDuringALeaseRefusesTheLateSet() throws {
        let f = try Fixture(.redisUnix)
        let redis = try #require(f.redis)
        let holder = try f.daemon.client()
        let lease = try #require(try holder.call("get", Self.entry)["result"]?["lease"]?.stringValue)
        let other = try f.daemon.client()
        #expect(try other.call("delete", Self.entry)["result"]?["deleted"] == int(0))
        let late = try leaseSet(holder, token: lease, value: "stale")["result"]
        #expect(late?["stored"] == .bool(false))
        #expect(late?["reason"]?.stringValue?.contains("lease") == true)
        #expect(try redis.cli(["EXISTS", "000STUDENT#0000000042"]) == "0")
        // A plain set always stores.
        #expect(try holder.call("set", Self.entry.merging(["value": .string("plain")]) { $1 })["result"]?["stored"] == .bool(true))
        #expect(try redis.cli(["GET", "000STUDENT#0000000042"]) == "plain")
    }

    @Test func leaseTimeoutHandsTheLeaseToTheNextWaiter() throws {
        let daemon = try DaemonProcess(config: "[keys.Student]\nlease_timeout = 0.3\n")
        let holder = try daemon.client()
        let first = try #require(try holder.call("get", Self.entry)["result"]?["lease"]?.stringValue)
        let b = try daemon.client()
        let started = Date()
        try sendGet(b, id: 1)
        let answer = try b.readJSON(timeout: 3)
        let elapsed = Date().timeIntervalSince(started)
        let second = try #require(answer["result"]?["lease"]?.stringValue)
        #expect(second != first)
        #expect(elapsed >= 0.2 && elapsed < 2)
        #expect(try leaseSet(holder, token: first, value: "late")["result"]?["stored"] == .bool(false))
        #expect(try leaseSet(b, token: second, value: "b")["result"]?["stored"] == .bool(true))
    }

    @Test func plainSetWakesWaitersAndRevokesTheLease() throws {
        let daemon = try DaemonProcess()
        let holder = try daemon.client()
        let lease = try #require(try holder.call("get", Self.entry)["result"]?["lease"]?.stringValue)
        let w = try daemon.client()
        try sendGet(w, id: 7)
        Thread.sleep(forTimeInterval: 0.05)
        #expect(try daemon.client().call("set", Self.entry.merging(["value": .string("direct")]) { $1 })["result"]?["stored"] == .bool(true))
        #expect(try w.readJSON(timeout: 3)["result"]?["value"] == .string("direct"))
        #expect(try leaseSet(holder, token: lease, value: "old")["result"]?["stored"] == .bool(false))
    }

    @Test func holderAskingAgainGetsAFreshLease() throws {
        let daemon = try DaemonProcess()
        let c = try daemon.client()
        let first = try #require(try c.call("get", Self.entry)["result"]?["lease"]?.stringValue)
        let second = try #require(try c.call("get", Self.entry, timeout: 2)["result"]?["lease"]?.stringValue)
        #expect(first != second)
        #expect(try leaseSet(c, token: first, value: "x")["result"]?["stored"] == .bool(false))
        #expect(try leaseSet(c, token: second, value: "y")["result"]?["stored"] == .bool(true))
    }
}
