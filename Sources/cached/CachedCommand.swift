import ArgumentParser
import CachedCore
import Foundation
import Logging

/// `cached`: the local read-through cache daemon.
@main
struct CachedCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cached",
        abstract: "A local read-through cache daemon in front of Redis, serving JSON-RPC on a Unix socket.")

    @Option(name: .long, help: "TOML configuration file.")
    var config: String?

    @Option(name: .long, help: "Unix socket path to serve (overrides the file).")
    var socket: String?

    @Option(name: .long, help: "Redis URL: redis://[:password@]host:port/db or unix:///path?db=N (overrides the file).")
    var redis: String?

    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error or critical.")
    var logLevel: String?

    @Flag(name: .customLong("check-config"), help: "Validate the configuration and exit.")
    var checkConfig = false

    /// Reads the file (if any) and applies the command-line overrides.
    static func load(config: String?, socket: String?, redis: String?, logLevel: String?) throws -> DaemonConfiguration {
        var configuration = DaemonConfiguration()
        if let config {
            let text: String
            do {
                text = try String(contentsOfFile: config, encoding: .utf8)
            } catch {
                throw ValidationError("cannot read \(config): \(error.localizedDescription)")
            }
            do {
                configuration = try DaemonConfiguration(toml: text)
            } catch {
                throw ValidationError("\(config): \(error)")
            }
        }
        if let socket { configuration.startup.socketPath = socket }
        if let redis { configuration.startup.store = DaemonConfiguration.Store(redisURL: redis) }
        if let logLevel {
            guard let level = Logger.Level(rawValue: logLevel.lowercased()) else {
                throw ValidationError("--log-level must be one of trace, debug, info, notice, warning, error, critical")
            }
            configuration.startup.logLevel = level
        }
        do {
            try configuration.validate()
        } catch {
            throw ValidationError("\(error)")
        }
        return configuration
    }

    func run() async throws {
        // Writes to a worker (or a client) that has gone must fail with EPIPE, not kill the daemon.
        signal(SIGPIPE, SIG_IGN)
        let (config, socket, redis, logLevel) = (self.config, self.socket, self.redis, self.logLevel)
        let configuration = try Self.load(config: config, socket: socket, redis: redis, logLevel: logLevel)
        if checkConfig {
            let (problems, notes) = configuration.accessReport()
            for note in notes { print("note: \(note)") }
            for problem in problems { print("problem: \(problem)") }
            guard problems.isEmpty else { throw ExitCode(1) }
            print("configuration OK")
            return
        }
        let level = configuration.startup.logLevel
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "cached")
        try await Daemon(
            configuration: configuration, logger: logger,
            reload: { try Self.load(config: config, socket: socket, redis: redis, logLevel: logLevel) },
            handlerFactory: { key, handler in WorkerPool(key: key, configuration: handler, logger: logger) }
        ).run()
    }
}
