import CachedClient
import CachedProtocol
import CachedTestSupport
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

// The Swift client's runner of the conformance suite (clients/conformance/README.md): every case of
// clients/conformance/cases.json, for every store it lists, is one test argument (`<store>-<name>`),
// run against a real daemon started by clients/conformance/harness.py (one harness per store, `reset`
// before each case). The daemon is the same debug build the other tests use (`$CACHED_BIN`, else next
// to the test bundle). Steps map onto CachedClient's public API:
// get -> get(key:identity:hashKey:hashId:lease: false, timeout:); set -> set(..., value: [UInt8], ttl:);
// delete/deleteHash -> the counts as booleans; fetch -> get(..., timeout:, fill:) (the lease flow of
// CachedClient+Fill.swift); call -> call(_:params:); clients named `near...` -> CachedClient(nearCache: 1000).

// MARK: - The cases

/// One case for one store.
struct ConformanceCase: Sendable, CustomTestStringConvertible {
    var store: String
    var name: String
    var steps: [JSONValue]
    var requires: [String]
    var testDescription: String { "\(store)-\(name)" }

    static let directory = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("clients/conformance")

    /// Every (store, case) of cases.json, store by store; a case that cannot be read fails its test.
    static let all: [ConformanceCase] = {
        guard let data = FileManager.default.contents(atPath: directory.appendingPathComponent("cases.json").path),
            let document = try? JSONParser.parse(Array(data)), let cases = document["cases"]?.arrayValue
        else {
            return [ConformanceCase(store: "embedded", name: "cases.json-unreadable", steps: [], requires: ["unreadable"])]
        }
        var out: [ConformanceCase] = []
        for store in ["embedded", "redis"] {
            for c in cases {
                let stores = c["stores"]?.arrayValue?.compactMap(\.stringValue) ?? ["embedded", "redis"]
                guard stores.contains(store) else { continue }
                out.append(
                    ConformanceCase(
                        store: store, name: c["name"]?.stringValue ?? "?", steps: c["steps"]?.arrayValue ?? [],
                        requires: c["requires"]?.arrayValue?.compactMap(\.stringValue) ?? []))
            }
        }
        return out
    }()
}

extension JSONValue {
    subscript(_ member: String) -> JSONValue? { objectValue?[member] }
    var arrayValue: [JSONValue]? {
        if case .array(let a) = self { return a }
        return nil
    }
    var numberText: String? {
        if case .number(let n) = self { return n }
        return nil
    }
    var doubleValue: Double? { numberText.flatMap(Double.init) }
    var boolValue: Bool? {
        if case .bool(let b) = self { return b }
        return nil
    }
}

// MARK: - The harness

/// clients/conformance/harness.py as a child process, with pipes on its stdin and stdout.
final class ConformanceHarness: @unchecked Sendable {
    let store: String
    let pid: pid_t
    private let input: Int32
    private let output: FileHandle
    private var buffered: [UInt8] = []
    private let lock = NSLock()
    private let queue = DispatchQueue(label: "conformance-harness")
    private(set) var socket = ""

