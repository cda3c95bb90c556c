import CachedProtocol
@testable import CachedCore
import CachedTestSupport
import Foundation
import Logging
import NIOCore
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// WorkerPool with real worker processes (Tests/Fixtures/workers/testworker.py).
@Suite("WorkerPool")
struct WorkerPoolTests {
    // MARK: Helpers

    static let fixture = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures/workers/testworker.py").path

    /// Silent, unless WORKER_POOL_TEST_LOG is set (then to stderr, at debug level).
    static let quietLogger: Logger = {
        // As in the `cached` executable: a write to a worker that exited fails with EPIPE instead of killing the tests.
        signal(SIGPIPE, SIG_IGN)
        guard ProcessInfo.processInfo.environment["WORKER_POOL_TEST_LOG"] != nil else {
            return Logger(label: "worker-pool-test") { _ in SwiftLogNoOpLogHandler() }
        }
        var logger = Logger(label: "worker-pool-test") { StreamLogHandler.standardError(label: $0) }
        logger.logLevel = .debug
        return logger
    }()

    func configuration(
        mode: String = "echo", workers: Int = 1, timeout: Double = 5, queueLimit: Int = 100,
        environment: [String: String] = [:]
    ) -> DaemonConfiguration.HandlerConfiguration {
        var configuration = DaemonConfiguration.HandlerConfiguration(command: ["python3", Self.fixture, mode])
        configuration.workers = workers
        configuration.timeout = .seconds(timeout)
        configuration.queueLimit = queueLimit
        configuration.environment = environment
        configuration.restartMinDelay = .milliseconds(100)
        configuration.restartMaxDelay = .seconds(2)
        configuration.maxLineBytes = 1024 * 1024
        return configuration
    }

    func address(_ id: Int, hash: Int? = nil) -> EntryAddress {
        EntryAddress(
            key: "Student", identity: .integer(String(id)),
            hash: hash.map { HashAddress(hashKey: "Class", hashId: .integer(String($0))) })
    }

    func args(_ mode: String? = nil, _ extra: [String: JSONValue] = [:]) -> HandlerArguments {
        var kwargs = extra
        if let mode { kwargs["mode"] = .string(mode) }
        return HandlerArguments(args: [], kwargs: kwargs)
    }

    /// Runs `body` with a started pool, and always shuts it down.
    func withPool<T>(
        _ configuration: DaemonConfiguration.HandlerConfiguration, _ body: (WorkerPool) async throws -> T
    ) async throws -> T {
        let pool = WorkerPool(key: "Student", configuration: configuration, logger: Self.quietLogger)
        await pool.start()
        do {
            let result = try await body(pool)
            await pool.shutdown()
            return result
        } catch {
            await pool.shutdown()
            throw error
        }
    }

    func string(_ buffer: ByteBuffer?) -> String? {
        buffer.map { String(buffer: $0) }
    }

    /// The error a call throws (nil if it succeeded).
    func callError(_ pool: WorkerPool, _ address: EntryAddress, _ arguments: HandlerArguments) async -> CachedError? {
        do {
            _ = try await pool.call(address, arguments: arguments)
            return nil
        } catch {
            return error
        }
    }

    func intStatus(_ pool: WorkerPool, _ name: String) -> Int {
        if case .number(let n)? = pool.status.objectValue?[name] { return Int(n) ?? -1 }
        return -1
    }

    func pid(_ pool: WorkerPool) async throws -> Int32 {
        Int32(string(try await retryingTimeouts { try await pool.call(address(1), arguments: args("pid")) })!)!
    }

    /// Runs `call`, again if it times out: with a short timeout, a worker's start-up (which counts
    /// toward the first call's timeout) can exceed it on a loaded machine.
    func retryingTimeouts<T>(_ call: () async throws -> T) async throws -> T {
        for _ in 0..<3 {
            do {
                return try await call()
            } catch let error as CachedError where error.code == .handlerTimeout {
                continue
            }
        }
        return try await call()
    }

    /// Whether a process (or zombie) with this pid exists.
    static func exists(_ pid: Int32) -> Bool {
        kill(pid, 0) == 0 || errno != ESRCH
    }

    /// Waits for `condition`, up to `timeout` seconds.
    func eventually(_ timeout: Double = 5, _ condition: () -> Bool) async -> Bool {
        let deadline = ContinuousClock.now + .seconds(timeout)
        while ContinuousClock.now < deadline {
            if condition() { return true }
            try? await Task.sleep(for: .milliseconds(20))
        }
        return condition()
    }

    // MARK: Answers

