import CachedClient
import CachedProtocol
import CachedTestSupport
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite("CachedClient: methods against the real daemon", .serialized)
struct CachedClientMethodTests {
    @Test(arguments: [false, true])
    func everyMethod(redis: Bool) async throws {
        let f = try ClientFixture(redis: redis)
        let c = f.client
        try await c.connect()
        try await c.ping()

        let miss = try await c.get(key: "Student", identity: 12)
        #expect(miss.hit == false)
        #expect(miss.value == nil)
        #expect(miss.lease?.count == 32)
        #expect(try await c.set(key: "Student", identity: 12, value: "hello", ttl: 30, lease: miss.lease))
        let hit = try await c.get(key: "Student", identity: 12)
        #expect(hit.hit && hit.string == "hello" && hit.lease == nil && hit.cached)
        if let r = f.redis {
            #expect(try r.cli(["GET", "000STUDENT#0000000012"]) == "hello")
            let ttl = Int(try r.cli(["PTTL", "000STUDENT#0000000012"])) ?? -99
            #expect(ttl > 0 && ttl <= 30_000)
        }
        #expect(try await c.delete(key: "Student", identity: 12) == 1)
        #expect(try await c.delete(key: "Student", identity: 12) == 0)

        // String identities and the hash layout.
        #expect(try await c.set(key: "Student", identity: "alice", hashKey: "Class", hashId: 3, value: [1, 2, 3]))
        #expect(try await c.get(key: "Student", identity: "alice", hashKey: "Class", hashId: 3).bytes == [1, 2, 3])
        if let r = f.redis {
            #expect(try r.cliBytes(["HGET", "00000CLASS#0000000003", "000STUDENT#alice"]) == [1, 2, 3])
        }
        #expect(try await c.get(key: "Student", identity: "alice").hit == false)
        #expect(try await c.deleteHash(hashKey: "Class", hashId: 3) == 1)
        #expect(try await c.deleteHash(hashKey: "Class", hashId: 3) == 0)
        #expect(try await c.get(key: "Student", identity: "alice", hashKey: "Class", hashId: 3).hit == false)

        let stats = try await c.stats()
        #expect(stats["methods"]?["get"]?["hits"]?.intValue == 2)
        #expect(stats["store"]?["available"] == .bool(true))
        await c.close()
    }

    @Test func binaryValuesRoundTripAsBase64() async throws {
        let f = try ClientFixture(redis: true)
        let c = f.client
        let allBytes = (0...255).map { UInt8($0) }
        #expect(try await c.set(key: "Blob", identity: "all-bytes", value: allBytes))
        let answer = try await c.get(key: "Blob", identity: "all-bytes")
        #expect(answer.bytes == allBytes)
        #expect(try f.redis!.cliBytes(["GET", "000000BLOB#all-bytes"]) == allBytes)
        // Text with every character JSON escapes.
        let text = "naïve \u{1F600} \"quoted\" \\ \n\t \u{2028} \u{0}"
        try await c.set(key: "Text", identity: 1, value: text)
        #expect(try await c.get(key: "Text", identity: 1).string == text)
        await c.close()
    }

    struct Student: Codable, Equatable, Sendable {
        var name: String
        var grades: [Int]
    }

    @Test func codableRoundTrip() async throws {
        let f = try ClientFixture()
        let c = f.client
        let ada = Student(name: "Ada", grades: [18, 20])
        #expect(try await c.setValue(ada, key: "Student", identity: 1))
        #expect(try await c.getValue(Student.self, key: "Student", identity: 1) == ada)
        #expect(try await c.get(key: "Student", identity: 1).string?.contains(#""name":"Ada""#) == true)
        // A value that is not a Student fails to decode.
        try await c.set(key: "Student", identity: 2, value: "not json")
        await #expect(throws: DecodingError.self) { try await c.getValue(Student.self, key: "Student", identity: 2) }
        // Filled through the lease flow on a miss.
        let filled = try await c.getValue(Student.self, key: "Student", identity: 3) { Student(name: "Bob", grades: []) }
        #expect(filled == Student(name: "Bob", grades: []))
        #expect(try await c.getValue(Student.self, key: "Student", identity: 3) == filled)
        await c.close()
    }