    init(store: String) throws {
        self.store = store
        var toChild: [Int32] = [0, 0]
        var fromChild: [Int32] = [0, 0]
        guard pipe(&toChild) == 0, pipe(&fromChild) == 0 else { throw HarnessError("pipe failed") }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, toChild[0], 0)
        posix_spawn_file_actions_adddup2(&actions, fromChild[1], 1)
        for fd in [toChild[0], toChild[1], fromChild[0], fromChild[1]] { posix_spawn_file_actions_addclose(&actions, fd) }
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var empty = sigset_t()
        sigemptyset(&empty)
        posix_spawnattr_setsigmask(&attributes, &empty)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for s in [SIGPIPE, SIGTERM, SIGINT, SIGHUP, SIGCHLD] { sigaddset(&defaults, s) }
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        let harness = ConformanceCase.directory.appendingPathComponent("harness.py").path
        let arguments: [String] = ["/usr/bin/env", "python3", harness, "--store", store, "--bin", DaemonProcess.binary]
        let argv: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, "/usr/bin/env", &actions, &attributes, argv, environ)
        close(toChild[0])
        close(fromChild[1])
        guard rc == 0 else {
            close(toChild[1])
            close(fromChild[0])
            throw HarnessError("posix_spawn harness.py failed: \(rc)")
        }
        // Our ends must not leak into the daemons that later tests spawn.
        _ = fcntl(toChild[1], F_SETFD, FD_CLOEXEC)
        _ = fcntl(fromChild[0], F_SETFD, FD_CLOEXEC)
        self.pid = pid
        self.input = toChild[1]
        self.output = FileHandle(fileDescriptor: fromChild[0], closeOnDealloc: true)
        let ready = try readLine()
        guard case .string(let socket)? = ready["socket"] else {
            throw HarnessError("harness.py did not start: \(jsonText(ready))")
        }
        self.socket = socket
    }

    deinit {
        close(input)  // EOF: the harness stops everything and removes its temp dir
        var status: Int32 = 0
        waitpid(pid, &status, 0)
    }

    private func readLine() throws -> JSONValue {
        while true {
            if let end = buffered.firstIndex(of: UInt8(ascii: "\n")) {
                let line = Array(buffered[..<end])
                buffered.removeSubrange(...end)
                return try JSONParser.parse(line)
            }
            let chunk = output.availableData
            guard !chunk.isEmpty else { throw HarnessError("harness.py exited") }
            buffered += chunk
        }
    }

    /// Sends one command; its answer (`ok` checked).
    func commandSync(_ members: [String: JSONValue]) throws -> JSONValue {
        lock.lock()
        defer { lock.unlock() }
        var line = Array(jsonText(.object(members)).utf8)
        line.append(UInt8(ascii: "\n"))
        var offset = 0
        while offset < line.count {
            let n = line[offset...].withUnsafeBytes { write(input, $0.baseAddress, $0.count) }
            guard n > 0 else { throw HarnessError("cannot write to harness.py") }
            offset += n
        }
        let answer = try readLine()
        guard answer["ok"] == .bool(true) else {
            throw HarnessError("harness \(members["cmd"]?.stringValue ?? "?") failed: \(answer["error"]?.stringValue ?? jsonText(answer))")
        }
        return answer
    }

    /// ``commandSync(_:)`` off the cooperative pool (the harness may take a moment: a daemon restart).
    func command(_ name: String, _ members: [String: JSONValue] = [:]) async throws -> JSONValue {
        var members = members
        members["cmd"] = .string(name)
        let message = members
        return try await withCheckedThrowingContinuation { continuation in
            queue.async {
                continuation.resume(with: Result { try self.commandSync(message) })
            }
        }
    }

    func quit() {
        _ = try? commandSync(["cmd": .string("quit")])
    }
}

/// One harness at a time, kept across the tests of its store.
final class HarnessPool: @unchecked Sendable {
    static let shared = HarnessPool()
    private let lock = NSLock()
    private var current: ConformanceHarness?

    func harness(for store: String) throws -> ConformanceHarness {
        lock.lock()
        defer { lock.unlock() }
        if let current, current.store == store, kill(current.pid, 0) == 0 { return current }
        current?.quit()
        current = nil
        let harness = try ConformanceHarness(store: store)
        current = harness
        return harness
    }
}

// MARK: - Running steps

/// The error a step's fill throws (a class: the runner checks that fetch rethrows this very object).
final class ConformanceFillError: Error, CustomStringConvertible, @unchecked Sendable {
    let message: String
    init(_ message: String) { self.message = message }
    var description: String { message }
}

final class Flag: @unchecked Sendable {
    private let lock = NSLock()
    private var value = false
    func set() { lock.withLock { value = true } }
    var isSet: Bool { lock.withLock { value } }
}

