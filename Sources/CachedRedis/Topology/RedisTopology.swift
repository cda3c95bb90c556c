import NIOCore

/// Where each key lives: the seam between the store and the Redis servers behind it.
///
/// A topology owns its ``RedisNode``s (their pools and invalidation listeners), routes every key to the
/// node that serves it, follows changes by itself (a Sentinel failover, a cluster's slot moves), and
/// forwards every ``RedisNodeEvent`` of its nodes to the local copy, adding ``RedisNodeEvent/removed(node:)``
/// when a node leaves. Commands go through ``execute(_:key:on:)`` (in `RedisTopology+execute.swift`),
/// which asks ``route(_:preferring:)`` and follows what ``errorReply(_:from:attempt:on:)`` answers.
///
/// To add a topology: give ``TopologyDriver`` its resolution (what Redis looks like now) and answer
/// ``route(_:preferring:)`` from the driver's routing; the driver starts and retires nodes, reports
/// ``RedisNodeEvent/removed(node:)`` before a node that left is shut down, and re-resolves on node events.
public protocol RedisTopology: Sendable {
    /// The node that serves `key` and one of its connections that is up, preferring one on `eventLoop`
    /// (no thread hop); nil when none is up (the caller fails at once: nothing was sent).
    func route(_ key: String, preferring eventLoop: any EventLoop) -> RedisRoute?
    /// An error reply a node sent for a command (`READONLY`, `MOVED`, `ASK`, ...): a hint that the
    /// topology changed, and for a cluster redirect where to send the command again. `attempt` counts the
    /// redirects this command has followed already (``RedisRedirect/maximum`` at most).
    func errorReply(_ reply: RedisErrorReply, from node: RedisNode, attempt: Int, on eventLoop: any EventLoop) -> RedisRedirect?
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

    /// The most redirects one command follows; each means the command was not run, so sending it again
    /// is safe. Past them the command fails with ``RedisClientError/Code/notRun``.
    public static let maximum = 5

    /// How long to wait before routing a command again after `TRYAGAIN` (`attempt` redirects so far):
    /// 20 ms, doubling up to 320 ms.
    public static func tryAgainDelay(attempt: Int) -> TimeAmount {
        .milliseconds(Int64(20 << min(max(attempt, 0), 4)))
    }
}

/// An error reply read for what it says about the topology (its first word).
public enum RedisErrorReply: Sendable, Hashable {
    /// `MOVED <slot> <host:port>`: the slot lives elsewhere now (`to` nil when the address is unreadable).
    case moved(to: SentinelConfiguration.Address?)
    /// `ASK <slot> <host:port>`: this one command goes there, preceded by `ASKING`.
    case ask(to: SentinelConfiguration.Address?)
    /// `TRYAGAIN`: a multi-key command during a slot migration, or a slot being imported.
    case tryAgain
    /// `CLUSTERDOWN`: the cluster cannot serve the slot now.
    case clusterDown
    /// `READONLY`: a master was demoted to a replica.
    case readOnly
    /// Anything else (`ERR`, `OOM`, `WRONGTYPE`, ...): nothing about the topology.
    case other(code: String)

    public init(_ message: String) {
        let words = message.split(separator: " ", omittingEmptySubsequences: true)
        let first = message.prefix { $0 != " " }
        switch first {
        case "MOVED", "ASK":
            let target = words.count >= 3 ? Self.address(words[2]) : nil
            self = first == "ASK" ? .ask(to: target) : .moved(to: target)
        case "TRYAGAIN": self = .tryAgain
        case "CLUSTERDOWN": self = .clusterDown
        default: self = message.hasPrefix("READONLY") ? .readOnly : .other(code: String(first))
        }
    }

    /// `host:port` or `[v6]:port`.
    static func address(_ text: Substring) -> SentinelConfiguration.Address? {
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]) else { return nil }
        var host = text[..<colon]
        if host.hasPrefix("["), host.hasSuffix("]") { host = host.dropFirst().dropLast() }
        return SentinelConfiguration.Address(host: String(host), port: port)
    }
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