    @Test func errorAnswersCarryTheirCode() async throws {
        let f = try ClientFixture()
        let c = f.client
        do {
            _ = try await c.get(key: "ab", identity: 1)
            Issue.record("a 2-character key was accepted")
        } catch let error as CachedError {
            #expect(error.code == .invalidParams)
            #expect(error.message.contains("key"))
        }
        let results = try await c.batch([
            .ping,
            CachedClient.Request(method: "frobnicate", params: [:]),
            .get(key: "ab", identity: 1),
        ])
        #expect(results.count == 3)
        #expect(try results[0].get() == .string("pong"))
        guard case .failure(let unknown) = results[1], case .failure(let invalid) = results[2] else {
            Issue.record("expected two error answers: \(results)")
            return
        }
        #expect(unknown.code == .methodNotFound)
        #expect(unknown.code.rawValue == -32601)
        #expect(invalid.code.rawValue == -32602)
        // The raw call surfaces -32601 as a thrown CachedError, too.
        do {
            _ = try await c.call("frobnicate")
            Issue.record("an unknown method was answered")
        } catch let error as CachedError {
            #expect(error.code.rawValue == -32601)
        }
        // A non-finite TTL never reaches the wire.
        await #expect(throws: CachedClientError.self) {
            try await c.set(key: "Student", identity: 1, value: "v", ttl: .infinity)
        }
        try await c.ping()
        await c.close()
    }

    @Test func batchAnswersComeBackInRequestOrder() async throws {
        let f = try ClientFixture(redis: true)
        let c = f.client
        var requests: [CachedClient.Request] = (0..<50).map { .set(key: "Student", identity: $0, value: "v\($0)") }
        requests += (0..<50).map { .get(key: "Student", identity: $0) }
        requests.append(.delete(key: "Student", identity: 0))
        requests.append(.stats)
        let results = try await c.batch(requests)
        #expect(results.count == 102)
        for i in 0..<50 {
            #expect(try results[i].get() == .object(["stored": .bool(true)]))
            #expect(try GetResult(json: try results[50 + i].get()).string == "v\(i)")
        }
        #expect(try results[100].get() == .object(["deleted": .number("1")]))
        #expect(try results[101].get()["uptimeSeconds"] != nil)
        #expect(try await c.batch([]).isEmpty)
        await c.close()
    }
}

@Suite("CachedClient: multiplexing and connections", .serialized)
struct CachedClientConnectionTests {
    @Test func fiveHundredConcurrentGetsOnOneConnection() async throws {
        let f = try ClientFixture(redis: true)
        let c = f.client
        let entries = 100
        _ = try await c.batch((0..<entries).map { .set(key: "Student", identity: $0, value: "value-\($0)") })
        let results = try await withThrowingTaskGroup(of: (Int, String?).self) { group in
            for i in 0..<500 {
                group.addTask {
                    let identity = (i * 37) % entries
                    return (identity, try await c.get(key: "Student", identity: identity).string)
                }
            }
            var all: [(Int, String?)] = []
            for try await r in group { all.append(r) }
            return all
        }
        #expect(results.count == 500)
        for (identity, value) in results { #expect(value == "value-\(identity)") }
        let stats = try await c.stats()
        #expect(stats["connections"]?["current"]?.intValue == 1)  // all 500 on one connection
        await c.close()
    }

    @Test func connectionFailureIsATypedError() async throws {
        let dir = try makeTemporaryDirectory("client")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let c = CachedClient(socketPath: dir + "/nobody.sock")
        do {
            try await c.ping()
            Issue.record("ping without a daemon succeeded")
        } catch let error as CachedClientError {
            #expect(error.kind == .connectionFailed)
            #expect(error.isConnectionError)
            #expect(error.message.contains("nobody.sock"))
        }
        await #expect(throws: CachedClientError.self) { try await c.connect() }
    }

    @Test func reconnectsAfterTheDaemonRestarts() async throws {
        let redis = try RedisServer()
        let first = try DaemonProcess(arguments: ["--redis", redis.unixURL])
        let c = CachedClient(socketPath: first.socketPath)
        try await c.set(key: "Student", identity: 1, value: "kept in redis")
        #expect(first.stop() == 0)
        // The connection is gone: the next call fails with a connection error...
        do {
            try await c.ping()
            Issue.record("ping to a stopped daemon succeeded")
        } catch let error as CachedClientError {
            #expect(error.isConnectionError)
        }
        // ...and once a daemon serves the socket again, the next call reconnects by itself.
        // (The later --socket wins, so the second daemon serves the first one's path.)
        let second = try DaemonProcess(arguments: ["--redis", redis.unixURL, "--socket", first.socketPath], waitForReady: false)
        #expect(try waitUntil(timeout: 15) { (try? LineClient(path: first.socketPath).call("ping"))?["result"] == .string("pong") })
        #expect(try await c.get(key: "Student", identity: 1).string == "kept in redis")
        try await c.ping()
        await c.close()
        second.stop()
    }

    @Test func pendingCallsFailWhenTheConnectionDrops() async throws {
        let f = try ClientFixture()
        let c = f.client
        // A waiter parked behind another client's lease stays pending until the daemon dies.
        let holder = f.newClient()
        #expect(try await holder.get(key: "Student", identity: 5).lease != nil)
        let waiting = Task { try await c.get(key: "Student", identity: 5) }
        try await Task.sleep(for: .milliseconds(100))
        f.daemon.stop(signal: SIGKILL)
        let outcome = await waiting.result
        guard case .failure(let error as CachedClientError) = outcome else {
            Issue.record("expected a connection error, got \(outcome)")
            return
        }
        #expect(error.kind == .connectionClosed)
        await holder.close()
        await c.close()
    }

    @Test func closeIsFinalUntilConnect() async throws {
        let f = try ClientFixture()
        let c = f.client
        try await c.ping()
        await c.close()
        await #expect(throws: CachedClientError(.clientClosed, "the client was closed; call connect() to reopen it")) {
            try await c.ping()
        }
        try await c.connect()
        try await c.ping()
        await c.close()
    }
}

