import CachedProtocol
import CachedTestSupport
import Foundation
import Testing

/// Keeps `cached-bench` from rotting: runs the built binary against a real daemon (embedded store)
/// for a couple of thousand requests and checks its JSON summary.
@Suite("cached-bench smoke", .serialized)
struct BenchSmokeTests {
    /// `$CACHED_BENCH_BIN`, else `cached-bench` next to the test bundle (where `swift test` builds it).
    static var benchBinary: String {
        if let path = ProcessInfo.processInfo.environment["CACHED_BENCH_BIN"] { return path }
        let besideTests = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
            .appendingPathComponent("cached-bench").path
        if FileManager.default.isExecutableFile(atPath: besideTests) { return besideTests }
        // Beside the daemon binary the harness uses (e.g. $CACHED_BIN's directory).
        return URL(fileURLWithPath: DaemonProcess.binary).deletingLastPathComponent().appendingPathComponent("cached-bench").path
    }

    func runBench(_ daemon: DaemonProcess, _ arguments: [String]) throws -> [String: JSONValue] {
        let binary = Self.benchBinary
        try #require(FileManager.default.isExecutableFile(atPath: binary), "cached-bench not found at \(binary)")
        let output = try ChildProcess.output(binary, ["--socket", daemon.socketPath, "--json", "--timeout", "60"] + arguments)
        let lastLine = output.split(separator: UInt8(ascii: "\n")).last.map(Array.init) ?? []
        let value = try JSONParser.parse(lastLine)
        guard case .object(let summary) = value else {
            throw HarnessError("cached-bench printed no JSON object: \(String(decoding: output, as: UTF8.self))")
        }
        return summary
    }

    func number(_ summary: [String: JSONValue], _ name: String) -> Double {
        if case .number(let text)? = summary[name] { return Double(text) ?? -1 }
        return -1
    }

    @Test("get-hit after warm-up: every answer a hit with the stored value")
    func getHit() throws {
        let daemon = try DaemonProcess()
        let summary = try runBench(
            daemon, ["--mix", "get-hit", "-c", "4", "-P", "4", "-n", "2000", "--keyspace", "200", "--value-size", "64", "--warmup"])
        #expect(number(summary, "completed") == 2000)
        #expect(number(summary, "hits") == 2000)
        #expect(number(summary, "misses") == 0)
        #expect(number(summary, "errors") == 0)
        #expect(number(summary, "unexpected") == 0)
        #expect(number(summary, "wrongValues") == 0)
        #expect(number(summary, "requestsPerSecond") > 0)
        #expect(number(summary, "p99Micros") > 0)
        #expect(summary["failure"] == .null, "\(summary)")
    }

    @Test("weighted mix of gets and sets, unpipelined")
    func mixed() throws {
        let daemon = try DaemonProcess()
        let summary = try runBench(
            daemon, ["--mix", "get-hit:80,set:20", "-c", "3", "-n", "2000", "--keyspace", "100", "--warmup"])
        #expect(number(summary, "completed") == 2000)
        #expect(number(summary, "hits") + number(summary, "stored") == 2000)
        #expect(number(summary, "errors") == 0)
        #expect(number(summary, "unexpected") == 0)
        #expect(number(summary, "requestsPerSecond") > 0)
    }
}