/// A snapshot of a topology: one payload per kind.
public enum RedisTopologyStatus: Sendable, Hashable {
    /// One server (`redis://`, `rediss://`, `unix://`).
    case single(Single)
    /// A master behind Sentinel.
    case sentinel(Sentinel)
    /// A cluster's primaries.
    case cluster(Cluster)

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

        public init(
            address: String, role: String, connections: Int, poolSize: Int, tracking: Bool, slots: Int? = nil,
            metrics: RedisNodeMetrics.Figures = .init()
        ) {
            self.address = address
            self.role = role
            self.connections = connections
            self.poolSize = poolSize
            self.tracking = tracking
            self.slots = slots
            self.metrics = metrics
        }
    }

    public struct Single: Sendable, Hashable {
        /// Redacted URL as configured.
        public var url: String
        public var node: Node

        public init(url: String, node: Node) {
            self.url = url
            self.node = node
        }
    }

    public struct Sentinel: Sendable, Hashable {
        /// One Sentinel and whether the last attempt to reach it worked.
        public struct Instance: Sendable, Hashable {
            public var address: String
            public var reachable: Bool

            public init(address: String, reachable: Bool) {
                self.address = address
                self.reachable = reachable
            }
        }

        /// The last time the topology moved to another master (or, `from` nil, found the first).
        public struct Switch: Sendable, Hashable {
            public var from: String?
            public var to: String
            /// Seconds since the Unix epoch.
            public var at: Double

            public init(from: String?, to: String, at: Double) {
                self.from = from
                self.to = to
                self.at = at
            }
        }

        /// Redacted URL as configured.
        public var url: String
        public var masterName: String
        /// The master's node; nil until it is resolved.
        public var master: Node?
        public var sentinels: [Instance]
        /// Switches after the first resolution.
        public var switches: Int
        public var lastSwitch: Switch?

        public init(url: String, masterName: String, master: Node?, sentinels: [Instance], switches: Int, lastSwitch: Switch?) {
            self.url = url
            self.masterName = masterName
            self.master = master
            self.sentinels = sentinels
            self.switches = switches
            self.lastSwitch = lastSwitch
        }
    }

    public struct Cluster: Sendable, Hashable {
        /// Redirects seen, by kind.
        public struct Redirects: Sendable, Hashable {
            public var moved = 0
            public var ask = 0
            public var tryAgain = 0
            public var clusterDown = 0

            public init(moved: Int = 0, ask: Int = 0, tryAgain: Int = 0, clusterDown: Int = 0) {
                self.moved = moved
                self.ask = ask
                self.tryAgain = tryAgain
                self.clusterDown = clusterDown
            }
        }

        /// Redacted URL as configured.
        public var url: String
        /// One node per primary, with the slots it serves.
        public var primaries: [Node]
        public var redirects: Redirects
        /// Slot-map reads that ended (with a map or not).
        public var refreshes: Int
        /// Slots no primary serves.
        public var unownedSlots: Int
        /// Map changes after the first.
        public var switches: Int
        /// When the map was last read (seconds since the Unix epoch).
        public var lastRefresh: Double?

        public init(
            url: String, primaries: [Node], redirects: Redirects, refreshes: Int, unownedSlots: Int, switches: Int, lastRefresh: Double? = nil
        ) {
            self.url = url
            self.primaries = primaries
            self.redirects = redirects
            self.refreshes = refreshes
            self.unownedSlots = unownedSlots
            self.switches = switches
            self.lastRefresh = lastRefresh
        }
    }

    /// `single`, `sentinel` or `cluster`.
    public var kind: String {
        switch self {
        case .single: "single"
        case .sentinel: "sentinel"
        case .cluster: "cluster"
        }
    }

    /// Redacted URL as configured.
    public var url: String {
        switch self {
        case .single(let s): s.url
        case .sentinel(let s): s.url
        case .cluster(let c): c.url
        }
    }

    /// The data nodes.
    public var nodes: [Node] {
        switch self {
        case .single(let s): [s.node]
        case .sentinel(let s): s.master.map { [$0] } ?? []
        case .cluster(let c): c.primaries
        }
    }

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
