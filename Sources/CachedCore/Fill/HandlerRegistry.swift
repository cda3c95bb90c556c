import CachedProtocol
import Logging
import NIOConcurrencyHelpers

/// A sync handler with a lifecycle (a key's worker pool).
public protocol ManagedSyncHandler: SyncHandler {
    func start() async
    func shutdown() async
    var status: JSONValue { get }
    var callCount: Int { get }
}

/// The running sync handler of each key that has one.
public final class HandlerRegistry: Sendable {
    public typealias Factory = @Sendable (_ key: String, _ configuration: DaemonConfiguration.HandlerConfiguration) -> any ManagedSyncHandler

    private let handlers: NIOLockedValueBox<[String: (DaemonConfiguration.HandlerConfiguration, any ManagedSyncHandler)]>
    private let factory: Factory

    public init(factory: @escaping Factory) {
        self.factory = factory
        self.handlers = NIOLockedValueBox([:])
    }

    /// The handler of `key` (names match without regard to case), if it has one.
    public func handler(for key: String) -> (any SyncHandler)? {
        let upper = key.uppercased()
        return handlers.withLockedValue { $0[upper]?.1 }
    }

    /// Starts, restarts or stops handlers so that they match `configuration`. Unchanged handlers keep running.
    public func apply(_ configuration: DaemonConfiguration) async {
        var wanted: [String: (String, DaemonConfiguration.HandlerConfiguration)] = [:]
        for (name, key) in configuration.keys {
            if let handler = key.handler { wanted[name.uppercased()] = (name, handler) }
        }
        var toStop: [any ManagedSyncHandler] = []
        var toStart: [any ManagedSyncHandler] = []
        handlers.withLockedValue { handlers in
            for (upper, (config, running)) in handlers where wanted[upper]?.1 != config {
                toStop.append(running)
                handlers[upper] = nil
            }
            for (upper, (name, config)) in wanted where handlers[upper] == nil {
                let handler = factory(name, config)
                handlers[upper] = (config, handler)
                toStart.append(handler)
            }
        }
        for handler in toStart { await handler.start() }
        for handler in toStop { await handler.shutdown() }
    }

    /// Stops every handler.
    public func shutdown() async {
        let all = handlers.withLockedValue { handlers in
            let all = handlers.values.map(\.1)
            handlers.removeAll()
            return all
        }
        for handler in all { await handler.shutdown() }
    }

    /// Per-key handler status for `stats`.
    public var status: JSONValue {
        let snapshot = handlers.withLockedValue { $0 }
        var result: [String: JSONValue] = [:]
        for (name, (_, handler)) in snapshot { result[name] = handler.status }
        return .object(result)
    }

    /// Handler calls so far, per key (upper-cased name); tests count fills with it.
    public func callCount(for key: String) -> Int {
        handlers.withLockedValue { $0[key.uppercased()]?.1.callCount ?? 0 }
    }
}