@Suite("CachedClient: local fill with the lease flow", .serialized)
struct CachedClientFillTests {
    @Test func twentyClientsFillOneColdKeyOnce() async throws {
        let f = try ClientFixture(redis: true)
        let clients = (0..<20).map { _ in f.newClient() }
        for c in clients { try await c.connect() }
        let fills = Counter()
        let values = try await withThrowingTaskGroup(of: [UInt8]?.self) { group in
            for c in clients {
                group.addTask {
                    try await c.get(key: "Report", identity: 2024) {
                        await fills.increment()
                        try await Task.sleep(for: .milliseconds(200))
                        return Array("expensive".utf8)
                    }
                }
            }
            var all: [[UInt8]?] = []
            for try await v in group { all.append(v) }
            return all
        }
        #expect(await fills.value == 1)
        #expect(values.count == 20)
        #expect(values.allSatisfy { $0 == Array("expensive".utf8) })
        #expect(try f.redis!.cli(["GET", "0000REPORT#0000002024"]) == "expensive")
        for c in clients { await c.close() }
    }

    @Test func hitsSkipTheFillAndRefusedLeasesStillReturnTheValue() async throws {
        let f = try ClientFixture()
        let c = f.client
        try await c.set(key: "Student", identity: 1, value: "stored")
        let hit = try await c.get(key: "Student", identity: 1) { () async throws -> [UInt8]? in
            Issue.record("fill called on a hit")
            return nil
        }
        #expect(hit == Array("stored".utf8))

        // A delete while filling revokes the lease: the set is refused, the value still returned.
        let other = f.newClient()
        let value = try await c.get(key: "Student", identity: 2) {
            _ = try await other.delete(key: "Student", identity: 2)
            return Array("stale".utf8)
        }
        #expect(value == Array("stale".utf8))
        #expect(try await other.get(key: "Student", identity: 2).hit == false)

        // A fill that finds nothing stores nothing.
        let nothing = try await c.get(key: "Student", identity: 3) { nil }
        #expect(nothing == nil)
        await other.close()
        await c.close()
    }
}

extension CachedClientFillTests {
    struct FillFailed: Error, Equatable {}

