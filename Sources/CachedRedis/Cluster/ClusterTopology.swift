import Logging
import NIOConcurrencyHelpers
import NIOCore

/// A Redis Cluster (`redis-cluster://`): every key goes to the primary that serves its hash slot.
///
/// The slot map is read with `CLUSTER SHARDS` (`CLUSTER SLOTS` on servers without it) from the first
/// node that answers: the known primaries, then the seeds. It is read again on `MOVED`, `CLUSTERDOWN`,
/// when a connection to a primary is lost or cannot be made (quickly, every 300 ms, while a slot has
/// no reachable primary), and every ``ClusterConfiguration/refreshInterval``.
///
/// ``TopologyDriver`` runs it: each primary is a ``RedisNode`` with its own pool and invalidation
/// listener; when the map changes, new primaries are connected before commands are routed to them, a
/// primary that lost slots has what the local copy read from it dropped, and a primary that left is
/// reported ``RedisNodeEvent/removed(node:)`` and closed.
///
/// Redirects (followed by ``RedisTopology/execute(_:key:on:)``): `MOVED` is resent once to the named
/// node (and the map refreshed), `ASK` is resent to the named node preceded by `ASKING`, `TRYAGAIN` is
/// retried after a short backoff. A redirect means the command was not run, so resending is safe.
public final class ClusterTopology: RedisTopology {
    public typealias Address = ClusterConfiguration.Address
    public let configuration: ClusterConfiguration
    private let driver: TopologyDriver<ClusterResolution>
    private let redirects = NIOLockedValueBox(RedisTopologyStatus.Cluster.Redirects())

    public init(
        configuration: ClusterConfiguration, group: any EventLoopGroup, tracking: Bool, logger: Logger,
        onEvent: @escaping @Sendable (RedisNodeEvent) -> Void
    ) {
        self.configuration = configuration
        self.driver = TopologyDriver(
            ClusterResolution(configuration: configuration), group: group, tracking: tracking,
            backoff: configuration.data.reconnectBackoff, logger: logger, onEvent: onEvent)
    }

    public func route(_ key: String, preferring eventLoop: any EventLoop) -> RedisRoute? {
        guard let routing = driver.routing, let index = routing.map.ownerIndex(of: HashSlot.of(key)) else { return nil }
        let node = routing.nodes[index]
        guard let connection = node.pool.connection(preferring: eventLoop) else { return nil }
        return RedisRoute(node: node, connection: connection)
    }

    public func errorReply(_ reply: RedisErrorReply, from node: RedisNode, attempt: Int, on eventLoop: any EventLoop) -> RedisRedirect? {
        switch reply {
        case .moved(let target), .ask(let target):
            let asking: Bool
            if case .ask = reply { asking = true } else { asking = false }
            redirects.withLockedValue { counts in
                if asking { counts.ask += 1 } else { counts.moved += 1 }
            }
            if !asking { driver.request(.moved) }
            guard let target else { return nil }
            if let known = driver.node(at: target), let connection = known.pool.connection(preferring: eventLoop) {
                return .resend(RedisRoute(node: known, connection: connection), asking: asking)
            }
            // A node the map does not know yet: route again after a refresh.
            return .retry(after: driver.refreshed(on: eventLoop, reason: .moved))
        case .tryAgain:
            // A multi-key operation during a migration (not sent by the daemon) or a slot being imported.
            redirects.withLockedValue { $0.tryAgain += 1 }
            return .retry(after: eventLoop.scheduleTask(in: RedisRedirect.tryAgainDelay(attempt: attempt)) {}.futureResult)
        case .clusterDown:
            redirects.withLockedValue { $0.clusterDown += 1 }
            driver.request(.clusterDown)
            return nil
        case .readOnly, .other:
            return nil
        }
    }

    public func start() async {
        await driver.start()
        driver.startPeriodic(every: configuration.refreshInterval)
    }

    public func shutdown() async {
        await driver.shutdown()
    }

