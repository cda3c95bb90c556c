import CachedClient
import CachedProtocol
import CachedTestSupport
import Foundation

#if canImport(Glibc)
import Glibc
#endif

// MARK: - Fixtures

/// A daemon (optionally backed by a private Redis) and a client connected to it.
final class ClientFixture: @unchecked Sendable {
    let redis: RedisServer?
    let daemon: DaemonProcess
    let client: CachedClient

    init(redis useRedis: Bool = false, config: String = "") throws {
        if useRedis {
            let r = try RedisServer()
            redis = r
            daemon = try DaemonProcess(config: config, arguments: ["--redis", r.unixURL])
        } else {
            redis = nil
            daemon = try DaemonProcess(config: config)
        }
        client = CachedClient(socketPath: daemon.socketPath)
    }

    /// Another client of the same daemon.
    func newClient() -> CachedClient { CachedClient(socketPath: daemon.socketPath) }
}

/// Counts calls from many tasks.
actor Counter {
    private(set) var value = 0
    func increment() { value += 1 }
}

// MARK: - Running cachectl

/// What a `cachectl` run printed and how it exited.
struct CommandOutput {
    var status: Int32
    var stdout: [UInt8]
    var text: String { String(decoding: stdout, as: UTF8.self) }
}

/// The `cachectl` executable: `$CACHECTL_BIN`, else next to the test bundle (like `cached`).
var cachectlBinary: String {
    if let path = ProcessInfo.processInfo.environment["CACHECTL_BIN"] { return path }
    return URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("cachectl").path
}

/// Runs `cachectl` to completion with stdout captured (stderr discarded).
func runCachectl(_ arguments: [String], environment: [String: String]? = nil) throws -> CommandOutput {
    let (status, stdout) = try ChildProcess.run(cachectlBinary, arguments, environment: environment)
    return CommandOutput(status: status, stdout: stdout)
}