    /// A fill that throws gives its lease back: the next asker fills at once, not after `lease_timeout`.
    @Test func aThrowingFillReleasesItsLeaseAndRethrows() async throws {
        let f = try ClientFixture(config: "[keys.Student]\nlease_timeout = 5\n")
        let failing = f.client
        let next = f.newClient()
        try await next.connect()
        let started = ContinuousClock.now
        await #expect(throws: FillFailed.self) {
            _ = try await failing.get(key: "Student", identity: 9) { () async throws -> [UInt8]? in
                // The other client asks while this fill runs, and waits behind the lease.
                Task { _ = try? await next.get(key: "Student", identity: 9) { Array("second".utf8) } }
                try await Task.sleep(for: .milliseconds(100))
                throw FillFailed()
            }
        }
        let filled = try await waitForValue(next, identity: 9)
        #expect(filled == "second")
        #expect(ContinuousClock.now - started < .seconds(2), "the waiter filled \(ContinuousClock.now - started) after the first fill failed")
        #expect(try await failing.stats()["fills"]?.objectValue?["leasesReleased"] == .number("1"))
        await next.close()
        await failing.close()
    }

    private func waitForValue(_ c: CachedClient, identity: Int) async throws -> String? {
        for _ in 0..<200 {
            if let s = try await c.get(key: "Student", identity: identity, lease: false).string { return s }
            try await Task.sleep(for: .milliseconds(10))
        }
        return nil
    }

    /// `lease: false` and `cachectl get` only look: no lease taken, no wait behind one.
    @Test func lookingNeverTakesALeaseNorWaits() async throws {
        let f = try ClientFixture(config: "[keys.Student]\nlease_timeout = 5\n")
        let holder = f.client
        #expect(try await holder.get(key: "Student", identity: 4, lease: false).lease == nil)
        #expect(try await holder.get(key: "Student", identity: 4).lease != nil)
        let started = Date()
        let out = try runCachectl(["get", "Student", "4", "--socket", f.daemon.socketPath])
        #expect(out.status == 1 && out.stdout.isEmpty)
        #expect(Date().timeIntervalSince(started) < 2)
        #expect(try await holder.stats()["fills"]?.objectValue?["leaseWaits"] == .number("0"))
        await holder.close()
    }
}

@Suite("cachectl end to end", .serialized)
struct CachectlTests {
    @Test func commandsAndExitStatuses() async throws {
        let f = try ClientFixture(redis: true)
        let socket = ["--socket", f.daemon.socketPath]

        var out = try runCachectl(["ping"] + socket)
        #expect(out.status == 0 && out.text == "pong\n")

        out = try runCachectl(["get", "Student", "12"] + socket)
        #expect(out.status == 1 && out.stdout.isEmpty)

        out = try runCachectl(["set", "Student", "12", "hello world", "--ttl", "60"] + socket)
        #expect(out.status == 0 && out.text == "stored\n")
        #expect(try f.redis!.cli(["GET", "000STUDENT#0000000012"]) == "hello world")

        out = try runCachectl(["get", "Student", "12"] + socket)
        #expect(out.status == 0 && out.text == "hello world")

        out = try runCachectl(["get", "--json", "Student", "12"] + socket)
        #expect(out.status == 0)
        #expect(try JSONParser.parse(out.stdout) == .object(["hit": .bool(true), "value": .string("hello world")]))

        // Binary values in and out.
        let bytes: [UInt8] = [0, 255, 10, 13, 128]
        out = try runCachectl(["set", "Blob", "x", Data(bytes).base64EncodedString(), "--base64"] + socket)
        #expect(out.status == 0)
        out = try runCachectl(["get", "Blob", "x"] + socket)
        #expect(out.stdout == bytes)

        // Integer-looking identities are integers unless --string-identity.
        out = try runCachectl(["set", "Student", "7", "int", "--string-identity"] + socket)
        #expect(try f.redis!.cli(["GET", "000STUDENT#7"]) == "int")

        // Hash entries.
        _ = try runCachectl(["set", "Student", "1", "in-hash", "--hash-key", "Class", "--hash-id", "3"] + socket)
        out = try runCachectl(["get", "Student", "1", "--hash-key", "Class", "--hash-id", "3"] + socket)
        #expect(out.text == "in-hash")
        out = try runCachectl(["delete-hash", "Class", "3", "--json"] + socket)
        #expect(try JSONParser.parse(out.stdout) == .object(["deleted": .number("1")]))

        out = try runCachectl(["delete", "Student", "12"] + socket)
        #expect(out.status == 0 && out.text == "1\n")

        out = try runCachectl(["stats", "--json"] + socket)
        #expect(out.status == 0)
        #expect(try JSONParser.parse(out.stdout)["store"]?["available"] == .bool(true))
        out = try runCachectl(["stats"] + socket)
        #expect(out.status == 0 && out.text.contains("uptimeSeconds:"))

        // An error answer: exit 3. No daemon: exit 2.
        out = try runCachectl(["get", "ab", "1"] + socket)
        #expect(out.status == 3)
        out = try runCachectl(["ping", "--socket", f.daemon.directory + "/nobody.sock"])
        #expect(out.status == 2)

        // $CACHED_SOCKET is the default socket.
        var env = ProcessInfo.processInfo.environment
        env["CACHED_SOCKET"] = f.daemon.socketPath
        out = try runCachectl(["ping"], environment: env)
        #expect(out.status == 0 && out.text == "pong\n")
    }
}