    @Test func echoArgumentsNullErrorAndBinary() async throws {
        try await withPool(configuration()) { pool in
            let value = try await pool.call(
                address(42),
                arguments: HandlerArguments(args: [.number("1"), .string("two")], kwargs: ["flag": .bool(true)]))
            #expect(string(value) == #"Student:42:[1, "two"]:{"flag": true}"#)
            let hashed = try await pool.call(address(7, hash: 3), arguments: HandlerArguments())
            #expect(string(hashed) == "Student:7:[]:{}:Class:3")
            #expect(try await pool.call(address(1), arguments: args("null")) == nil)
            #expect(string(try await pool.call(address(5), arguments: args("object"))) == "5")
            let binary = try await pool.call(address(1), arguments: args("binary"))
            #expect(binary == ByteBuffer(bytes: [0x00, 0xFF, 0xFE, 0x80, 0x41]))

            let error = await callError(pool, address(1), args("error"))
            #expect(error?.code == .handlerError)
            #expect(error?.message == "handler error: origin said no")
            #expect(error?.data?.objectValue?["code"] == .number("7"))
            // An error answer is normal protocol: the same worker keeps serving.
            #expect(string(try await pool.call(address(2), arguments: HandlerArguments())) == "Student:2:[]:{}")
            #expect(pool.callCount == 7)
            #expect(intStatus(pool, "restarts") == 0)
        }
    }

    @Test func environmentAndWorkingDirectory() async throws {
        var config = configuration(environment: ["WORKER_TEST_VAR": "hello"])
        config.workingDirectory = "/tmp"
        try await withPool(config) { pool in
            let value = try await pool.call(address(1), arguments: args("env", ["name": .string("WORKER_TEST_VAR")]))
            #expect(string(value) == "hello")
            #expect(string(try await pool.call(address(1), arguments: args("cwd"))) == "/tmp")
        }
    }

    // MARK: Concurrency and queueing

    @Test func workersRunCallsInParallelAndQueueTheRest() async throws {
        try await withPool(configuration(workers: 4, timeout: 20)) { pool in
            func round(_ calls: Int, delay: String) async throws -> [String] {
                try await withThrowingTaskGroup(of: String?.self) { group in
                    for i in 0..<calls {
                        group.addTask {
                            self.string(try await pool.call(self.address(i), arguments: self.args("slow", ["delay": .number(delay)])))
                        }
                    }
                    var answers: [String] = []
                    for try await answer in group { answers.append(answer ?? "") }
                    return answers
                }
            }
            func pids(_ answers: [String]) -> Set<String> {
                Set(answers.map { $0.split(separator: ":").last.map(String.init) ?? "" })
            }
            // Warm-up: the workers' start-up is not part of the measure.
            #expect(pids(try await round(4, delay: "0.2")).count == 4)
            let start = ContinuousClock.now
            let answers = try await round(8, delay: "1")
            let elapsed = ContinuousClock.now - start
            #expect(answers.count == 8)
            // Each worker runs one call at a time: 8 calls of 1 s on 4 workers take two rounds (8 s in series).
            #expect(pids(answers).count == 4)
            #expect(elapsed >= .milliseconds(1950))
            #expect(elapsed < .seconds(5), "8 calls of 1 s on 4 workers took \(elapsed)")
            #expect(pool.callCount == 12)
        }
    }

    @Test func callsBeyondTheQueueLimitAreOverloaded() async throws {
        try await withPool(configuration(workers: 1, queueLimit: 2)) { pool in
            let slow = args("slow", ["delay": .number("0.4")])
            let first = Task { try await pool.call(address(1), arguments: slow) }
            #expect(await eventually { intStatus(pool, "busy") == 1 })
            let queued = [Task { try await pool.call(address(2), arguments: slow) }, Task { try await pool.call(address(3), arguments: slow) }]
            #expect(await eventually { intStatus(pool, "queued") == 2 })
            let error = await callError(pool, address(4), slow)
            #expect(error?.code == .overloaded)
            _ = try await first.value
            for task in queued { _ = try await task.value }
            #expect(pool.callCount == 3)
        }
    }

    // MARK: Failures

    @Test func crashMidCallFailsTheCallAndTheWorkerIsReplaced() async throws {
        try await withPool(configuration()) { pool in
            let before = try await pid(pool)
            let error = await callError(pool, address(1), args("crash"))
            #expect(error?.code == .handlerError)
            let after = try await pid(pool)
            #expect(after != before)
            #expect(intStatus(pool, "restarts") == 1)
            #expect(!Self.exists(before), "the crashed worker is reaped")
        }
    }

