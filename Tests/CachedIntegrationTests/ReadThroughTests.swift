import CachedProtocol
import CachedTestSupport
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The test worker program and a configuration for one key that uses it.
enum FillWorker {
    static var path: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Fixtures/daemon/fill_worker.py").path
    }

    static func config(
        key: String = "Student", workers: Int = 2, timeout: Double = 5, mode: String = "value", delay: Double = 0,
        counter: String? = nil, extra: String = "", version: Int = 0
    ) -> String {
        var env = "FILL_MODE = \"\(mode)\", FILL_DELAY = \"\(delay)\", FILL_VERSION = \"\(version)\""
        if let counter { env += ", FILL_COUNTER = \"\(counter)\"" }
        return """
            [keys.\(key)]
            ttl = 60
            handler = ["/usr/bin/env", "python3", "\(path)"]
            workers = \(workers)
            timeout = \(timeout)
            environment = { \(env) }
            restart_min_delay = 0.05
            \(extra)

            """
    }

    static func calls(_ counter: String) -> Int {
        ((try? String(contentsOfFile: counter, encoding: .utf8)) ?? "").split(separator: "\n").count
    }
}

@Suite("Read-through with sync handlers", .serialized)
struct ReadThroughTests {
    static let entry: [String: JSONValue] = ["key": .string("Student"), "identity": .number("12")]

    @Test func concurrentColdGetsCauseOneHandlerCall() throws {
        raiseFileLimit(to: 4096)
        let redis = try RedisServer()
        let dir = try makeTemporaryDirectory("fill")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let counter = dir + "/calls"
        let handlerSeconds = 0.3
        let daemon = try DaemonProcess(
            config: FillWorker.config(workers: 4, delay: handlerSeconds, counter: counter), arguments: ["--redis", redis.unixURL])
        let clients = try (0..<200).map { _ in try daemon.client() }
        _ = try redis.cli(["CONFIG", "RESETSTAT"])
        let started = Date()
        for (i, c) in clients.enumerated() {
            try c.send(requestLine(id: .number(String(i)), method: "get", params: Self.entry.merging(["args": .array([.number("1")])]) { $1 }) + "\n")
        }
        var values = Set<String>()
        var latest = 0.0
        for c in clients {
            let answer = try c.readJSON(timeout: 10)
            latest = max(latest, Date().timeIntervalSince(started))
            #expect(answer["result"]?["hit"] == .bool(false))
            values.insert(answer["result"]?["value"]?.stringValue ?? "<none>")
        }
        #expect(FillWorker.calls(counter) == 1)
        #expect(values == ["Student:12:[1]:{}"])
        // The entry's flight is registered before its one store read, so every other get joins it without
        // reading Redis (without that, each costs a GET: 201 for 200 clients; joining only after a miss, 37).
        // Only a get arriving after the 300 ms handler finished could read again.
        let stats = try redis.cli(["INFO", "commandstats"])
        let reads = stats.split(whereSeparator: \.isNewline).first { $0.hasPrefix("cmdstat_get:") }
            .flatMap { $0.split(separator: "=").dropFirst().first?.split(separator: ",").first }.flatMap { Int($0) } ?? -1
        print("200 concurrent cold gets: \(reads) Redis GETs")
        #expect(reads >= 1 && reads <= 3)
        #expect(try redis.cli(["GET", "000STUDENT#0000000012"]) == "Student:12:[1]:{}")
        let ttl = Int(try redis.cli(["PTTL", "000STUDENT#0000000012"])) ?? 0
        #expect(ttl > 55_000)
        print("200 concurrent cold gets: \(FillWorker.calls(counter)) handler call; all answered \(String(format: "%.0f", (latest - handlerSeconds) * 1000)) ms after the handler's \(Int(handlerSeconds * 1000)) ms")
        // Now a hit, no further call.
        #expect(try clients[0].call("get", Self.entry)["result"]?["hit"] == .bool(true))
        #expect(FillWorker.calls(counter) == 1)
    }

    @Test func handlerErrorsReachAllWaitersAndTheNextGetRetries() throws {
        let dir = try makeTemporaryDirectory("fill")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let counter = dir + "/calls"
        let daemon = try DaemonProcess(config: FillWorker.config(mode: "fail-once", delay: 0.2, counter: counter))
        let clients = try (0..<10).map { _ in try daemon.client() }
        for (i, c) in clients.enumerated() { try c.send(requestLine(id: .number(String(i)), method: "get", params: Self.entry) + "\n") }
        for c in clients {
            let answer = try c.readJSON()
            #expect(answer["error"]?["code"]?.intValue == -32004)
            #expect(answer["error"]?["message"]?.stringValue?.contains("origin said no") == true)
        }
        #expect(FillWorker.calls(counter) == 1)
        let retry = try clients[0].call("get", Self.entry)
        #expect(retry["result"]?["value"]?.stringValue?.hasPrefix("Student:12") == true)
        #expect(FillWorker.calls(counter) == 2)
    }

