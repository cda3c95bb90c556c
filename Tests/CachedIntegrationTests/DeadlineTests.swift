import CachedProtocol
import CachedTestSupport
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Every request has a deadline (its `timeout`, else `[limits] request_timeout`): a get whose fill cannot
/// finish in time is answered -32009 at it, within 50 ms, for every way a get waits; the work others wait
/// for goes on for them.
@Suite("Daemon: request deadlines", .serialized)
struct DeadlineTests {
    static let entry: [String: JSONValue] = ["key": .string("Student"), "identity": .number("12")]
    /// How late after its deadline an answer may come on this VM.
    static let slack = 0.05

    static func get(_ timeout: Double?, _ entry: [String: JSONValue] = entry) -> [String: JSONValue] {
        guard let timeout else { return entry }
        return entry.merging(["timeout": .number(String(timeout))]) { $1 }
    }

    /// Reads the answer of a request sent at `sent`; expects the deadline error within the slack of `timeout`.
    func expectDeadline(_ answer: JSONValue, sent: Date, timeout: Double, sourceLocation: SourceLocation = #_sourceLocation) {
        let elapsed = Date().timeIntervalSince(sent)
        #expect(answer["error"]?["code"] == .number("-32009"), "answer: \(answer)", sourceLocation: sourceLocation)
        #expect(answer["error"]?["data"]?["timeout"] == .number(String(timeout)), sourceLocation: sourceLocation)
        #expect(elapsed >= timeout - 0.005, "answered \(elapsed) s after it was sent, before its deadline", sourceLocation: sourceLocation)
        #expect(elapsed <= timeout + Self.slack, "answered \(elapsed) s after it was sent, past the deadline's slack", sourceLocation: sourceLocation)
        print("deadline \(timeout) s answered after \(String(format: "%.1f", elapsed * 1000)) ms")
    }

    // MARK: Each way of waiting

    @Test func aHandlerFillAnswersAtTheDeadlineAndGoesOnForTheOthers() throws {
        let redis = try RedisServer()
        let daemon = try DaemonProcess(config: FillWorker.config(delay: 1.0), arguments: ["--redis", redis.unixURL])
        let early = try daemon.client()
        let patient = try daemon.client()
        let sent = Date()
        try early.send(requestLine(id: .number("1"), method: "get", params: Self.get(0.3)) + "\n")
        try patient.send(requestLine(id: .number("2"), method: "get", params: Self.get(5)) + "\n")
        expectDeadline(try early.readJSON(timeout: 5), sent: sent, timeout: 0.3)
        let value = try patient.readJSON(timeout: 5)
        #expect(value["result"]?["value"]?.stringValue?.hasPrefix("Student:12") == true, "the fill went on: \(value)")
        #expect(Date().timeIntervalSince(sent) >= 0.9)
        // And it was stored: the early caller's next get is a hit.
        #expect(try early.call("get", Self.get(0.3))["result"]?["hit"] == .bool(true))
        let stats = try early.call("stats")["result"]
        #expect(stats?["methods"]?["get"]?["errorCodes"]?["-32009"] == .number("1"), "stats: \(stats?["methods"]?["get"] ?? .null)")
    }

    @Test func aLeaseWaiterAnswersAtTheDeadlineAndNeverGetsTheLease() throws {
        let redis = try RedisServer()
        let daemon = try DaemonProcess(arguments: ["--redis", redis.unixURL])
        let holder = try daemon.client()
        let token = try #require(try holder.call("get", Self.entry)["result"]?["lease"]?.stringValue)
        let leaving = try daemon.client()
        let sent = Date()
        try leaving.send(requestLine(id: .number("1"), method: "get", params: Self.get(0.3)) + "\n")
        let next = try daemon.client()
        try next.send(requestLine(id: .number("2"), method: "get", params: Self.entry) + "\n")
        expectDeadline(try leaving.readJSON(timeout: 5), sent: sent, timeout: 0.3)
        // The holder gives up: the lease goes to the waiter still there, at once.
        #expect(try holder.call("release", Self.entry.merging(["lease": .string(token)]) { $1 })["result"]?["released"] == .bool(true))
        let handed = Date()
        let answer = try next.readJSON(timeout: 3)
        #expect(answer["result"]?["lease"]?.stringValue != nil, "the next waiter got the lease: \(answer)")
        #expect(Date().timeIntervalSince(handed) < 0.5)
        let fills = try holder.call("stats")["result"]?["fills"]
        #expect(fills?["deadlinesPassed"] == .number("1"), "fills: \(fills ?? .null)")
    }