/// What a client did, normalized for comparison with a step's `expect`.
enum Outcome: Sendable {
    case get(hit: Bool, value: [UInt8]?, stale: Bool)
    case ok(Bool)
    case deleted(Bool)
    case fetch(value: [UInt8]?, fillCalled: Bool)
    case result(JSONValue)
    case fillError(String)
    case error(code: Int?, message: String)
    case none
}

struct ConformanceRunner {
    let harness: ConformanceHarness
    var clients: [String: CachedClient] = [:]
    var pending: [String: (step: JSONValue, label: String, task: Task<Outcome, Never>)] = [:]

    static func bytes(_ value: JSONValue?) throws -> [UInt8]? {
        guard let value, value != .null else { return nil }
        if let text = value["utf8"]?.stringValue { return Array(text.utf8) }
        if let b64 = value["base64"]?.stringValue {
            guard let data = Data(base64Encoded: b64) else { throw HarnessError("bad base64 in case: \(b64)") }
            return Array(data)
        }
        if let text = value["repeat"]?.stringValue, let count = value["count"]?.numberText.flatMap(Int.init) {
            let unit = Array(text.utf8)
            var out: [UInt8] = []
            out.reserveCapacity(unit.count * count)
            for _ in 0..<count { out += unit }
            return out
        }
        throw HarnessError("unknown value in case: \(jsonText(value))")
    }

    static func identity(_ value: JSONValue?) throws -> Identity {
        switch value {
        case .number(let digits)?: return .integer(digits)
        case .string(let s)?: return .string(s)
        case .object(let o)?:
            if case .string(let digits)? = o["bigint"] { return .integer(digits) }
        default: break
        }
        throw HarnessError("unknown identity in case: \(value.map(jsonText) ?? "nil")")
    }

    static func duration(seconds: JSONValue?) -> Duration? {
        seconds?.doubleValue.map { .nanoseconds(Int64(($0 * 1e9).rounded())) }
    }

    mutating func client(_ name: String) -> CachedClient {
        if let c = clients[name] { return c }
        let c = CachedClient(socketPath: harness.socket, nearCache: name.hasPrefix("near") ? 1000 : 0)
        clients[name] = c
        return c
    }

    static func failure(_ error: any Error) -> Outcome {
        if let e = error as? CachedError { return .error(code: e.code.rawValue, message: e.message) }
        return .error(code: nil, message: "\(type(of: error)): \(error)")
    }

    /// Runs one client step (not await/sleep/harness ops).
    static func perform(_ step: JSONValue, on client: CachedClient) async -> Outcome {
        do {
            let op = step["op"]?.stringValue ?? ""
            let key = step["key"]?.stringValue ?? ""
            let hashKey = step["hashKey"]?.stringValue
            let hashId = try step["hashId"].map { try identity($0) }
            let timeout = duration(seconds: step["timeout"])
            switch op {
            case "get":
                let r = try await client.get(
                    key: key, identity: try identity(step["identity"]), hashKey: hashKey, hashId: hashId, lease: false, timeout: timeout)
                return .get(hit: r.hit, value: r.bytes, stale: r.stale)
            case "set":
                let ttl = step["ttl"]?.doubleValue
                let stored = try await client.set(
                    key: key, identity: try identity(step["identity"]), hashKey: hashKey, hashId: hashId,
                    value: try bytes(step["value"]) ?? [], ttl: ttl)
                return .ok(stored)
            case "delete":
                let n = try await client.delete(key: key, identity: try identity(step["identity"]), hashKey: hashKey, hashId: hashId)
                return .deleted(n == 1)
            case "deleteHash":
                return .deleted(try await client.deleteHash(hashKey: hashKey ?? "", hashId: hashId ?? .integer("0")) == 1)
            case "call":
                return .result(try await client.call(step["method"]?.stringValue ?? "", params: step["params"]?.objectValue))
            case "fetch":
                let fill = step["fill"] ?? .null
                let delay = fill["delayMs"]?.numberText.flatMap(Int.init) ?? 0
                let fillError = fill["error"]?.stringValue.map(ConformanceFillError.init)
                let fillValue = try bytes(fill["value"])
                let called = Flag()
                do {
                    let value = try await client.get(
                        key: key, identity: try identity(step["identity"]), hashKey: hashKey, hashId: hashId, timeout: timeout
                    ) {
                        called.set()
                        if delay > 0 { try await Task.sleep(for: .milliseconds(delay)) }
                        if let fillError { throw fillError }
                        return fillValue
                    }
                    return .fetch(value: value, fillCalled: called.isSet)
                } catch let error as ConformanceFillError {
                    guard error === fillError else { return .error(code: nil, message: "another fill error object: \(error)") }
                    return .fillError(error.message)
                }
            default:
                throw HarnessError("unknown op \(op)")
            }
        } catch {
            return failure(error)
        }
    }