    @Test func nullMeansNoEntryAndIsNotCachedUnlessConfigured() throws {
        let dir = try makeTemporaryDirectory("fill")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let counter = dir + "/calls"
        let daemon = try DaemonProcess(
            config: FillWorker.config(mode: "null", counter: counter)
                + FillWorker.config(key: "Negative", mode: "null", counter: counter, extra: "negative_ttl = 30"))
        let c = try daemon.client()
        for _ in 0..<3 {
            #expect(try c.call("get", Self.entry)["result"] == .object(["hit": .bool(false), "value": .null, "cached": .bool(false)]))
        }
        #expect(FillWorker.calls(counter) == 3)
        let negative: [String: JSONValue] = ["key": .string("Negative"), "identity": .number("1")]
        for _ in 0..<3 { _ = try c.call("get", negative) }
        #expect(FillWorker.calls(counter) == 4)
        // A set clears the remembered absence.
        _ = try c.call("set", negative.merging(["value": .string("now")]) { $1 })
        #expect(try c.call("get", negative)["result"]?["value"] == .string("now"))
    }

    @Test func setWithoutValueFillsFromTheHandler() throws {
        let redis = try RedisServer()
        let daemon = try DaemonProcess(config: FillWorker.config(), arguments: ["--redis", redis.unixURL])
        let c = try daemon.client()
        let answer = try c.call("set", Self.entry.merging(["kwargs": .object(["age": .number("15")])]) { $1 })
        #expect(answer["result"]?["stored"] == .bool(true))
        #expect(try redis.cli(["GET", "000STUDENT#0000000012"]) == "Student:12:[]:{\"age\": 15}")
        // A key without a handler needs a value.
        #expect(try c.call("set", ["key": .string("Other"), "identity": .number("1")])["error"]?["code"]?.intValue == -32602)
    }

    @Test func workerFaultsGiveDocumentedErrorsAndOtherKeysKeepServing() throws {
        let config = FillWorker.config(key: "Crashy", mode: "crash")
            + FillWorker.config(key: "Hangs", timeout: 0.5, delay: 30)
            + FillWorker.config(key: "Healthy")
        let daemon = try DaemonProcess(config: config)
        let c = try daemon.client()
        let crash = try c.call("get", ["key": .string("Crashy"), "identity": .number("1")])
        #expect(crash["error"]?["code"]?.intValue == -32004)
        let started = Date()
        let hang = try c.call("get", ["key": .string("Hangs"), "identity": .number("1")])
        #expect(hang["error"]?["code"]?.intValue == -32005)
        #expect(Date().timeIntervalSince(started) < 2.5)
        let healthy = try c.call("get", ["key": .string("Healthy"), "identity": .number("1")])
        #expect(healthy["result"]?["value"]?.stringValue?.hasPrefix("Healthy:1") == true)
        // Nothing was cached from the failed calls.
        #expect(try c.call("get", ["key": .string("Crashy"), "identity": .number("1")])["error"]?["code"]?.intValue == -32004)
        #expect(daemon.isRunning)
    }

    @Test func redisDownFallsBackToTheHandlerCappedAndCachesAgainWhenBack() throws {
        let redis = try RedisServer()
        let dir = try makeTemporaryDirectory("fill")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let counter = dir + "/calls"
        let daemon = try DaemonProcess(
            config: FillWorker.config(workers: 4, delay: 0.3, counter: counter, extra: "fallback_concurrency = 1"),
            arguments: ["--redis", redis.unixURL])
        redis.stop(signal: SIGKILL)
        let c = try daemon.client()
        let answer = try c.call("get", Self.entry)
        #expect(answer["result"]?["value"]?.stringValue?.hasPrefix("Student:12") == true)
        #expect(answer["result"]?["cached"] == .bool(false))
        // Different entries at once: at most 1 handler call for this key; the rest are told to back off.
        let clients = try (0..<6).map { _ in try daemon.client() }
        for (i, client) in clients.enumerated() {
            try client.send(requestLine(id: .number(String(i)), method: "get", params: ["key": .string("Student"), "identity": .number(String(100 + i))]) + "\n")
        }
        var served = 0
        var overloaded = 0
        for client in clients {
            let a = try client.readJSON()
            if a["result"]?["value"] != nil { served += 1 }
            if a["error"]?["code"]?.intValue == -32006 { overloaded += 1 }
        }
        #expect(served >= 1)
        #expect(overloaded >= 1)
        #expect(served + overloaded == 6)
        #expect(try c.call("set", Self.entry.merging(["value": .string("x")]) { $1 })["error"]?["code"]?.intValue == -32000)
        try redis.start()
        #expect(try waitUntil(timeout: 5) { (try? c.call("get", Self.entry))?["result"]?["cached"] == nil })
        #expect(try redis.cli(["EXISTS", "000STUDENT#0000000012"]) == "1")
    }

