import Logging
import NIOConcurrencyHelpers
import NIOCore


/// A Redis Cluster (`redis-cluster://`): every key goes to the primary that serves its hash slot.
///
/// The slot map is read with `CLUSTER SHARDS` (`CLUSTER SLOTS` on servers without it) from the first
/// node that answers: the known primaries, then the seeds. It is read again on `MOVED`, `CLUSTERDOWN`,
/// when a connection to a primary is lost or cannot be made (quickly, every 300 ms, while a slot has
/// no reachable primary), and every ``ClusterConfiguration/refreshInterval``; one refresh at a time
/// (``TopologyRefreshStateMachine``).
///
/// Each primary is a ``RedisNode`` with its own pool and invalidation listener. When the map changes,
/// new primaries are connected before commands are routed to them, a primary that lost slots has what
/// the local copy read from it dropped, and a primary that left is reported
/// ``RedisNodeEvent/removed(node:)`` and closed.
///
/// Redirects: `MOVED` is resent once to the named node (and the map refreshed), `ASK` is resent to the
/// named node preceded by `ASKING`, `TRYAGAIN` is retried after a short backoff; the store bounds the
/// number of redirects per command. A redirect means the command was not run, so resending is safe.
public final class ClusterTopology: RedisTopology {
    public typealias Address = ClusterConfiguration.Address
    public let configuration: ClusterConfiguration
    private let group: any EventLoopGroup
    private let eventLoop: any EventLoop
    private let tracking: Bool
    private let logger: Logger
    private let onEvent: @Sendable (RedisNodeEvent) -> Void
    private let state: NIOLockedValueBox<State>

    /// What commands are routed with: the map and, for each of its primaries, its node.
    final class Routing: Sendable {
        let map: ClusterSlotMap
        let nodes: [RedisNode]
        init(map: ClusterSlotMap, nodes: [RedisNode]) {
            self.map = map
            self.nodes = nodes
        }
    }

    struct State {
        var machine: TopologyRefreshStateMachine<ClusterSlotMap>
        var routing: Routing?
        var nodes: [Address: RedisNode] = [:]
        /// Nodes that left: their late events are not forwarded.
        var retired: Set<UInt64> = []
        /// Waiting for the refresh in flight / for the one after it.
        var waitingForCurrent: [EventLoopPromise<Void>] = []
        var waitingForNext: [EventLoopPromise<Void>] = []
        var periodic: RepeatedTask?
        var retry: Scheduled<Void>?
        var quick: Scheduled<Void>?
        var moved = 0
        var ask = 0
        var tryAgain = 0
        var clusterDown = 0
        var lastRefresh: Double?
        var lastError: String?
    }

    public init(
        configuration: ClusterConfiguration, group: any EventLoopGroup, tracking: Bool, logger: Logger,
        onEvent: @escaping @Sendable (RedisNodeEvent) -> Void
    ) {
        self.configuration = configuration
        self.group = group
        self.eventLoop = group.next()
        self.tracking = tracking
        self.logger = logger
        self.onEvent = onEvent
        let backoff = configuration.data.reconnectBackoff
        self.state = NIOLockedValueBox(State(machine: TopologyRefreshStateMachine(backoff: backoff)))
    }

    // MARK: RedisTopology

    public func route(_ key: String, preferring eventLoop: any EventLoop) -> RedisRoute? {
        guard let routing = state.withLockedValue({ $0.routing }), let index = routing.map.ownerIndex(of: HashSlot.of(key)) else {
            return nil
        }
        let node = routing.nodes[index]
        guard let connection = node.pool.connection(preferring: eventLoop) else { return nil }
        return RedisRoute(node: node, connection: connection)
    }

    public func errorReply(_ message: String, from node: RedisNode, attempt: Int, on eventLoop: any EventLoop) -> RedisRedirect? {
        let words = message.split(separator: " ")
        switch words.first {
        case "MOVED", "ASK":
            let asking = words.first == "ASK"
            state.withLockedValue { state in
                if asking { state.ask += 1 } else { state.moved += 1 }
            }
            if !asking { request(.moved) }
            guard words.count >= 3, let target = Self.address(words[2]) else { return nil }
            let known = state.withLockedValue { $0.nodes[target] }
            if let known, let connection = known.pool.connection(preferring: eventLoop) {
                return .resend(RedisRoute(node: known, connection: connection), asking: asking)
            }
            // A node the map does not know yet: route again after a refresh.
            return .retry(after: refreshed(on: eventLoop))
        case "TRYAGAIN":
            // A multi-key operation during a migration (not sent by the daemon) or a slot being imported.
            state.withLockedValue { $0.tryAgain += 1 }
            let delay = TimeAmount.milliseconds(Int64(20 << min(attempt, 4)))
            return .retry(after: eventLoop.scheduleTask(in: delay) {}.futureResult)
        case "CLUSTERDOWN":
            state.withLockedValue { $0.clusterDown += 1 }
            request(.clusterDown)
            return nil
        default:
            return nil
        }
    }

