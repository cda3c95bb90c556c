import NIOCore

/// Where each key lives: the seam between the store and the Redis servers behind it.
///
/// A topology owns its ``RedisNode``s (their pools and invalidation listeners), routes every key to the
/// node that serves it, follows changes by itself (a Sentinel failover; a cluster's slot moves next), and
/// forwards every ``RedisNodeEvent`` of its nodes to the local copy, adding ``RedisNodeEvent/removed(node:)``
/// when a node leaves. The store asks ``route(_:preferring:)`` once per command and never keeps a node.
///
/// To add a topology: resolve the node(s) in ``start()``, answer ``route(_:preferring:)`` from an
/// immutable or lock-protected snapshot, report ``RedisNodeEvent/removed(node:)`` before a node that left
/// is shut down, and re-resolve on the hints given to ``errorReply(_:from:)`` and on node events.
public protocol RedisTopology: Sendable {
    /// The node that serves `key` and one of its connections that is up, preferring one on `eventLoop`
    /// (no thread hop); nil when none is up (the caller fails at once: nothing was sent).
    func route(_ key: String, preferring eventLoop: any EventLoop) -> RedisRoute?
    /// An error reply a node sent for a command (`READONLY`, `MOVED`, `ASK`, ...): a hint that the
    /// topology changed, and for a cluster redirect where to send the command again. `attempt` counts the
    /// redirects this command has followed already (the caller stops after a few).
    func errorReply(_ message: String, from node: RedisNode, attempt: Int, on eventLoop: any EventLoop) -> RedisRedirect?
    /// Resolves and connects; returns once the first attempt has ended (up or not).
    func start() async
    /// Closes every connection and stops following changes.
    func shutdown() async
    /// What the topology looks like now, for `stats` and systemd's `STATUS=`.
    var status: RedisTopologyStatus { get }
}

/// Where a command goes after an error reply that says it was not run (a cluster redirect).
public enum RedisRedirect: Sendable {
    /// Send it on this route; with `asking`, preceded by `ASKING` on the same connection (`ASK`).
    case resend(RedisRoute, asking: Bool)
    /// Route it again once this completes (the slot map was refreshed, or a `TRYAGAIN` backoff ended).
    case retry(after: EventLoopFuture<Void>)
}

/// A node and one of its connections that is up.
public struct RedisRoute: Sendable {
    public let node: RedisNode
    public let connection: RedisConnection

    public init(node: RedisNode, connection: RedisConnection) {
        self.node = node
        self.connection = connection
    }
}

/// A snapshot of a topology.
public struct RedisTopologyStatus: Sendable, Hashable {
    /// One data node.
    public struct Node: Sendable, Hashable {
        public var address: String
        /// `master` for the node that takes writes.
        public var role: String
        public var connections: Int
        public var poolSize: Int
        /// Whether its invalidation listener is up (what it reads may be kept locally).
        public var tracking: Bool
        /// In a cluster, the slots it serves.
        public var slots: Int?
        /// Round trips, error replies, timeouts, up/down of its data connections.
        public var metrics = RedisNodeMetrics.Figures()
    }

    /// One Sentinel and whether the last attempt to reach it worked.
    public struct Sentinel: Sendable, Hashable {
        public var address: String
        public var reachable: Bool
    }

    /// The last time the topology moved to another master.
    public struct Switch: Sendable, Hashable {
        public var from: String?
        public var to: String
        /// Seconds since the Unix epoch.
        public var at: Double
    }

    /// `single`, `sentinel` or `cluster`.
    public var kind: String
    public var nodes: [Node]
    public var masterName: String?
    public var sentinels: [Sentinel] = []
    public var switches = 0
    public var lastSwitch: Switch?
    /// Redacted URL as configured.
    public var url: String
    /// In a cluster: redirects seen by kind (`moved`, `ask`, `tryAgain`, `clusterDown`), slot-map reads,
    /// slots no primary serves, and when the map was last read (seconds since the Unix epoch).
    public var redirects: [String: Int]?
    public var refreshes: Int?
    public var unownedSlots: Int?
    public var lastRefresh: Double?

    public var available: Bool { nodes.contains { $0.connections > 0 } }
}

extension RedisNode {
    /// The node as `stats` shows it.
    public func status(role: String) -> RedisTopologyStatus.Node {
        RedisTopologyStatus.Node(
            address: address, role: role, connections: pool.connectedCount, poolSize: configuration.poolSize,
            tracking: isTracking, slots: nil, metrics: metrics.figures)
    }
}
