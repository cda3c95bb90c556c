import CachedProtocol
import CachedTestSupport
import Foundation
import Testing

@Suite("Daemon: JSON-RPC errors and limits")
struct DaemonErrorTests {
    static let limitsConfig = """
        [limits]
        max_line_bytes = 4096
        max_depth = 16
        max_batch = 50
        """

    func code(_ answer: JSONValue) -> Int? { answer["error"]?["code"]?.intValue }

    @Test func everyErrorCodeAndTheConnectionStaysUsable() throws {
        let daemon = try DaemonProcess(config: Self.limitsConfig)
        let c = try daemon.client()
        let cases: [(String, Int, JSONValue)] = [
            ("not json", -32700, .null),
            ("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"get\",\"params\":{\"key\":\"Stu", -32700, .null),
            ("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"get\",\"params\":{\"key\":\"INVALID_UTF8\",\"identity\":1}}", -32700, .null),
            ("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"get\",\"params\":{\"key\":\"\\ud800abc\",\"identity\":1}}", -32700, .null),
            ("{\"jsonrpc\":\"1.0\",\"id\":2,\"method\":\"ping\"}", -32600, .number("2")),
            ("{\"jsonrpc\":\"2.0\",\"id\":3}", -32600, .number("3")),
            ("{\"jsonrpc\":\"2.0\",\"id\":4,\"method\":\"flushall\"}", -32601, .number("4")),
            ("{\"jsonrpc\":\"2.0\",\"id\":5,\"method\":\"get\",\"params\":{\"key\":\"ab\",\"identity\":1}}", -32602, .number("5")),
            ("{\"jsonrpc\":\"2.0\",\"id\":6,\"method\":\"get\",\"params\":{\"key\":\"Student\",\"identity\":1.5}}", -32602, .number("6")),
            ("{\"jsonrpc\":\"2.0\",\"id\":7,\"method\":\"get\",\"params\":{\"key\":\"Stu\\u0000dent\",\"identity\":1}}", -32602, .number("7")),
            ("{\"jsonrpc\":\"2.0\",\"id\":8,\"method\":\"get\",\"params\":[\"Student\",1]}", -32602, .number("8")),
            ("{\"jsonrpc\":\"2.0\",\"id\":9,\"method\":\"set\",\"params\":{\"key\":\"Student\",\"identity\":1}}", -32602, .number("9")),
            ("{\"jsonrpc\":\"2.0\",\"id\":10,\"method\":\"set\",\"params\":{\"key\":\"Student\",\"identity\":1,\"value\":5}}", -32602, .number("10")),
            ("{\"jsonrpc\":\"2.0\",\"id\":11,\"method\":\"set\",\"params\":{\"key\":\"Student\",\"identity\":1,\"value\":\"x\",\"ttl\":\"10\"}}", -32602, .number("11")),
            ("{\"jsonrpc\":\"2.0\",\"id\":12,\"method\":\"set\",\"params\":{\"key\":\"Student\",\"identity\":1,\"value\":\"%%\",\"encoding\":\"base64\"}}", -32602, .number("12")),
            ("{\"jsonrpc\":\"2.0\",\"id\":13,\"method\":\"ping\",\"params\":{\"x\":1}}", -32602, .number("13")),
            (String(repeating: "[", count: 4000), -32001, .null),
            ("{\"jsonrpc\":\"2.0\",\"id\":14,\"method\":\"get\",\"params\":{\"key\":\"Student\",\"identity\":1,\"args\":" + String(repeating: "[", count: 20) + String(repeating: "]", count: 20) + "}}", -32001, .null),
        ]
        for (line, expected, id) in cases {
            var bytes = Array(line.utf8)
            if let range = line.range(of: "INVALID_UTF8") {  // a raw 0xFF byte inside a string
                let start = line.utf8.distance(from: line.utf8.startIndex, to: range.lowerBound)
                bytes.replaceSubrange(start..<(start + 12), with: [0x53, 0x74, 0xFF, 0x75])
            }
            try c.send(bytes + [UInt8(ascii: "\n")])
            let answer = try c.readJSON()
            #expect(code(answer) == expected, "\(line.prefix(60)) -> \(answer)")
            #expect(answer["id"] == id, "\(line.prefix(60))")
            #expect(answer["jsonrpc"] == .string("2.0"))
        }
        #expect(try c.call("ping")["result"] == .string("pong"))
        #expect(daemon.isRunning)
    }

