import Atomics
import Logging
import NIOCore

/// One Redis server the daemon talks to: a pool of data connections and, when the local copy is on, the
/// invalidation listener their tracking redirects to. A topology owns its nodes and routes each key to one.
///
/// A node reports through ``RedisNodeEvent`` everything the local copy must know to stay coherent: when
/// tracking is up (and to which listener), invalidations, and when nothing the node's connections read
/// may be trusted any longer.
public final class RedisNode: Sendable {
    /// Unique in this process (never reused): a node that leaves and comes back at the same address is a new node.
    public let id: UInt64
    public let configuration: RedisConfiguration
    public let pool: RedisConnectionPool
    /// Round trips, error replies, timeouts and up/down of the node's data connections.
    public let metrics: RedisNodeMetrics
    private let listener: RedisInvalidationListener?
    private static let ids = ManagedAtomic<UInt64>(0)

    /// - Parameters:
    ///   - tracking: run an invalidation listener and redirect the pool's tracking to it (local copy on).
    ///   - onEvent: what the node reports, on one of its event loops.
    public init(
        configuration: RedisConfiguration, group: any EventLoopGroup, tracking: Bool, logger: Logger,
        onEvent: @escaping @Sendable (RedisNodeEvent) -> Void
    ) {
        let id = Self.ids.wrappingIncrementThenLoad(ordering: .relaxed)
        self.id = id
        self.configuration = configuration
        var logger = logger
        logger[metadataKey: "redis"] = "\(configuration.redactedDescription)"
        let metrics = RedisNodeMetrics()
        self.metrics = metrics
        let pool = RedisConnectionPool(configuration: configuration, group: group, logger: logger, metrics: metrics) { event in
            switch event {
            case .lost: onEvent(.connectionLost(node: id))
            case .failed: onEvent(.connectFailed(node: id))
            }
        }
        self.pool = pool
        guard tracking else {
            self.listener = nil
            return
        }
        self.listener = RedisInvalidationListener(configuration: configuration, eventLoop: group.next(), logger: logger) { event in
            switch event {
            case .invalidate(let keys): onEvent(.invalidate(node: id, keys: keys))
            case .invalidateAll: onEvent(.invalidateAll(node: id))
            case .connected(let listener, let proof):
                // Existing connections switch their tracking to the new listener before values are cached again.
                pool.setTrackingRedirect(listener, proof: proof).whenComplete { _ in onEvent(.trackingUp(node: id, listener: listener)) }
            case .disconnected:
                onEvent(.trackingDown(node: id))
                _ = pool.setTrackingRedirect(nil)
            }
        }
    }

    /// Connects the listener, then the pool; returns once each first attempt has ended.
    public func start() async {
        await listener?.start()
        await pool.start()
    }

    /// Closes every connection of the node and stops reconnecting.
    public func shutdown() async {
        await listener?.shutdown()
        await pool.shutdown()
    }

    /// Whether the invalidation listener is up (always false without tracking).
    public var isTracking: Bool { listener?.currentID != nil }

    /// `host:port` or the socket path.
    public var address: String { configuration.endpoint.description }
}

/// What a ``RedisNode`` reports.
public enum RedisNodeEvent: Sendable {
    /// The node's listener is up with this client id and every connection of the node redirects to it.
    case trackingUp(node: UInt64, listener: Int64)
    /// The node's listener is down: nothing its connections read is tracked any longer.
    case trackingDown(node: UInt64)
    /// These keys changed on the node.
    case invalidate(node: UInt64, keys: [String])
    /// Anything on the node may have changed (FLUSHALL, or the listener reconnected).
    case invalidateAll(node: UInt64)
    /// A data connection of the node closed (what it read was already dropped through its close future).
    case connectionLost(node: UInt64)
    /// An attempt to connect to the node failed.
    case connectFailed(node: UInt64)
    /// The node left the topology: nothing read from it may be served.
    case removed(node: UInt64)
}

extension RedisConfiguration.Endpoint: CustomStringConvertible {
    public var description: String {
        switch self {
        case .tcp(let host, let port): host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
        case .unix(let path): path
        }
    }
}

extension RedisNodeEvent {
    /// The node the event is about.
    public var node: UInt64 {
        switch self {
        case .trackingUp(let node, _), .trackingDown(let node), .invalidate(let node, _), .invalidateAll(let node),
            .connectionLost(let node), .connectFailed(let node), .removed(let node):
            node
        }
    }
}