    public func start() async {
        let action = state.withLockedValue { $0.machine.refreshRequested(.start) }
        if action == .refresh { await refreshLoop() }
        let interval = configuration.refreshInterval
        let periodic = eventLoop.scheduleRepeatedTask(initialDelay: interval, delay: interval) { [weak self] _ in
            self?.request(.periodic)
        }
        state.withLockedValue { $0.periodic = periodic }
    }

    public func shutdown() async {
        let (nodes, periodic, timers, waiters) = state.withLockedValue { state in
            state.machine.stop()
            defer {
                state.nodes = [:]
                state.routing = nil
                state.waitingForCurrent = []
                state.waitingForNext = []
                state.periodic = nil
                state.retry = nil
                state.quick = nil
            }
            return (Array(state.nodes.values), state.periodic, [state.retry, state.quick], state.waitingForCurrent + state.waitingForNext)
        }
        periodic?.cancel()
        timers.forEach { $0?.cancel() }
        waiters.forEach { $0.succeed() }
        for node in nodes { await node.shutdown() }
    }

    public var status: RedisTopologyStatus {
        let (routing, machine, counts, last) = state.withLockedValue {
            ($0.routing, $0.machine, ["moved": $0.moved, "ask": $0.ask, "tryAgain": $0.tryAgain, "clusterDown": $0.clusterDown], $0.lastRefresh)
        }
        let slots = routing?.map.slotCounts ?? [:]
        var nodes: [RedisTopologyStatus.Node] = []
        if let routing {
            for (address, node) in zip(routing.map.primaries, routing.nodes) {
                var n = node.status(role: "master")
                n.slots = slots[address] ?? 0
                nodes.append(n)
            }
        }
        var status = RedisTopologyStatus(kind: "cluster", nodes: nodes, url: configuration.redactedDescription)
        status.redirects = counts
        status.refreshes = machine.refreshes
        status.unownedSlots = routing?.map.unownedSlots ?? HashSlot.count
        status.lastRefresh = last
        status.switches = machine.changes
        return status
    }

    // MARK: Refresh

    /// Asks for a refresh; starts one unless one is running (then it runs again right after).
    func request(_ reason: TopologyRefreshStateMachine<ClusterSlotMap>.Reason) {
        let action = state.withLockedValue { $0.machine.refreshRequested(reason) }
        guard action == .refresh else { return }
        Task { await self.refreshLoop() }
    }

    /// Completes when a refresh that starts after this call has ended (whatever it found).
    func refreshed(on eventLoop: any EventLoop) -> EventLoopFuture<Void> {
        let promise = eventLoop.makePromise(of: Void.self)
        let (action, stopped) = state.withLockedValue { state -> (TopologyRefreshStateMachine<ClusterSlotMap>.Action, Bool) in
            guard !state.machine.isStopped else { return (.none, true) }
            let running = state.machine.isRefreshing
            let action = state.machine.refreshRequested(.moved)
            if running { state.waitingForNext.append(promise) } else { state.waitingForCurrent.append(promise) }
            return (action, false)
        }
        if stopped { promise.succeed() }
        if action == .refresh { Task { await self.refreshLoop() } }
        return promise.futureResult
    }

    /// Runs refreshes (and the changes they lead to) until the machine asks for none.
    private func refreshLoop() async {
        var action = TopologyRefreshStateMachine<ClusterSlotMap>.Action.refresh
        while true {
            switch action {
            case .refresh:
                let result = await readMap()
                let (next, done) = state.withLockedValue { state in
                    let next: TopologyRefreshStateMachine<ClusterSlotMap>.Action
                    switch result {
                    case .success(let map): next = state.machine.refreshed(map)
                    case .failure(let error):
                        next = state.machine.refreshFailed()
                        state.lastError = "\(error)"
                    }
                    state.lastRefresh = wallClockSeconds()
                    return (next, Self.endRefresh(&state, next))
                }
                done.forEach { $0.succeed() }
                if case .failure(let error) = result, state.withLockedValue({ $0.machine.failures }) <= 2 {
                    logger.warning("cannot read the Redis Cluster slot map; retrying", metadata: ["error": "\(error)"])
                }
                action = next
            case .apply(let from, let to):
                await apply(from: from, to: to)
                let (next, done) = state.withLockedValue { state in
                    let next = state.machine.applied()
                    return (next, Self.endRefresh(&state, next))
                }
                done.forEach { $0.succeed() }
                action = next
            case .retry(let delay):
                let task = eventLoop.scheduleTask(in: delay) { [weak self] () -> Void in self?.request(.retry) }
                state.withLockedValue { $0.retry = task }
                return
            case .none:
                scheduleQuickRefreshIfNeeded()
                return
            }
        }
    }

    /// The waiters a refresh step releases: all of them unless the step goes on with the same refresh
    /// (an `apply`); when another refresh follows, those waiting for the next one become current.
    private static func endRefresh(
        _ state: inout State, _ next: TopologyRefreshStateMachine<ClusterSlotMap>.Action
    ) -> [EventLoopPromise<Void>] {
        if case .apply = next { return [] }
        let done = state.waitingForCurrent
        state.waitingForCurrent = state.waitingForNext
        state.waitingForNext = []
        if next != .refresh {
            // No refresh follows at once: nobody should wait longer than this one.
            let rest = state.waitingForCurrent
            state.waitingForCurrent = []
            return done + rest
        }
        return done
    }

