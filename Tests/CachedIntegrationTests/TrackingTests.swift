import CachedProtocol
import CachedTestSupport
import Foundation
import Testing

/// Client tracking (`track`): a connection that asks is told of every change to what it read, before the
/// write that caused it is answered; the others get nothing new (real daemon, real redis-server).
@Suite("Client tracking for near caches", .serialized)
struct TrackingTests {
    static func entry(_ identity: Int) -> [String: JSONValue] { ["key": .string("Student"), "identity": .number(String(identity))] }
    static let hashEntry: [String: JSONValue] = [
        "key": .string("Student"), "identity": .number("1"), "hashKey": .string("Class"), "hashId": .number("3"),
    ]

    /// The next line on `c` if one arrives within `timeout` (nil: none).
    func nextLine(_ c: LineClient, timeout: Double) -> JSONValue? {
        try? c.readJSON(timeout: timeout)
    }

    /// `c`'s next notification, as parsed by the protocol's own reader.
    func notification(_ c: LineClient, timeout: Double) throws -> InvalidateNotification {
        let line = try #require(nextLine(c, timeout: timeout), "no notification within \(timeout) s")
        return try #require(InvalidateNotification(line), "not an invalidate notification: \(jsonText(line))")
    }

    func address(_ params: [String: JSONValue]) throws -> EntryAddress {
        try GetParams(.object(params)).address
    }

    @Test(arguments: [StoreKind.redisUnix, .embedded])
    func writesThroughTheDaemonAreNotifiedBeforeTheyAreAnswered(kind: StoreKind) throws {
        let f = try Fixture(kind)
        let tracker = try f.daemon.client()
        let writer = try f.daemon.client()
        #expect(try writer.call("set", Self.entry(1).merging(["value": .string("v1"), "ttl": .number("60")]) { $1 })["result"]?["stored"] == .bool(true))
        let track = try tracker.call("track")
        #expect(track["result"]?["tracking"] == .bool(true))
        #expect(track["result"]?["maxEntries"]?.intValue == 10_000)
        // The first read may come from Redis (not vouched for yet); from memory it carries nearTTL.
        _ = try tracker.call("get", Self.entry(1))
        let hit = try tracker.call("get", Self.entry(1))
        #expect(hit["result"]?["value"] == .string("v1"))
        let nearTTL = try #require(hit["result"]?["nearTTL"]?.intValue, "a hit from memory carries nearTTL: \(jsonText(hit))")
        #expect(nearTTL > 50_000 && nearTTL <= 60_000, "kept no longer than the entry's TTL: \(nearTTL) ms")
        // A connection that did not ask sees no nearTTL and gets no notification.
        #expect(try writer.call("get", Self.entry(1))["result"]?["nearTTL"] == nil)

        for (i, write) in [
            ("set", Self.entry(1).merging(["value": .string("v2")]) { $1 }),
            ("delete", Self.entry(1)),
        ].enumerated() {
            if i > 0 {
                _ = try tracker.call("get", Self.entry(1))  // read again: tracked again
            }
            _ = try writer.call(write.0, write.1)
            // Written before the writer's answer: already in the tracker's socket.
            let told = try notification(tracker, timeout: 0.005)
            #expect(told == .entries([try address(Self.entry(1))]), "\(write.0)")
        }
        #expect(try writer.call("ping")["result"] == .string("pong"))  // the writer got no notification line
        #expect(nextLine(writer, timeout: 0.2) == nil)

        // A hash's entries: deleteHash reaches each, named as the tracker named them.
        _ = try writer.call("set", Self.hashEntry.merging(["value": .string("h1")]) { $1 })
        _ = try tracker.call("get", Self.hashEntry)
        _ = try writer.call("deleteHash", ["hashKey": .string("Class"), "hashId": .number("3")])
        #expect(try notification(tracker, timeout: 0.005) == .entries([try address(Self.hashEntry)]))

        // track {enabled: false}: nothing more.
        #expect(try tracker.call("track", ["enabled": .bool(false)])["result"]?["tracking"] == .bool(false))
        _ = try tracker.call("get", Self.entry(5))
        _ = try writer.call("set", Self.entry(5).merging(["value": .string("x")]) { $1 })
        #expect(nextLine(tracker, timeout: 0.3) == nil)
        let stats = try writer.call("stats")["result"]?["tracking"]
        #expect(stats?["connections"]?.intValue == 0)
        #expect((stats?["notifications"]?.intValue ?? 0) >= 3)
    }

