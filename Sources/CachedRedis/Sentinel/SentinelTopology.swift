import Logging
import NIOConcurrencyHelpers
import NIOCore

/// A master behind Redis Sentinel (`redis-sentinel://`): every key goes to the master the Sentinels name.
///
/// The master is resolved with `SENTINEL get-master-addr-by-name` from the first Sentinel that answers
/// and confirmed with `ROLE` on the node itself. It is resolved again when a Sentinel publishes
/// `+switch-master` (one subscription per Sentinel), when the master answers `READONLY`, when a
/// connection to it is lost or cannot be made, and every ``SentinelConfiguration/refreshInterval``.
///
/// ``TopologyDriver`` runs it: a switch starts a new ``RedisNode`` on the new master, routes new commands
/// to it, then reports the old node ``RedisNodeEvent/removed(node:)`` (the local copy drops everything
/// read from it) and closes it: commands still in flight there fail at once (their outcome is unknown).
public final class SentinelTopology: RedisTopology {
    public let configuration: SentinelConfiguration
    private let driver: TopologyDriver<SentinelResolution>
    private let watchers: [SentinelWatcher]

    public init(
        configuration: SentinelConfiguration, group: any EventLoopGroup, tracking: Bool, logger: Logger,
        onEvent: @escaping @Sendable (RedisNodeEvent) -> Void
    ) {
        self.configuration = configuration
        var named = logger
        named[metadataKey: "master_name"] = "\(configuration.masterName)"
        let logger = named
        let backoff = configuration.data.reconnectBackoff
        let resolution = SentinelResolution(configuration: configuration)
        let driver = TopologyDriver(resolution, group: group, tracking: tracking, backoff: backoff, logger: logger, onEvent: onEvent)
        self.driver = driver
        let loop = group.next()
        self.watchers = configuration.sentinels.map { address in
            SentinelWatcher(
                configuration: configuration.sentinel(address), masterName: configuration.masterName, eventLoop: loop,
                backoff: backoff, logger: logger
            ) { event in
                switch event {
                case .switchMaster(let message):
                    logger.info("Sentinel announced a master switch", metadata: ["sentinel": "\(address)", "message": "\(message)"])
                    driver.request(.switchMessage)
                case .up:
                    // A message may have been missed while this Sentinel was away.
                    if resolution.reached(address, true) == false { driver.request(.sentinelReconnected) }
                case .down:
                    resolution.reached(address, false)
                }
            }
        }
    }

    public func route(_ key: String, preferring eventLoop: any EventLoop) -> RedisRoute? {
        guard let node = driver.routing, let connection = node.pool.connection(preferring: eventLoop) else { return nil }
        return RedisRoute(node: node, connection: connection)
    }

    public func errorReply(_ reply: RedisErrorReply, from node: RedisNode, attempt: Int, on eventLoop: any EventLoop) -> RedisRedirect? {
        // A master that was demoted to a replica refuses writes.
        if reply == .readOnly { driver.request(.readOnly) }
        return nil
    }

    /// Resolves the master and connects to it (returns when that first attempt ended), then subscribes
    /// to every Sentinel and starts the periodic check.
    public func start() async {
        await driver.start()
        for watcher in watchers { await watcher.start() }
        driver.startPeriodic(every: configuration.refreshInterval)
    }

    public func shutdown() async {
        let nodes = driver.stop()
        for watcher in watchers { await watcher.shutdown() }
        for node in nodes { await node.shutdown() }
    }

    public var status: RedisTopologyStatus {
        let figures = driver.figures
        let reachable = driver.resolution.reachable.withLockedValue { $0 }
        return .sentinel(
            .init(
                url: configuration.redactedDescription, masterName: configuration.masterName,
                master: figures.routing?.status(role: "master"),
                sentinels: configuration.sentinels.map { .init(address: $0.description, reachable: reachable[$0] ?? false) },
                switches: figures.changes,
                lastSwitch: figures.lastChange.map { .init(from: $0.from?.description, to: $0.to.description, at: $0.at) }))
    }
}

/// Sentinel's part of ``TopologyDriver``: the master's address is the snapshot, its node the routing.
struct SentinelResolution: TopologyResolution {
    let configuration: SentinelConfiguration
    /// Whether the last attempt to ask each Sentinel worked.
    let reachable = NIOLockedValueBox<[SentinelConfiguration.Address: Bool]>([:])

    /// Records whether `sentinel` answered; returns what was known before (nil: never asked).
    @discardableResult
    func reached(_ sentinel: SentinelConfiguration.Address, _ answered: Bool) -> Bool? {
        reachable.withLockedValue { state in
            defer { state[sentinel] = answered }
            return state[sentinel]
        }
    }

    /// Asks each Sentinel in turn for the master, and confirms the answer with `ROLE` on that node.
    func resolve(current: Address?, on eventLoop: any EventLoop) async -> Result<Address, RedisClientError> {
        var lastError = RedisClientError(.unavailable, "no Sentinel is configured")
        let name = configuration.masterName
        for sentinel in configuration.sentinels {
            let candidate: Address
            do {
                let reply = try await RedisConnection.ask(
                    RedisCommand("SENTINEL", "get-master-addr-by-name", .string(name)), configuration.sentinel(sentinel), on: eventLoop)
                reached(sentinel, true)
                guard case .array(let parts) = reply, parts.count == 2, case .bulk(let host) = parts[0], case .bulk(let port) = parts[1],
                    let number = Int(String(buffer: port))
                else {
                    lastError = RedisClientError(.protocolError, "Sentinel \(sentinel) does not know master \(name): \(reply)")
                    continue
                }
                candidate = Address(host: String(buffer: host), port: number)
            } catch {
                reached(sentinel, false)
                lastError = RedisClientError(.unavailable, "Sentinel \(sentinel): \(error)")
                continue
            }
            do {
                let role = try await RedisConnection.ask(RedisCommand("ROLE"), configuration(of: candidate), on: eventLoop)
                guard case .array(let parts) = role, case .bulk(let word)? = parts.first, String(buffer: word) == "master" else {
                    // A Sentinel that has not seen the failover yet names the old master, now a replica: ask another.
                    lastError = RedisClientError(.protocolError, "\(candidate), named by Sentinel \(sentinel), is not a master")
                    continue
                }
                return .success(candidate)
            } catch {
                lastError = RedisClientError(.unavailable, "master \(candidate), named by Sentinel \(sentinel): \(error)")
            }
        }
        return .failure(lastError)
    }

    func addresses(of master: Address) -> [Address] { [master] }

    func configuration(of address: Address) -> RedisConfiguration {
        configuration.dataNode(host: address.host, port: address.port)
    }

    func routing(_ master: Address, nodes: [RedisNode]) -> RedisNode { nodes[0] }

    func logApplied(from: Address?, to: Address, left: [RedisNode], logger: Logger) {
        if let old = left.first {
            logger.warning("Redis master switched; the local copy read from the old master is dropped", metadata: ["from": "\(old.address)", "to": "\(to)"])
        } else {
            logger.info("Redis master resolved through Sentinel", metadata: ["master": "\(to)"])
        }
    }

    var failureMessage: Logger.Message { "cannot resolve the Redis master through Sentinel; retrying" }

    /// The node that is still connecting is not the master yet: its failures ask for nothing.
    var refreshOnLoss: NodeLossPolicy { .routed }
}