    /// While a slot has no primary or a primary has no connection up, look again soon (a failover is
    /// probably under way: the replica's promotion is what ends it).
    private func scheduleQuickRefreshIfNeeded() {
        let needed = state.withLockedValue { state -> Bool in
            guard !state.machine.isStopped, state.quick == nil, let routing = state.routing else { return false }
            return routing.map.unownedSlots > 0 || routing.nodes.contains { $0.pool.connectedCount == 0 }
        }
        guard needed else { return }
        let task = eventLoop.scheduleTask(in: .milliseconds(300)) { [weak self] () -> Void in
            guard let self else { return }
            self.state.withLockedValue { $0.quick = nil }
            self.request(.unreachableNode)
        }
        state.withLockedValue { $0.quick = task }
    }

    /// Asks the known primaries, then the seeds, for the slot map.
    private func readMap() async -> Result<ClusterSlotMap, RedisClientError> {
        let known = state.withLockedValue { $0.routing?.map.primaries ?? [] }
        var candidates = known
        for seed in configuration.seeds where !candidates.contains(seed) { candidates.append(seed) }
        var lastError = RedisClientError(.unavailable, "no cluster node is configured")
        let tls = configuration.data.tls != nil
        for address in candidates {
            do {
                let connection = try await RedisConnection.connect(configuration: configuration.node(address), eventLoop: eventLoop).get()
                defer { connection.channel.close(promise: nil) }
                let shards = try await connection.send(RedisCommand("CLUSTER", "SHARDS")).get()
                let map: ClusterSlotMap
                if case .error = shards {  // before Redis 7
                    map = try ClusterSlotMap.parse(slots: try await connection.send(RedisCommand("CLUSTER", "SLOTS")).get())
                } else {
                    map = try ClusterSlotMap.parse(shards: shards, tls: tls)
                }
                guard !map.primaries.isEmpty else {
                    lastError = RedisClientError(.protocolError, "\(address) knows no primary serving a slot")
                    continue
                }
                return .success(map)
            } catch let error as RedisClientError {
                lastError = RedisClientError(error.code, "\(address): \(error.message)")
            } catch {
                lastError = RedisClientError(.unavailable, "\(address): \(error)")
            }
        }
        return .failure(lastError)
    }

    /// Connects new primaries, routes with the new map, drops what moved slots' old owners read, retires
    /// primaries that left.
    private func apply(from: ClusterSlotMap?, to map: ClusterSlotMap) async {
        let existing = state.withLockedValue { $0.nodes }
        var fresh: [Address: RedisNode] = [:]
        for address in map.primaries where existing[address] == nil {
            fresh[address] = RedisNode(configuration: configuration.node(address), group: group, tracking: tracking, logger: logger) {
                [weak self] event in self?.nodeEvent(event)
            }
        }
        await withTaskGroup(of: Void.self) { group in
            for node in fresh.values { group.addTask { await node.start() } }
        }
        let lost = from.map { map.primariesThatLostSlots(since: $0) } ?? []
        let (left, losing, stopped) = state.withLockedValue { state -> ([RedisNode], [RedisNode], Bool) in
            guard !state.machine.isStopped else { return ([], [], true) }
            state.nodes.merge(fresh) { old, _ in old }
            let left = state.nodes.filter { !map.primaries.contains($0.key) }.map(\.value)
            for node in left {
                state.retired.insert(node.id)
            }
            state.nodes = state.nodes.filter { map.primaries.contains($0.key) }
            state.routing = Routing(map: map, nodes: map.primaries.map { state.nodes[$0]! })
            return (left, lost.compactMap { state.nodes[$0] }, false)
        }
        if stopped {
            for node in fresh.values { await node.shutdown() }
            return
        }
        // A slot that moved away: what its old owner read may be changed elsewhere from now on.
        for node in losing { onEvent(.invalidateAll(node: node.id)) }
        for node in left { onEvent(.removed(node: node.id)) }
        let counts = map.slotCounts
        logger.info(
            from == nil ? "Redis Cluster slot map read" : "Redis Cluster slot map changed",
            metadata: [
                "primaries": "\(map.primaries.map { "\($0)=\(counts[$0] ?? 0)" }.joined(separator: " "))",
                "unowned_slots": "\(map.unownedSlots)", "left": "\(left.map(\.address))",
            ])
        for node in left { await node.shutdown() }
    }

    private func nodeEvent(_ event: RedisNodeEvent) {
        let forward = state.withLockedValue { !$0.retired.contains(event.node) }
        guard forward else { return }
        onEvent(event)
        switch event {
        case .connectionLost, .connectFailed: request(.connectionLost)
        default: break
        }
    }

    static func address(_ text: Substring) -> Address? {
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]) else { return nil }
        var host = text[..<colon]
        if host.hasPrefix("["), host.hasSuffix("]") { host = host.dropFirst().dropLast() }
        return Address(host: String(host), port: port)
    }
}