    /// nil when `outcome` satisfies `expect`, else what differs.
    static func mismatch(_ expect: JSONValue?, _ outcome: Outcome) throws -> String? {
        guard let expect else {
            if case .error(let code, let message) = outcome { return "expected success, got error \(code.map(String.init) ?? "-") \(message)" }
            if case .fillError(let m) = outcome { return "expected success, got the fill's error \(m)" }
            return nil
        }
        if let want = expect["error"] {
            switch outcome {
            case .fillError(let message):
                if want["fill"]?.stringValue == message { return nil }
                return "expected \(jsonText(want)), got the fill's error \(message)"
            case .error(let code, let message):
                if let fill = want["fill"]?.stringValue { return "expected the fill's error \(fill), got error \(code.map(String.init) ?? "-") \(message)" }
                guard let wantCode = want["code"]?.numberText.flatMap(Int.init), code == wantCode else {
                    return "expected error \(jsonText(want)), got \(code.map(String.init) ?? "a transport error") \(message)"
                }
                if let contains = want["messageContains"]?.stringValue, !message.contains(contains) {
                    return "expected the message to contain \(contains), got \(message)"
                }
                return nil
            default:
                return "expected error \(jsonText(want)), got \(outcome)"
            }
        }
        func value(_ got: [UInt8]?) throws -> String? {
            let wanted = try bytes(expect["value"])
            if wanted == got { return nil }
            return "value: expected \(describe(wanted)), got \(describe(got))"
        }
        var problems: [String] = []
        switch outcome {
        case .get(let hit, let got, let stale):
            if let w = expect["hit"]?.boolValue, w != hit { problems.append("hit: expected \(w), got \(hit)") }
            if expect["value"] != nil, let p = try value(got) { problems.append(p) }
            if let w = expect["stale"]?.boolValue, w != stale { problems.append("stale: expected \(w), got \(stale)") }
        case .ok(let ok):
            if let w = expect["ok"]?.boolValue, w != ok { problems.append("ok: expected \(w), got \(ok) (stored)") }
        case .deleted(let d):
            if let w = expect["deleted"]?.boolValue, w != d { problems.append("deleted: expected \(w), got \(d)") }
        case .fetch(let got, let fillCalled):
            if expect["value"] != nil, let p = try value(got) { problems.append(p) }
            if let w = expect["fillCalled"]?.boolValue, w != fillCalled { problems.append("fillCalled: expected \(w), got \(fillCalled)") }
        case .result(let r):
            if let w = expect["result"], !matches(w, r) { problems.append("result: expected \(jsonText(w)), got \(jsonText(r))") }
            if let w = expect["reply"], !matches(w, r) { problems.append("reply: expected \(jsonText(w)), got \(jsonText(r))") }
        case .error(let code, let message):
            problems.append("expected \(jsonText(expect)), got error \(code.map(String.init) ?? "-") \(message)")
        case .fillError(let message):
            problems.append("expected \(jsonText(expect)), got the fill's error \(message)")
        case .none:
            break
        }
        return problems.isEmpty ? nil : problems.joined(separator: "; ")
    }

