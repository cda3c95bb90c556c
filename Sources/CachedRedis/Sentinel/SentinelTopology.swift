import Logging
import NIOConcurrencyHelpers
import NIOCore

/// A master behind Redis Sentinel (`redis-sentinel://`): every key goes to the master the Sentinels name.
///
/// The master is resolved with `SENTINEL get-master-addr-by-name` from the first Sentinel that answers
/// and confirmed with `ROLE` on the node itself. It is resolved again when a Sentinel publishes
/// `+switch-master` (one subscription per Sentinel), when the master answers `READONLY`, when a
/// connection to it is lost or cannot be made, and every ``SentinelConfiguration/refreshInterval``.
/// ``TopologyRefreshStateMachine`` keeps one resolution in flight at most.
///
/// A switch starts a new ``RedisNode`` (pool and invalidation listener) on the new master, routes new
/// commands to it, then reports the old node ``RedisNodeEvent/removed(node:)`` (the local copy drops
/// everything read from it) and closes it: commands still in flight there fail at once (their outcome is
/// unknown), nothing waits for a node that is gone.
public final class SentinelTopology: RedisTopology {
    public let configuration: SentinelConfiguration
    private let group: any EventLoopGroup
    private let eventLoop: any EventLoop
    private let tracking: Bool
    private let logger: Logger
    private let onEvent: @Sendable (RedisNodeEvent) -> Void
    private let state: NIOLockedValueBox<State>
    private let watchers: [SentinelWatcher]

    struct State {
        var machine: TopologyRefreshStateMachine<SentinelConfiguration.Address>
        var node: RedisNode?
        /// Nodes that left: their late events are not forwarded.
        var retired: Set<UInt64> = []
        var lastSwitch: RedisTopologyStatus.Switch?
        /// Whether the last attempt to ask each Sentinel worked.
        var reachable: [SentinelConfiguration.Address: Bool] = [:]
        var periodic: RepeatedTask?
        var retry: Scheduled<Void>?
    }

    public init(
        configuration: SentinelConfiguration, group: any EventLoopGroup, tracking: Bool, logger: Logger,
        onEvent: @escaping @Sendable (RedisNodeEvent) -> Void
    ) {
        self.configuration = configuration
        self.group = group
        self.eventLoop = group.next()
        self.tracking = tracking
        var logger = logger
        logger[metadataKey: "master_name"] = "\(configuration.masterName)"
        self.logger = logger
        self.onEvent = onEvent
        let backoff = configuration.data.reconnectBackoff
        self.state = NIOLockedValueBox(State(machine: TopologyRefreshStateMachine(backoff: backoff)))
        let loop = eventLoop
        // The watchers report to the topology, which owns them: a weak reference, set once built.
        let owner = WeakOwner()
        self.watchers = configuration.sentinels.map { address in
            SentinelWatcher(
                configuration: configuration.sentinel(address), masterName: configuration.masterName, eventLoop: loop,
                backoff: backoff, logger: logger
            ) { event in
                owner.topology?.watcherEvent(event, sentinel: address)
            }
        }
        owner.topology = self
    }

    // MARK: RedisTopology

    public func route(_ key: String, preferring eventLoop: any EventLoop) -> RedisRoute? {
        guard let node = state.withLockedValue({ $0.node }), let connection = node.pool.connection(preferring: eventLoop) else {
            return nil
        }
        return RedisRoute(node: node, connection: connection)
    }

    public func errorReply(_ message: String, from node: RedisNode, attempt: Int, on eventLoop: any EventLoop) -> RedisRedirect? {
        // A master that was demoted to a replica refuses writes.
        if message.hasPrefix("READONLY") { request(.readOnly) }
        return nil
    }

    /// Resolves the master and connects to it (returns when that first attempt ended), then subscribes
    /// to every Sentinel and starts the periodic check.
    public func start() async {
        let action = state.withLockedValue { $0.machine.refreshRequested(.start) }
        if action == .refresh { await resolveLoop() }
        for watcher in watchers { await watcher.start() }
        let interval = configuration.refreshInterval
        let periodic = eventLoop.scheduleRepeatedTask(initialDelay: interval, delay: interval) { [weak self] _ in
            self?.request(.periodic)
        }
        state.withLockedValue { $0.periodic = periodic }
    }

    public func shutdown() async {
        let (node, periodic, retry) = state.withLockedValue { state in
            state.machine.stop()
            defer {
                state.node = nil
                state.periodic = nil
                state.retry = nil
            }
            return (state.node, state.periodic, state.retry)
        }
        periodic?.cancel()
        retry?.cancel()
        for watcher in watchers { await watcher.shutdown() }
        await node?.shutdown()
    }

    public var status: RedisTopologyStatus {
        let (node, reachable, switches, last) = state.withLockedValue { ($0.node, $0.reachable, $0.machine.changes, $0.lastSwitch) }
        return RedisTopologyStatus(
            kind: "sentinel", nodes: node.map { [$0.status(role: "master")] } ?? [], masterName: configuration.masterName,
            sentinels: configuration.sentinels.map { .init(address: $0.description, reachable: reachable[$0] ?? false) },
            switches: switches, lastSwitch: last, url: configuration.redactedDescription)
    }

    // MARK: Resolution

    /// Asks for a resolution; starts one unless one is running (then it runs again right after).
    func request(_ reason: TopologyRefreshStateMachine<SentinelConfiguration.Address>.Reason) {
        let action = state.withLockedValue { $0.machine.refreshRequested(reason) }
        guard action == .refresh else { return }
        Task { await self.resolveLoop() }
    }