    @Test func clientDisconnectingDuringItsFillDoesNotHurtOtherWaiters() throws {
        let dir = try makeTemporaryDirectory("fill")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let counter = dir + "/calls"
        let daemon = try DaemonProcess(config: FillWorker.config(delay: 0.4, counter: counter))
        var first: LineClient? = try daemon.client()
        try first!.send(requestLine(id: .number("1"), method: "get", params: Self.entry) + "\n")
        Thread.sleep(forTimeInterval: 0.1)
        let second = try daemon.client()
        try second.send(requestLine(id: .number("2"), method: "get", params: Self.entry) + "\n")
        first = nil
        #expect(try second.readJSON()["result"]?["value"]?.stringValue?.hasPrefix("Student:12") == true)
        #expect(FillWorker.calls(counter) == 1)
        #expect(try daemon.client().call("get", Self.entry)["result"]?["hit"] == .bool(true))
        _ = first
    }

    /// The example `make run` serves: a miss on Student is filled by examples/handlers/student.py, the next
    /// get is a hit, an unknown identity is a miss with value null.
    @Test func theExampleConfigurationFillsFromItsHandler() throws {
        let repo = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let config = try String(contentsOf: repo.appendingPathComponent("examples/cached.toml"), encoding: .utf8)
            .replacingOccurrences(of: "\"examples/handlers/", with: "\"\(repo.path)/examples/handlers/")
        let daemon = try DaemonProcess(config: config)
        let c = try daemon.client()
        let ada = #"{"id":12,"name":"Ada Lovelace","class":3}"#
        #expect(try c.call("get", ["key": .string("Student"), "identity": .number("12")])["result"] == .object(["hit": .bool(false), "value": .string(ada)]))
        #expect(try c.call("get", ["key": .string("Student"), "identity": .number("12")])["result"] == .object(["hit": .bool(true), "value": .string(ada)]))
        #expect(try c.call("get", ["key": .string("Student"), "identity": .number("99")])["result"]?["value"] == .null)
    }

    @Test func sighupChangesAKeysHandler() throws {
        let daemon = try DaemonProcess(config: FillWorker.config(mode: "version", version: 1))
        let c = try daemon.client()
        #expect(try c.call("get", ["key": .string("Student"), "identity": .number("1")])["result"]?["value"] == .string("v1:1"))
        try FillWorker.config(mode: "version", version: 2).write(toFile: daemon.directory + "/cached.toml", atomically: true, encoding: .utf8)
        daemon.signalOnly(SIGHUP)
        #expect(try waitUntil(timeout: 5) { daemon.log().contains("configuration reloaded") })
        #expect(try waitUntil(timeout: 5) { (try? c.call("get", ["key": .string("Student"), "identity": .number("2")]))?["result"]?["value"] == .string("v2:2") })
        #expect(try c.call("ping")["result"] == .string("pong"))
    }

    @Test func sigtermLetsSlowFillsCompleteAndStopsTheWorkers() throws {
        let daemon = try DaemonProcess(config: "shutdown_timeout = 5.0\n" + FillWorker.config(workers: 2, delay: 0.8))
        let c = try daemon.client()
        try c.send(requestLine(id: .number("1"), method: "get", params: Self.entry) + "\n")
        Thread.sleep(forTimeInterval: 0.2)
        let workers = childPIDs(of: daemon.pid)
        #expect(workers.count == 2)
        daemon.signalOnly(SIGTERM)
        let answer = try c.readJSON(timeout: 5)
        #expect(answer["result"]?["value"]?.stringValue?.hasPrefix("Student:12") == true)
        #expect(daemon.waitForExit(timeout: 10) == 0)
        #expect(workers.allSatisfy { kill($0, 0) != 0 })
    }

    @Test func fillsStillRunningAtTheDrainDeadlineAreAnswered32007() throws {
        let daemon = try DaemonProcess(config: "shutdown_timeout = 0.5\n" + FillWorker.config(timeout: 30, delay: 10))
        let c = try daemon.client()
        try c.send(requestLine(id: .number("9"), method: "get", params: Self.entry) + "\n")
        Thread.sleep(forTimeInterval: 0.2)
        daemon.signalOnly(SIGTERM)
        let answer = try c.readJSON(timeout: 5)
        #expect(answer["id"] == .number("9"))
        #expect(answer["error"]?["code"]?.intValue == -32007)
        #expect(daemon.waitForExit(timeout: 10) == 0)
    }
}

/// The pids of a process's children (from /proc).
func childPIDs(of pid: Int32) -> [Int32] {
    let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []
    return tasks.flatMap { task -> [Int32] in
        let text = (try? String(contentsOfFile: "/proc/\(pid)/task/\(task)/children", encoding: .utf8)) ?? ""
        return text.split(separator: " ").compactMap { Int32($0) }
    }
}
