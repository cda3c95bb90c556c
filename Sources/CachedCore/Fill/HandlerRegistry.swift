import CachedProtocol
import CachedRedis
import Logging
import NIOConcurrencyHelpers

/// A sync handler with a lifecycle (a key's worker pool).
public protocol ManagedSyncHandler: SyncHandler {
    func start() async
    func shutdown() async
    var status: JSONValue { get }
    /// How long its calls took (nil: not measured).
    var callDurations: LatencyHistogram? { get }
}

extension ManagedSyncHandler {
    public var callDurations: LatencyHistogram? { nil }
}

/// The running sync handler of each key that has one.
public final class HandlerRegistry: Sendable {
    public typealias Factory = @Sendable (_ key: String, _ configuration: DaemonConfiguration.HandlerConfiguration) -> any ManagedSyncHandler

    /// A key's handler and the settings it was started with.
    struct Running: Sendable {
        var configuration: DaemonConfiguration.HandlerConfiguration
        var handler: any ManagedSyncHandler
    }

    /// By upper-cased key name.
    private let handlers: NIOLockedValueBox<[String: Running]>
    private let factory: Factory

    public init(factory: @escaping Factory) {
        self.factory = factory
        self.handlers = NIOLockedValueBox([:])
    }

    /// The handler of `key` (names match without regard to case), if it has one.
    public func handler(for key: String) -> (any SyncHandler)? {
        let upper = key.uppercased()
        return handlers.withLockedValue { $0[upper]?.handler }
    }

    /// Starts, restarts or stops handlers so that they match `configuration`. Unchanged handlers keep running.
    public func apply(_ configuration: DaemonConfiguration) async {
        var wanted: [String: (name: String, configuration: DaemonConfiguration.HandlerConfiguration)] = [:]
        for (name, key) in configuration.live.keys {
            if let handler = key.handler { wanted[name.uppercased()] = (name, handler) }
        }
        var toStop: [any ManagedSyncHandler] = []
        var toStart: [any ManagedSyncHandler] = []
        handlers.withLockedValue { handlers in
            for (upper, running) in handlers where wanted[upper]?.configuration != running.configuration {
                toStop.append(running.handler)
                handlers[upper] = nil
            }
            for (upper, want) in wanted where handlers[upper] == nil {
                let handler = factory(want.name, want.configuration)
                handlers[upper] = Running(configuration: want.configuration, handler: handler)
                toStart.append(handler)
            }
        }
        for handler in toStart { await handler.start() }
        for handler in toStop { await handler.shutdown() }
    }

    /// Stops every handler.
    public func shutdown() async {
        let all = handlers.withLockedValue { handlers in
            let all = handlers.values.map(\.handler)
            handlers.removeAll()
            return all
        }
        for handler in all { await handler.shutdown() }
    }

    /// Per-key call durations (upper-cased key names), for the metrics.
    public var callDurations: [(key: String, histogram: LatencyHistogram)] {
        let snapshot = handlers.withLockedValue { $0 }
        return snapshot.compactMap { name, running in running.handler.callDurations.map { (name, $0) } }.sorted { $0.key < $1.key }
    }

    /// Per-key handler status for `stats`.
    public var status: JSONValue {
        let snapshot = handlers.withLockedValue { $0 }
        var result: [String: JSONValue] = [:]
        for (name, running) in snapshot { result[name] = running.handler.status }
        return .object(result)
    }
}