    /// Runs resolutions (and the switches they lead to) until the machine asks for none.
    private func resolveLoop() async {
        var action = TopologyRefreshStateMachine<SentinelConfiguration.Address>.Action.refresh
        while true {
            switch action {
            case .refresh:
                let result = await resolveOnce()
                action = state.withLockedValue { state in
                    switch result {
                    case .success(let address): state.machine.refreshed(address)
                    case .failure: state.machine.refreshFailed()
                    }
                }
                if case .failure(let error) = result, state.withLockedValue({ $0.machine.failures }) <= 2 {
                    logger.warning("cannot resolve the Redis master through Sentinel; retrying", metadata: ["error": "\(error)"])
                }
            case .apply(let from, let to):
                await switchMaster(from: from, to: to)
                action = state.withLockedValue { $0.machine.applied() }
            case .retry(let delay):
                let task = eventLoop.scheduleTask(in: delay) { [weak self] () -> Void in self?.request(.retry) }
                state.withLockedValue { $0.retry = task }
                return
            case .none:
                return
            }
        }
    }

    /// Asks each Sentinel in turn for the master, and confirms the answer with `ROLE` on that node.
    private func resolveOnce() async -> Result<SentinelConfiguration.Address, RedisClientError> {
        var lastError = RedisClientError(.unavailable, "no Sentinel is configured")
        for sentinel in configuration.sentinels {
            let candidate: SentinelConfiguration.Address
            do {
                let reply = try await Self.ask(
                    configuration.sentinel(sentinel), eventLoop: eventLoop,
                    RedisCommand("SENTINEL", "get-master-addr-by-name", .string(configuration.masterName)))
                state.withLockedValue { $0.reachable[sentinel] = true }
                guard case .array(let parts) = reply, parts.count == 2, case .bulk(let host) = parts[0], case .bulk(let port) = parts[1],
                    let number = Int(String(buffer: port))
                else {
                    lastError = RedisClientError(.protocolError, "Sentinel \(sentinel) does not know master \(configuration.masterName): \(reply)")
                    continue
                }
                candidate = SentinelConfiguration.Address(host: String(buffer: host), port: number)
            } catch {
                state.withLockedValue { $0.reachable[sentinel] = false }
                lastError = RedisClientError(.unavailable, "Sentinel \(sentinel): \(error)")
                continue
            }
            do {
                let role = try await Self.ask(configuration.dataNode(host: candidate.host, port: candidate.port), eventLoop: eventLoop, RedisCommand("ROLE"))
                guard case .array(let parts) = role, case .bulk(let name)? = parts.first, String(buffer: name) == "master" else {
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

    /// One command on a short-lived connection.
    private static func ask(_ configuration: RedisConfiguration, eventLoop: any EventLoop, _ command: RedisCommand) async throws -> RedisReply {
        let connection = try await RedisConnection.connect(configuration: configuration, eventLoop: eventLoop).get()
        defer { connection.channel.close(promise: nil) }
        let reply = try await connection.send(command).get()
        if case .error(let message) = reply { throw RedisClientError(.errorReply, message) }
        return reply
    }

    /// Starts the node for the new master, routes to it, then retires the old one.
    private func switchMaster(from: SentinelConfiguration.Address?, to: SentinelConfiguration.Address) async {
        let node = RedisNode(
            configuration: configuration.dataNode(host: to.host, port: to.port), group: group, tracking: tracking, logger: logger
        ) { [weak self] event in
            self?.nodeEvent(event)
        }
        await node.start()
        let (old, stopped) = state.withLockedValue { state -> (RedisNode?, Bool) in
            guard !state.machine.isStopped else { return (nil, true) }
            let old = state.node
            state.node = node
            if let old { state.retired.insert(old.id) }
            state.lastSwitch = .init(from: from?.description, to: to.description, at: wallClockSeconds())
            return (old, false)
        }
        if stopped {
            await node.shutdown()
            return
        }
        if let old {
            onEvent(.removed(node: old.id))
            logger.warning("Redis master switched; the local copy read from the old master is dropped", metadata: ["from": "\(old.address)", "to": "\(to)"])
            await old.shutdown()
        } else {
            logger.info("Redis master resolved through Sentinel", metadata: ["master": "\(to)"])
        }
    }

    private func nodeEvent(_ event: RedisNodeEvent) {
        let (forward, current) = state.withLockedValue { state -> (Bool, Bool) in
            let id = event.node
            return (!state.retired.contains(id), state.node?.id == id)
        }
        guard forward else { return }
        onEvent(event)
        switch event {
        case .connectionLost, .connectFailed:
            if current { request(.connectionLost) }
        default:
            break
        }
    }

    private func watcherEvent(_ event: SentinelWatcher.Event, sentinel: SentinelConfiguration.Address) {
        switch event {
        case .switchMaster(let message):
            logger.info("Sentinel announced a master switch", metadata: ["sentinel": "\(sentinel)", "message": "\(message)"])
            request(.switchMessage)
        case .up:
            let wasDown = state.withLockedValue { state in
                defer { state.reachable[sentinel] = true }
                return state.reachable[sentinel] == false
            }
            // A message may have been missed while this Sentinel was away.
            if wasDown { request(.sentinelReconnected) }
        case .down:
            state.withLockedValue { $0.reachable[sentinel] = false }
        }
    }
}

/// A weak reference to the topology, for callbacks of what it owns.
private final class WeakOwner: @unchecked Sendable {
    private let lock = NIOLock()
    private weak var _topology: SentinelTopology?
    var topology: SentinelTopology? {
        get { lock.withLock { _topology } }
        set { lock.withLock { _topology = newValue } }
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