    public var status: RedisTopologyStatus {
        let figures = driver.figures
        let redirects = self.redirects.withLockedValue { $0 }
        var primaries: [RedisTopologyStatus.Node] = []
        if let routing = figures.routing {
            let slots = routing.map.slotCounts
            for (address, node) in zip(routing.map.primaries, routing.nodes) {
                var status = node.status(role: "master")
                status.slots = slots[address] ?? 0
                primaries.append(status)
            }
        }
        return .cluster(
            .init(
                url: configuration.redactedDescription, primaries: primaries, redirects: redirects, refreshes: figures.refreshes,
                unownedSlots: figures.routing?.map.unownedSlots ?? HashSlot.count, switches: figures.changes,
                lastRefresh: figures.lastRefresh))
    }
}

/// The Cluster's part of ``TopologyDriver``: the slot map is the snapshot; the routing is the map with
/// a node per primary.
struct ClusterResolution: TopologyResolution {
    let configuration: ClusterConfiguration

    /// What commands are routed with: the map and, for each of its primaries, its node.
    final class Routing: Sendable {
        let map: ClusterSlotMap
        let nodes: [RedisNode]
        init(map: ClusterSlotMap, nodes: [RedisNode]) {
            self.map = map
            self.nodes = nodes
        }
    }

    /// Asks the known primaries, then the seeds, for the slot map.
    func resolve(current: ClusterSlotMap?, on eventLoop: any EventLoop) async -> Result<ClusterSlotMap, RedisClientError> {
        var candidates = current?.primaries ?? []
        for seed in configuration.seeds where !candidates.contains(seed) { candidates.append(seed) }
        var lastError = RedisClientError(.unavailable, "no cluster node is configured")
        let tls = configuration.data.tls != nil
        for address in candidates {
            do {
                let map = try await RedisConnection.oneShot(configuration.node(address), on: eventLoop) { connection in
                    let shards = try await connection.send(RedisCommand("CLUSTER", "SHARDS")).get()
                    if case .error = shards {  // before Redis 7
                        return try ClusterSlotMap.parse(slots: try await connection.send(RedisCommand("CLUSTER", "SLOTS")).get())
                    }
                    return try ClusterSlotMap.parse(shards: shards, tls: tls)
                }
                guard !map.primaries.isEmpty else {
                    lastError = RedisClientError(.protocolError, "\(address) knows no primary serving a slot")
                    continue
                }
                return .success(map)
            } catch let error as RedisClientError {
                lastError = RedisClientError(error.code, "\(address): \(error.message)", redisCode: error.redisCode)
            } catch {
                lastError = RedisClientError(.unavailable, "\(address): \(error)")
            }
        }
        return .failure(lastError)
    }

    func addresses(of map: ClusterSlotMap) -> [Address] { map.primaries }

    func configuration(of address: Address) -> RedisConfiguration { configuration.node(address) }

    func routing(_ map: ClusterSlotMap, nodes: [RedisNode]) -> Routing { Routing(map: map, nodes: nodes) }

    func shrunk(from: ClusterSlotMap, to: ClusterSlotMap) -> Set<Address> { to.primariesThatLostSlots(since: from) }

    /// While a slot has no primary or a primary has no connection up, look again soon (a failover is
    /// probably under way: the replica's promotion is what ends it).
    func needsQuickRefresh(_ routing: Routing) -> Bool {
        routing.map.unownedSlots > 0 || routing.nodes.contains { $0.pool.connectedCount == 0 }
    }

    func logApplied(from: ClusterSlotMap?, to map: ClusterSlotMap, left: [RedisNode], logger: Logger) {
        let counts = map.slotCounts
        logger.info(
            from == nil ? "Redis Cluster slot map read" : "Redis Cluster slot map changed",
            metadata: [
                "primaries": "\(map.primaries.map { "\($0)=\(counts[$0] ?? 0)" }.joined(separator: " "))",
                "unowned_slots": "\(map.unownedSlots)", "left": "\(left.map(\.address))",
            ])
    }

    var failureMessage: Logger.Message { "cannot read the Redis Cluster slot map; retrying" }

    var refreshOnLoss: NodeLossPolicy { .notRetired }
}