    @Test func idsAreEchoedExactly() throws {
        let daemon = try DaemonProcess()
        let c = try daemon.client()
        for raw in ["1.5", "9007199254740993", "-0", "1e400", "\"x\\u0041\"", "null", "\"\""] {
            try c.send("{\"jsonrpc\":\"2.0\",\"id\":\(raw),\"method\":\"ping\"}\n")
            let line = try #require(try c.readLine())
            let expectedID = raw == "\"x\\u0041\"" ? "\"xA\"" : raw
            #expect(line == "{\"jsonrpc\":\"2.0\",\"id\":\(expectedID),\"result\":\"pong\"}")
        }
    }

    @Test func batchesAndNotifications() throws {
        let daemon = try DaemonProcess(config: Self.limitsConfig)
        let c = try daemon.client()
        try c.send("[]\n")
        #expect(code(try c.readJSON()) == -32600)
        try c.send("[1,2,3]\n")
        let three = try c.readJSON()
        guard case .array(let errors) = three else { Issue.record("expected an array: \(three)"); return }
        #expect(errors.count == 3)
        #expect(errors.allSatisfy { code($0) == -32600 && $0["id"] == .null })
        try c.send("[{\"jsonrpc\":\"2.0\",\"method\":\"ping\"\n")
        #expect(code(try c.readJSON()) == -32700)
        // A notification is executed but not answered; an all-notification batch gets no line.
        try c.send(requestLine(id: nil, method: "set", params: ["key": .string("Student"), "identity": int(1), "value": .string("n")]) + "\n")
        try c.send("[" + requestLine(id: nil, method: "ping") + "," + requestLine(id: nil, method: "ping") + "]\n")
        let mixed = "[" + [
            requestLine(id: int(1), method: "get", params: ["key": .string("Student"), "identity": int(1)]),
            requestLine(id: nil, method: "ping"),
            requestLine(id: .string("b"), method: "nope"),
        ].joined(separator: ",") + "]\n"
        try c.send(mixed)
        let batch = try c.readJSON()
        guard case .array(let answers) = batch else { Issue.record("expected an array: \(batch)"); return }
        #expect(answers.count == 2)
        let byID = Dictionary(uniqueKeysWithValues: answers.map { ($0["id"]!, $0) })
        #expect(byID[int(1)]?["result"] == .object(["hit": .bool(true), "value": .string("n")]))
        #expect(code(byID[.string("b")]!) == -32601)
        let tooBig = "[" + Array(repeating: requestLine(id: int(1), method: "ping"), count: 51).joined(separator: ",") + "]\n"
        try c.send(tooBig)
        #expect(code(try c.readJSON()) == -32001)
        #expect(try c.call("ping")["result"] == .string("pong"))
    }

    @Test func overLongLineGetsAnErrorThenClose() throws {
        let daemon = try DaemonProcess(config: Self.limitsConfig)
        let other = try daemon.client()
        let c = try daemon.client()
        try c.send([UInt8](repeating: UInt8(ascii: "a"), count: 4097))
        let answer = try c.readJSON()
        #expect(code(answer) == -32001)
        #expect(answer["error"]?["data"]?["limit"] == .string("max_line_bytes"))
        #expect(c.isClosedByPeer())
        // A line of exactly the limit is fine.
        let exact = "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}"
        let padded = exact + String(repeating: " ", count: 4096 - exact.utf8.count) + "\n"
        try other.send(padded)
        #expect(try other.readJSON()["result"] == .string("pong"))
        // A line one byte over the limit that arrives whole, newline included, is refused too.
        let whole = try daemon.client()
        try whole.send(exact + String(repeating: " ", count: 4097 - exact.utf8.count) + "\n")
        #expect(code(try whole.readJSON()) == -32001)
        #expect(whole.isClosedByPeer())
    }