    @Test func anExpiredLeasePassesOverTheCallerWhoLeft() throws {
        let redis = try RedisServer()
        let daemon = try DaemonProcess(config: "[keys.Student]\nlease_timeout = 0.6\n", arguments: ["--redis", redis.unixURL])
        let holder = try daemon.client()
        _ = try #require(try holder.call("get", Self.entry)["result"]?["lease"]?.stringValue)
        let granted = Date()
        let leaving = try daemon.client()
        try leaving.send(requestLine(id: .number("1"), method: "get", params: Self.get(0.2)) + "\n")
        let next = try daemon.client()
        try next.send(requestLine(id: .number("2"), method: "get", params: Self.entry) + "\n")
        #expect(try leaving.readJSON(timeout: 3)["error"]?["code"] == .number("-32009"))
        // The holder's lease expires at 0.6 s: the waiter still there holds it right after, not the one who left.
        let answer = try next.readJSON(timeout: 3)
        #expect(answer["result"]?["lease"]?.stringValue != nil, "answer: \(answer)")
        let elapsed = Date().timeIntervalSince(granted)
        #expect(elapsed >= 0.55 && elapsed < 0.9, "handed on after \(elapsed) s")
    }

    @Test func aFleetWaitAnswersAtTheDeadline() throws {
        let redis = try RedisServer()
        let one = try DaemonProcess(arguments: ["--redis", redis.unixURL])
        let two = try DaemonProcess(arguments: ["--redis", redis.unixURL])
        // A client of daemon one holds the lease, under the fleet's fill lock.
        let holder = try one.client()
        let token = try #require(try holder.call("get", Self.entry)["result"]?["lease"]?.stringValue)
        // Daemon two's asker waits for the lock's holder: its deadline ends the wait.
        let leaving = try two.client()
        let sent = Date()
        try leaving.send(requestLine(id: .number("1"), method: "get", params: Self.get(0.4)) + "\n")
        expectDeadline(try leaving.readJSON(timeout: 5), sent: sent, timeout: 0.4)
        // Another asker of daemon two waits in its place, and gets the holder's value.
        let patient = try two.client()
        try patient.send(requestLine(id: .number("2"), method: "get", params: Self.get(5)) + "\n")
        Thread.sleep(forTimeInterval: 0.2)
        #expect(
            try holder.call("set", Self.entry.merging(["value": .string("filled"), "lease": .string(token)]) { $1 })["result"]?["stored"]
                == .bool(true))
        let answer = try patient.readJSON(timeout: 5)
        #expect(answer["result"]?["value"] == .string("filled"), "answer: \(answer)")
    }

    @Test func aGetWhileRedisIsStalledAnswersAtTheDeadline() throws {
        let redis = try RedisServer()
        let daemon = try DaemonProcess(config: "[redis_options]\ncommand_timeout = 3\n", arguments: ["--redis", redis.unixURL])
        let client = try daemon.client()
        #expect(try client.call("ping")["result"] == .string("pong"))
        redis.send(signal: SIGSTOP)
        defer { redis.send(signal: SIGCONT) }
        var sent = Date()
        try client.send(requestLine(id: .number("1"), method: "get", params: Self.get(0.3)) + "\n")
        expectDeadline(try client.readJSON(timeout: 5), sent: sent, timeout: 0.3)
        sent = Date()
        try client.send(
            requestLine(id: .number("2"), method: "set", params: Self.entry.merging(["value": .string("x"), "timeout": .number("0.25")]) { $1 })
                + "\n")
        expectDeadline(try client.readJSON(timeout: 5), sent: sent, timeout: 0.25)
        redis.send(signal: SIGCONT)
        // Healed: the daemon answers normally again (its connection may have been replaced meanwhile).
        #expect(try waitUntil(timeout: 10) { try client.call("get", Self.get(1))["result"] != nil })
    }

    @Test func aKeyWithAHandlerWhileRedisIsDownAnswersAtTheDeadline() throws {
        // Redis down: the handler answers in its place (the fallback, not stored), slower than the deadline.
        let redis = try RedisServer()
        let daemon = try DaemonProcess(config: FillWorker.config(delay: 1.0), arguments: ["--redis", redis.unixURL])
        let client = try daemon.client()
        redis.stop()
        #expect(try waitUntil(timeout: 5) { try client.call("get", Self.get(2, ["key": .string("Other"), "identity": .number("1")]))["error"]?["code"] == .number("-32000") })
        let sent = Date()
        try client.send(requestLine(id: .number("1"), method: "get", params: Self.get(0.3)) + "\n")
        expectDeadline(try client.readJSON(timeout: 5), sent: sent, timeout: 0.3)
    }

    // MARK: Shapes

    @Test func theDefaultRequestTimeoutApplies() throws {
        let daemon = try DaemonProcess(config: "[limits]\nrequest_timeout = 0.4\n" + FillWorker.config(delay: 2))
        let client = try daemon.client()
        let sent = Date()
        try client.send(requestLine(id: .number("1"), method: "get", params: Self.entry) + "\n")
        expectDeadline(try client.readJSON(timeout: 5), sent: sent, timeout: 0.4)
    }

    @Test func aBatchMemberHasItsOwnDeadline() throws {
        let daemon = try DaemonProcess(config: FillWorker.config(delay: 0.8))
        let client = try daemon.client()
        let sent = Date()
        let members: [JSONValue] = [
            .object(["jsonrpc": .string("2.0"), "id": .number("1"), "method": .string("get"), "params": .object(Self.get(0.2))]),
            .object(["jsonrpc": .string("2.0"), "id": .number("2"), "method": .string("ping"), "params": .object(["timeout": .number("0.1")])]),
            .object(["jsonrpc": .string("2.0"), "id": .number("3"), "method": .string("get"), "params": .object(Self.get(5))]),
        ]
        try client.send(jsonText(.array(members)) + "\n")
        let answer = try client.readJSON(timeout: 5)
        guard case .array(let answers) = answer, answers.count == 3 else {
            Issue.record("not a batch answer of 3: \(answer)")
            return
        }
        #expect(answers[0]["error"]?["code"] == .number("-32009"))
        #expect(answers[1]["result"] == .string("pong"))
        #expect(answers[2]["result"]?["value"]?.stringValue?.hasPrefix("Student:12") == true)
        #expect(Date().timeIntervalSince(sent) >= 0.7, "the batch waits for its slowest member")
    }

    @Test(arguments: ["0", "-1", "\"1\"", "true", "1e9", "86401"])
    func aBadTimeoutIsInvalidParams(timeout: String) throws {
        let daemon = try DaemonProcess()
        let client = try daemon.client()
        for method in ["get", "ping"] {
            let params = method == "get" ? #"{"key":"Student","identity":1,"timeout":\#(timeout)}"# : #"{"timeout":\#(timeout)}"#
            try client.send(#"{"jsonrpc":"2.0","id":1,"method":"\#(method)","params":\#(params)}"# + "\n")
            let answer = try client.readJSON()
            #expect(answer["error"]?["code"] == .number("-32602"), "\(method) timeout \(timeout): \(answer)")
            #expect(answer["error"]?["message"]?.stringValue?.contains("timeout") == true)
        }
    }

    @Test func aTimelyAnswerIsUntouched() throws {
        let daemon = try DaemonProcess(config: FillWorker.config(delay: 0.1))
        let client = try daemon.client()
        // A fractional timeout in the clients' canonical shape (the fast path) and in another shape.
        let first = try client.call("get", Self.get(2.5))
        #expect(first["result"]?["value"]?.stringValue?.hasPrefix("Student:12") == true, "\(first)")
        try client.send(#"{"params":{"timeout":2.5,"identity":12,"key":"Student"},"method":"get","id":7,"jsonrpc":"2.0"}"# + "\n")
        #expect(try client.readJSON()["result"]?["hit"] == .bool(true))
    }
}