    @Test func changesInRedisAndFlushesAreNotified() throws {
        let f = try Fixture(.redisUnix)
        let redis = try #require(f.redis)
        let tracker = try f.daemon.client()
        try redis.cli(["SET", "000STUDENT#0000000001", "v1"])
        _ = try tracker.call("track")
        _ = try tracker.call("get", Self.entry(1))
        // Written straight to Redis: its invalidation reaches the daemon, which passes it on.
        try redis.cli(["SET", "000STUDENT#0000000001", "v2"])
        #expect(try notification(tracker, timeout: 5) == .entries([try address(Self.entry(1))]))
        // Read again, then FLUSHALL: Redis says everything changed, and so does the daemon.
        #expect(try tracker.call("get", Self.entry(1))["result"]?["value"] == .string("v2"))
        try redis.cli(["FLUSHALL"])
        var told: [InvalidateNotification] = []
        while let line = nextLine(tracker, timeout: 2), let n = InvalidateNotification(line) { told.append(n) }
        #expect(told.contains(.all), "FLUSHALL is passed on as all: \(told)")
        #expect(try tracker.call("get", Self.entry(1))["result"]?["value"] == .null)
    }

    @Test func theTableIsBoundedAndTheOldestIsForgottenFirst() throws {
        let f = try Fixture(.redisUnix)
        let tracker = try f.daemon.client()
        let writer = try f.daemon.client()
        for i in 1...3 { _ = try writer.call("set", Self.entry(i).merging(["value": .string("v\(i)")]) { $1 }) }
        #expect(try tracker.call("track", ["maxEntries": .number("2")])["result"]?["maxEntries"]?.intValue == 2)
        #expect(try tracker.call("track", ["maxEntries": .number("0")])["error"]?["code"]?.intValue == -32602)
        _ = try tracker.call("get", Self.entry(1))
        _ = try tracker.call("get", Self.entry(2))
        _ = try tracker.call("get", Self.entry(1))  // 1 is now the newer of the two
        // A third entry: the oldest (2) is dropped, and the tracker told to forget it before the answer.
        try tracker.send(LineClient.request(id: 99, method: "get", params: Self.entry(3)) + "\n")
        #expect(try notification(tracker, timeout: 5) == .entries([try address(Self.entry(2))]))
        #expect(try tracker.readJSON()["id"] == .number("99"))
        // 2 is no longer tracked: its change is not notified; 1's is.
        _ = try writer.call("set", Self.entry(2).merging(["value": .string("x")]) { $1 })
        _ = try writer.call("set", Self.entry(1).merging(["value": .string("x")]) { $1 })
        #expect(try notification(tracker, timeout: 0.005) == .entries([try address(Self.entry(1))]))
        #expect(nextLine(tracker, timeout: 0.3) == nil)
    }

    @Test func aTrackerThatStopsReadingIsClosedAndDoesNotHoldWritesUp() throws {
        let f = try Fixture(.redisUnix, config: "[limits]\nmax_output_bytes = 4096\n")
        let tracker = try f.daemon.client()
        let writer = try f.daemon.client()
        let big = String(repeating: "x", count: 2048)
        _ = try tracker.call("track")
        for i in 0..<100 { _ = try writer.call("set", Self.entry(i).merging(["value": .string(big)]) { $1 }) }
        // The tracker sends gets and reads nothing: answers and notifications pile up on its side.
        // (the daemon may close it before all are sent: its unread answers pass max_output_bytes)
        for n in 0..<300 {
            guard (try? tracker.send(LineClient.request(id: 1000 + n, method: "get", params: Self.entry(n % 100)) + "\n")) != nil else { break }
        }
        let started = Date()
        for round in 0..<5 {
            for i in 0..<100 {
                let answer = try writer.call("set", Self.entry(i).merging(["value": .string("r\(round)")]) { $1 }, timeout: 5)
                #expect(answer["result"]?["stored"] == .bool(true))
            }
        }
        // Each write waits at most the notification deadline (1 s) for a tracker that does not read.
        #expect(Date().timeIntervalSince(started) < 15)
        #expect(tracker.isClosedByPeer(timeout: 10), "the tracker that stopped reading was closed")
    }

    @Test func notificationsCanGoToAConnectionOfTheirOwn() throws {
        let f = try Fixture(.redisUnix)
        let tracked = try f.daemon.client()
        let side = try f.daemon.client()
        let writer = try f.daemon.client()
        let answer = try tracked.call("track", ["separate": .bool(true)])["result"]
        let token = try #require(answer?["token"]?.stringValue)
        #expect(try side.call("notifications", ["token": .string("nonsense")])["error"]?["code"]?.intValue == -32602)
        #expect(try side.call("notifications", ["token": .string(token)])["result"]?["notifications"] == .bool(true))
        #expect(try side.call("notifications", ["token": .string(token)])["error"]?["code"]?.intValue == -32602, "claimed once")
        _ = try writer.call("set", Self.entry(1).merging(["value": .string("v1")]) { $1 })
        _ = try tracked.call("get", Self.entry(1))
        _ = try writer.call("set", Self.entry(1).merging(["value": .string("v2")]) { $1 })
        // On the notification connection, before the writer's answer; nothing on the tracked one.
        #expect(try notification(side, timeout: 0.005) == .entries([try address(Self.entry(1))]))
        #expect(nextLine(tracked, timeout: 0.2) == nil)
        // The notification connection goes: the tracked one is closed too (its client must drop its near cache).
        side.closeSocket()
        #expect(tracked.isClosedByPeer(timeout: 5))
    }
}