    @Test func pipelinedRequestsAreAllAnsweredByID() throws {
        let f = try Fixture(.redisUnix)
        let c = try f.daemon.client()
        var payload = ""
        for i in 0..<2000 {
            payload += requestLine(id: int(i), method: i % 2 == 0 ? "set" : "get",
                                   params: ["key": .string("Student"), "identity": int(i / 2), "value": .string("v\(i / 2)")]
                                        .filter { i % 2 == 0 || $0.key != "value" }) + "\n"
        }
        try c.send(payload)
        var seen = Set<Int>()
        for _ in 0..<2000 {
            let answer = try c.readJSON()
            let id = try #require(answer["id"]?.intValue)
            #expect(seen.insert(id).inserted)
            if id % 2 == 1 {
                #expect(answer["result"]?["value"] == .string("v\(id / 2)"))
            } else {
                #expect(answer["result"]?["stored"] == .bool(true))
            }
        }
        #expect(seen.count == 2000)
    }

    @Test func halfClosedClientStillGetsItsAnswers() throws {
        let daemon = try DaemonProcess()
        let c = try daemon.client()
        try c.send(requestLine(id: int(1), method: "ping") + "\n" + requestLine(id: int(2), method: "ping") + "\n")
        c.shutdownWrite()
        #expect(try c.readJSON()["id"] == int(1))
        #expect(try c.readJSON()["id"] == int(2))
        #expect(c.isClosedByPeer())
    }

    @Test func connectionLimit() throws {
        let daemon = try DaemonProcess(config: "[limits]\nmax_connections = 3\n")
        // Start from a known count: the harness's probe connection must be gone (closing is asynchronous).
        let first = try daemon.client()
        #expect(try waitUntil { try first.call("stats")["result"]?["connections"]?["current"]?.intValue == 1 })
        let second = try daemon.client()
        let third = try daemon.client()
        for c in [first, second, third] { #expect(try c.call("ping")["result"] == .string("pong")) }
        let fourth = try daemon.client()
        let answer = try fourth.readJSON()
        #expect(code(answer) == -32001)
        #expect(answer["error"]?["data"]?["limit"] == .string("max_connections"))
        #expect(fourth.isClosedByPeer())
        // The limit does not hurt the connections already served.
        #expect(try second.call("ping")["result"] == .string("pong"))
    }

    @Test func badConfigurationIsReported() throws {
        let dir = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        for (config, message) in [
            ("sockett = \"/x\"", "unknown setting sockett"),
            ("[limits]\nmax_depth = \"deep\"", "limits.max_depth must be an integer"),
            ("[keys.Student]\nttl = -1", "keys.Student.ttl must be between"),
            ("redis = \"http://x\"", "invalid Redis URL"),
            ("this is = not toml [", "invalid TOML"),
        ] {
            try config.write(toFile: dir + "/c.toml", atomically: true, encoding: .utf8)
            let p = try ChildProcess(DaemonProcess.binary, ["--config", dir + "/c.toml", "--socket", dir + "/s.sock"], outputPath: dir + "/out")
            let status = p.wait()
            let output = (try? String(contentsOfFile: dir + "/out", encoding: .utf8)) ?? ""
            try? FileManager.default.removeItem(atPath: dir + "/out")
            #expect(status != 0, "\(config)")
            #expect(output.contains(message), "\(config): \(output)")
        }
    }

    @Test func sigtermStopsCleanlyAndRemovesTheSocket() throws {
        let daemon = try DaemonProcess()
        #expect(FileManager.default.fileExists(atPath: daemon.socketPath))
        #expect(daemon.stop(signal: SIGTERM) == 0)
        #expect(!FileManager.default.fileExists(atPath: daemon.socketPath))
    }
}