@Suite("CachedClient: timeouts and cancellation", .serialized)
struct CachedClientDeadlineTests {
    /// A get that waits behind another client's lease, given `timeout`, throws -32009 at its deadline.
    @Test func aPerCallTimeoutIsTheDaemonsDeadline() async throws {
        let f = try ClientFixture(config: "[keys.Student]\nlease_timeout = 5\n")
        #expect(try await f.client.get(key: "Student", identity: 1).lease != nil)
        let waiter = f.newClient()
        let started = ContinuousClock.now
        do {
            _ = try await waiter.get(key: "Student", identity: 1, timeout: .milliseconds(300))
            Issue.record("a get behind a lease answered before the holder filled")
        } catch let error as CachedError {
            #expect(error.code == .deadlineExceeded)
        }
        let elapsed = ContinuousClock.now - started
        #expect(elapsed >= .milliseconds(290) && elapsed < .milliseconds(400), "answered after \(elapsed)")
        await waiter.close()
        await f.client.close()
    }

    @Test func theClientsDefaultTimeoutApplies() async throws {
        let f = try ClientFixture(config: "[keys.Student]\nlease_timeout = 5\n")
        let lease = try #require(try await f.client.get(key: "Student", identity: 2).lease)
        let waiter = CachedClient(socketPath: f.daemon.socketPath, timeout: .milliseconds(250))
        let started = ContinuousClock.now
        await #expect(throws: CachedError.self) { _ = try await waiter.get(key: "Student", identity: 2) }
        #expect(ContinuousClock.now - started < .milliseconds(400))
        // A call's own timeout wins over the client's: this one outlasts 250 ms and gets the holder's value.
        let patient = Task { try await waiter.get(key: "Student", identity: 2, timeout: .seconds(5)) }
        try await Task.sleep(for: .milliseconds(400))
        #expect(try await f.client.set(key: "Student", identity: 2, value: "late", lease: lease))
        #expect(try await patient.value.string == "late")
        await waiter.close()
        await f.client.close()
    }

    /// A cancelled task stops waiting at once; the connection stays usable, the late answer is dropped.
    @Test func cancellationEndsTheWaitAndTheConnectionStaysUsable() async throws {
        let f = try ClientFixture(config: "[keys.Student]\nlease_timeout = 5\n")
        let holder = f.client
        let lease = try #require(try await holder.get(key: "Student", identity: 3).lease)
        let waiter = f.newClient()
        try await waiter.connect()
        let task = Task { try await waiter.get(key: "Student", identity: 3) }
        try await Task.sleep(for: .milliseconds(150))
        let cancelled = ContinuousClock.now
        task.cancel()
        switch await task.result {
        case .success(let answer): Issue.record("a cancelled get answered \(answer)")
        case .failure(let error): #expect(error is CancellationError, "threw \(error)")
        }
        #expect(ContinuousClock.now - cancelled < .milliseconds(50), "the cancelled call ended \(ContinuousClock.now - cancelled) later")
        // The daemon's answer to the cancelled get comes when the holder stores: dropped, nothing breaks.
        #expect(try await holder.set(key: "Student", identity: 3, value: "filled", lease: lease))
        try await waiter.ping()
        #expect(try await waiter.get(key: "Student", identity: 3).string == "filled")
        await waiter.close()
        await holder.close()
    }

    /// A daemon that cannot answer at all (stopped): the client gives up itself, a moment after the deadline.
    @Test func theClientGivesUpOnAStoppedDaemon() async throws {
        let f = try ClientFixture()
        try await f.client.ping()
        f.daemon.signalOnly(SIGSTOP)
        defer { f.daemon.signalOnly(SIGCONT) }
        let started = ContinuousClock.now
        do {
            try await f.client.ping(timeout: .milliseconds(200))
            Issue.record("a stopped daemon answered")
        } catch let error as CachedError {
            #expect(error.code == .deadlineExceeded)
        }
        let elapsed = ContinuousClock.now - started
        #expect(elapsed >= .milliseconds(200) + CachedClient.answerGrace && elapsed < .milliseconds(900), "gave up after \(elapsed)")
        f.daemon.signalOnly(SIGCONT)
        try await f.client.ping()
        await f.client.close()
    }
}