    static func matches(_ expected: JSONValue, _ actual: JSONValue) -> Bool {
        switch (expected, actual) {
        case (.object(let e), _) where e == ["any": .bool(true)]:
            return true
        case (.object(let e), .object(let a)):
            return Set(e.keys) == Set(a.keys) && e.allSatisfy { matches($0.value, a[$0.key]!) }
        case (.array(let e), .array(let a)):
            return e.count == a.count && zip(e, a).allSatisfy { matches($0, $1) }
        case (.number(let e), .number(let a)):
            return e == a || (Double(e) != nil && Double(e) == Double(a))
        default:
            return expected == actual
        }
    }

    static func describe(_ bytes: [UInt8]?) -> String {
        guard let bytes else { return "null" }
        if bytes.count > 80 { return "\(bytes.count) bytes starting \(Array(bytes.prefix(16)))" }
        if let s = String(validating: bytes, as: UTF8.self) { return "\"\(s)\"" }
        return "\(bytes)"
    }

    mutating func run(_ index: Int, _ step: JSONValue) async throws {
        let op = step["op"]?.stringValue ?? ""
        var label = "step \(index) \(jsonText(step))"
        if label.count > 300 { label = String(label.prefix(300)) + "..." }
        switch op {
        case "sleep":
            try await Task.sleep(for: .milliseconds(step["ms"]?.numberText.flatMap(Int.init) ?? 0))
        case "await":
            let handle = step["handle"]?.stringValue ?? ""
            guard let (asyncStep, asyncLabel, task) = pending.removeValue(forKey: handle) else {
                Issue.record("step \(index): no async step \(handle)")
                return
            }
            let outcome = await task.value
            if let problem = try Self.mismatch(asyncStep["expect"], outcome) {
                Issue.record("\(asyncLabel) (awaited at step \(index)): \(problem)")
            }
        case "restart", "stopRedis", "startRedis":
            _ = try await harness.command(op)
        case "redis":
            let answer = try await harness.command("redis", ["args": step["args"] ?? .array([])])
            if let problem = try Self.mismatch(step["expect"], .result(answer["reply"] ?? .null)) {
                Issue.record("\(label): \(problem)")
            }
        default:
            let c = client(step["client"]?.stringValue ?? "a")
            if let handle = step["async"]?.stringValue {
                let task = Task { await Self.perform(step, on: c) }
                pending[handle] = (step, label, task)
                return
            }
            let outcome = await Self.perform(step, on: c)
            if let problem = try Self.mismatch(step["expect"], outcome) {
                Issue.record("\(label): \(problem)")
            }
        }
    }
}

// MARK: - The suite

@Suite("Conformance: clients/conformance/cases.json", .serialized)
struct ConformanceTests {
    /// What this client offers of the cases' optional features.
    static let features: Set<String> = ["nearCache"]

    @Test("conformance case", arguments: ConformanceCase.all)
    func conformance(_ c: ConformanceCase) async throws {
        let missing = Set(c.requires).subtracting(Self.features)
        guard missing.isEmpty else {
            // Swift Testing cannot skip one argument: a case this client cannot run is named and passes.
            print("SKIPPED \(c.testDescription): needs \(missing.sorted().joined(separator: ", "))")
            #expect(c.name != "cases.json-unreadable", "clients/conformance/cases.json could not be read")
            return
        }
        let harness = try HarnessPool.shared.harness(for: c.store)
        _ = try await harness.command("reset")
        var runner = ConformanceRunner(harness: harness)
        for (index, step) in c.steps.enumerated() {
            try await runner.run(index, step)
        }
        for (handle, pending) in runner.pending {
            Issue.record("async step \(handle) never awaited")
            _ = await pending.task.value
        }
        for client in runner.clients.values { await client.close() }
    }
}