    @Test func aWorkerThatExitsAtStartBacksOff() async throws {
        try await withPool(configuration(mode: "exit-at-start", timeout: 1)) { pool in
            let error = await callError(pool, address(1), HandlerArguments())
            #expect(error?.code == .handlerError || error?.code == .handlerTimeout)
            // On a loaded machine Python's start-up alone can take a second: wait for the first restart...
            let deadline = ContinuousClock.now + .seconds(15)
            while intStatus(pool, "restarts") < 1 && ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(20))
            }
            let first = intStatus(pool, "restarts")
            #expect(first >= 1, "no restart")
            // ...then count: with 0.2, 0.4, 0.8 s delays, at most a few in 1.5 s, not hundreds.
            try await Task.sleep(for: .milliseconds(1500))
            let more = intStatus(pool, "restarts") - first
            #expect(more <= 6, "restarts in 1.5 s: \(more)")
        }
    }

    @Test func aHangingWorkerTimesOutAndIsReplaced() async throws {
        // 1.5 s: a Python worker's start-up counts toward the first call's timeout, and takes a while
        // on a loaded 2-core machine.
        try await withPool(configuration(timeout: 1.5)) { pool in
            let hung = try await pid(pool)
            let start = ContinuousClock.now
            let error = await callError(pool, address(1), args("hang"))
            let elapsed = ContinuousClock.now - start
            #expect(error?.code == .handlerTimeout)
            #expect(elapsed >= .milliseconds(1450) && elapsed < .seconds(3), "timed out after \(elapsed)")
            let next = try await retryingTimeouts { try await pool.call(address(2), arguments: HandlerArguments()) }
            #expect(string(next) == "Student:2:[]:{}")
            #expect(try await pid(pool) != hung)
            #expect(intStatus(pool, "timeouts") >= 1)
            #expect(await eventually { !Self.exists(hung) }, "the hung worker is killed and reaped")
        }
    }

    @Test(arguments: ["garbage", "huge-line", "wrong-id"])
    func garbageFailsTheCallAndTheWorkerIsReplaced(mode: String) async throws {
        try await withPool(configuration()) { pool in
            let before = try await pid(pool)
            let error = await callError(pool, address(1), args(mode))
            #expect(error?.code == .handlerError, "\(mode): \(String(describing: error))")
            #expect(string(try await pool.call(address(2), arguments: HandlerArguments())) == "Student:2:[]:{}")
            #expect(try await pid(pool) != before)
        }
    }

    @Test func anUnsolicitedLineReplacesTheWorker() async throws {
        try await withPool(configuration()) { pool in
            let before = try await pid(pool)
            #expect(string(try await pool.call(address(1), arguments: args("unsolicited"))) == "first")
            #expect(await eventually { intStatus(pool, "restarts") == 1 })
            #expect(try await pid(pool) != before)
        }
    }

    @Test func aStderrFloodIsDrainedWithoutBlockingTheWorker() async throws {
        try await withPool(configuration(timeout: 30)) { pool in
            let rssBefore = Self.residentBytes()
            let value = try await pool.call(address(1), arguments: args("stderr-flood", ["mb": .number("100")]))
            #expect(string(value) == "flooded")
            let growth = Self.residentBytes() - rssBefore
            #expect(growth < 64 * 1024 * 1024, "RSS grew by \(growth) bytes")
        }
    }

    @Test func callsAcrossWorkersAreCounted() async throws {
        let directory = try makeTemporaryDirectory("workers")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let counter = directory + "/count"
        try await withPool(configuration(mode: "counter", workers: 3, environment: ["COUNTER_FILE": counter])) { pool in
            try await withThrowingTaskGroup(of: Void.self) { group in
                for i in 0..<9 { group.addTask { _ = try await pool.call(self.address(i), arguments: HandlerArguments()) } }
                try await group.waitForAll()
            }
            let lines = try String(contentsOfFile: counter, encoding: .utf8).split(separator: "\n")
            #expect(lines.count == 9)
            #expect(pool.callCount == 9)
        }
    }

    @Test func aMissingProgramFailsCalls() async throws {
        var config = configuration()
        config.command = ["/nonexistent/worker-program"]
        try await withPool(config) { pool in
            let error = await callError(pool, address(1), HandlerArguments())
            #expect(error?.code == .handlerError)
        }
    }

    // MARK: Shutdown

    @Test func shutdownFailsQueuedCallsAndLeavesNoProcesses() async throws {
        let pool = WorkerPool(key: "Student", configuration: configuration(workers: 2, queueLimit: 10), logger: Self.quietLogger)
        await pool.start()
        let pids = try await withThrowingTaskGroup(of: Int32.self) { group in
            for _ in 0..<2 {
                group.addTask {
                    Int32(self.string(try await pool.call(self.address(1), arguments: self.args("slow", ["delay": .number("0.3")])))!
                        .split(separator: ":").last!)!
                }
            }
            var pids: Set<Int32> = []
            for try await pid in group { pids.insert(pid) }
            return pids
        }
        #expect(pids.count == 2)
        // Two calls hang on the workers, three wait in the queue.
        let calls = (0..<5).map { i in Task { await self.callError(pool, self.address(i), self.args("hang")) } }
        #expect(await eventually { intStatus(pool, "queued") == 3 })
        let start = ContinuousClock.now
        await pool.shutdown()
        #expect(ContinuousClock.now - start < .seconds(5))
        for call in calls {
            let error = await call.value
            #expect(error?.code == .shuttingDown)
        }
        for pid in pids { #expect(!Self.exists(pid), "worker \(pid) is gone and reaped") }
        #expect(intStatus(pool, "alive") == 0)
        #expect(await callError(pool, address(1), HandlerArguments())?.code == .shuttingDown)
    }

    // MARK: Memory

    /// The test process's resident set size.
    static func residentBytes() -> Int {
        guard let text = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8) else { return 0 }
        let fields = text.split(separator: " ")
        return fields.count > 1 ? (Int(fields[1]) ?? 0) * Int(sysconf(Int32(_SC_PAGESIZE))) : 0
    }
}
