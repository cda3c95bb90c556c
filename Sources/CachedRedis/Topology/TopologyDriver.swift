import Logging
import NIOConcurrencyHelpers
import NIOCore

/// What a topology gives ``TopologyDriver``: how to find out what Redis looks like now, which nodes
/// that needs, and what commands are routed with. No node lifecycle, timers or events: the driver's.
package protocol TopologyResolution: Sendable {
    /// What one resolution finds (the master's address, a slot map); a change is applied.
    associatedtype Snapshot: Hashable & Sendable
    /// What ``TopologyDriver/routing`` holds once a snapshot is applied: the topology routes with it.
    associatedtype Routing: Sendable
    typealias Address = SentinelConfiguration.Address

    /// Asks Redis once; `current` is the snapshot in use (nil before the first).
    func resolve(current: Snapshot?, on eventLoop: any EventLoop) async -> Result<Snapshot, RedisClientError>
    /// The nodes `snapshot` needs (no duplicates), in the order ``routing(_:nodes:)`` gets them.
    func addresses(of snapshot: Snapshot) -> [Address]
    /// How to reach the node at `address`.
    func configuration(of address: Address) -> RedisConfiguration
    /// What to route with: `nodes` are the nodes at ``addresses(of:)``, in that order.
    func routing(_ snapshot: Snapshot, nodes: [RedisNode]) -> Routing
    /// Nodes that stay but lost part of what they served (`from` to `to`): what they read is dropped.
    func shrunk(from: Snapshot, to: Snapshot) -> Set<Address>
    /// Whether to look again soon (``TopologyDriver/quickRefreshDelay``): say, a slot has no reachable owner.
    func needsQuickRefresh(_ routing: Routing) -> Bool
    /// Says that a change is in place (`from` nil: the first); `left` are the nodes that are retired.
    func logApplied(from: Snapshot?, to: Snapshot, left: [RedisNode], logger: Logger)
    /// Logged for the first two failed resolutions in a row.
    var failureMessage: Logger.Message { get }
    /// Which nodes' lost connections (or failed connects) ask for a resolution.
    var refreshOnLoss: NodeLossPolicy { get }
}

extension TopologyResolution {
    package func shrunk(from: Snapshot, to: Snapshot) -> Set<Address> { [] }
    package func needsQuickRefresh(_ routing: Routing) -> Bool { false }
}

/// Runs a topology: the refresh loop (driven by ``TopologyRefreshStateMachine``), the periodic, retry
/// and quick timers, and the nodes' lifecycle. A change starts the new nodes (connected before anything
/// is routed to them), routes with the new snapshot, reports ``RedisNodeEvent/invalidateAll(node:)`` for
/// nodes that lost part of what they served and ``RedisNodeEvent/removed(node:)`` for those that left
/// (the local copy drops what they read), then shuts the latter down. Node events are forwarded unless
/// the node was retired (``NodeRoster``); a lost connection asks for a resolution.
///
/// Sentinel and Cluster topologies supply only their ``TopologyResolution`` and route with ``routing``.
package final class TopologyDriver<Resolution: TopologyResolution>: Sendable {
    package typealias Snapshot = Resolution.Snapshot
    package typealias Address = Resolution.Address
    package typealias Machine = TopologyRefreshStateMachine<Snapshot>
    package typealias Reason = Machine.Reason

    /// How long to wait before the quick look ``TopologyResolution/needsQuickRefresh(_:)`` asks for.
    package static var quickRefreshDelay: TimeAmount { .milliseconds(300) }

    package let resolution: Resolution
    private let group: any EventLoopGroup
    private let eventLoop: any EventLoop
    private let tracking: Bool
    private let logger: Logger
    private let onEvent: @Sendable (RedisNodeEvent) -> Void
    private let state: NIOLockedValueBox<State>

    /// The last change applied.
    package struct Change: Sendable {
        package var from: Snapshot?
        package var to: Snapshot
        /// Seconds since the Unix epoch.
        package var at: Double
    }

    /// What the topology's status reads, in one lock.
    package struct Figures: Sendable {
        package var routing: Resolution.Routing?
        /// Changes applied after the first.
        package var changes: Int
        /// Resolutions that ended.
        package var refreshes: Int
        package var lastChange: Change?
        /// When the last resolution ended (seconds since the Unix epoch).
        package var lastRefresh: Double?
    }

    struct State: Sendable {
        var machine: Machine
        var roster: NodeRoster<RedisNode>
        var routing: Resolution.Routing?
        var waiters = RefreshWaiters<EventLoopPromise<Void>>()
        var lastChange: Change?
        var lastRefresh: Double?
        var periodic: RepeatedTask?
        var retry: Scheduled<Void>?
        var quick: Scheduled<Void>?
    }

    /// - Parameters:
    ///   - tracking: whether nodes run invalidation listeners (local copy on).
    ///   - backoff: between failed resolutions.
    ///   - onEvent: where the events of nodes that are part of the topology go (the local copy).
    package init(
        _ resolution: Resolution, group: any EventLoopGroup, tracking: Bool, backoff: ReconnectStateMachine.Backoff, logger: Logger,
        onEvent: @escaping @Sendable (RedisNodeEvent) -> Void
    ) {
        self.resolution = resolution
        self.group = group
        self.eventLoop = group.next()
        self.tracking = tracking
        self.logger = logger
        self.onEvent = onEvent
        self.state = NIOLockedValueBox(
            State(machine: Machine(backoff: backoff), roster: NodeRoster(refreshOnLoss: resolution.refreshOnLoss)))
    }

    /// What commands are routed with now (nil before the first change, and after shutdown).
    package var routing: Resolution.Routing? { state.withLockedValue { $0.routing } }

    /// The routed node at `address`, if any.
    package func node(at address: Address) -> RedisNode? { state.withLockedValue { $0.roster.routed[address] } }

    package var figures: Figures {
        state.withLockedValue {
            Figures(
                routing: $0.routing, changes: $0.machine.changes, refreshes: $0.machine.refreshes, lastChange: $0.lastChange,
                lastRefresh: $0.lastRefresh)
        }
    }

    // MARK: Lifecycle

    /// Runs the first resolution (and the change it leads to); returns when it ended, found or not.
    package func start() async {
        let action = state.withLockedValue { $0.machine.refreshRequested(.start) }
        if action == .refresh { await loop() }
    }

    /// Asks for a resolution every `interval` from now on.
    package func startPeriodic(every interval: TimeAmount) {
        let periodic = eventLoop.scheduleRepeatedTask(initialDelay: interval, delay: interval) { [weak self] _ in
            self?.request(.periodic)
        }
        let stopped = state.withLockedValue { state -> Bool in
            guard !state.machine.isStopped else { return true }
            state.periodic = periodic
            return false
        }
        if stopped { periodic.cancel() }
    }

    /// Stops resolving: cancels the timers, releases whoever waits for a resolution, stops routing;
    /// returns the nodes to shut down.
    package func stop() -> [RedisNode] {
        let (nodes, timers, periodic, waiters) = state.withLockedValue { state in
            state.machine.stop()
            defer {
                state.routing = nil
                state.periodic = nil
                state.retry = nil
                state.quick = nil
            }
            return (state.roster.removeAll(), [state.retry, state.quick], state.periodic, state.waiters.removeAll())
        }
        periodic?.cancel()
        timers.forEach { $0?.cancel() }
        waiters.forEach { $0.succeed() }
        return nodes
    }

    /// ``stop()``, then shuts every node down.
    package func shutdown() async {
        for node in stop() { await node.shutdown() }
    }

    // MARK: Resolution

    /// Asks for a resolution; starts one unless one is running (then it runs again right after).
    package func request(_ reason: Reason) {
        let action = state.withLockedValue { $0.machine.refreshRequested(reason) }
        guard action == .refresh else { return }
        Task { await self.loop() }
    }

    /// Asks for a resolution; completes when one that starts after this call has ended (whatever it found).
    package func refreshed(on eventLoop: any EventLoop, reason: Reason) -> EventLoopFuture<Void> {
        let promise = eventLoop.makePromise(of: Void.self)
        let (action, stopped) = state.withLockedValue { state -> (Machine.Action, Bool) in
            guard !state.machine.isStopped else { return (.none, true) }
            let running = state.machine.isRefreshing
            let action = state.machine.refreshRequested(reason)
            state.waiters.add(promise, refreshRunning: running)
            return (action, false)
        }
        if stopped { promise.succeed() }
        if action == .refresh { Task { await self.loop() } }
        return promise.futureResult
    }

    /// Runs resolutions (and the changes they lead to) until the machine asks for none.
    private func loop() async {
        var action = Machine.Action.refresh
        while true {
            switch action {
            case .refresh:
                let current = state.withLockedValue { $0.machine.current }
                let result = await resolution.resolve(current: current, on: eventLoop)
                let (next, done, failures) = state.withLockedValue { state in
                    let next: Machine.Action
                    switch result {
                    case .success(let snapshot): next = state.machine.refreshed(snapshot)
                    case .failure: next = state.machine.refreshFailed()
                    }
                    state.lastRefresh = wallClockSeconds()
                    return (next, state.waiters.stepEnded(next), state.machine.failures)
                }
                done.forEach { $0.succeed() }
                if case .failure(let error) = result, failures <= 2 {
                    logger.warning(resolution.failureMessage, metadata: ["error": "\(error)"])
                }
                action = next
            case .apply(let from, let to):
                await apply(from: from, to: to)
                let (next, done) = state.withLockedValue { state in
                    let next = state.machine.applied()
                    return (next, state.waiters.stepEnded(next))
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

    private func scheduleQuickRefreshIfNeeded() {
        let needed = state.withLockedValue { state -> Bool in
            guard !state.machine.isStopped, state.quick == nil, let routing = state.routing else { return false }
            return resolution.needsQuickRefresh(routing)
        }
        guard needed else { return }
        let task = eventLoop.scheduleTask(in: Self.quickRefreshDelay) { [weak self] () -> Void in
            guard let self else { return }
            self.state.withLockedValue { $0.quick = nil }
            self.request(.unreachableNode)
        }
        state.withLockedValue { $0.quick = task }
    }

    // MARK: Nodes

    /// Starts the nodes `to` adds, routes with `to`, reports and retires the nodes that lost or left.
    private func apply(from: Snapshot?, to: Snapshot) async {
        let wanted = resolution.addresses(of: to)
        let missing = state.withLockedValue { $0.roster.missing(wanted) }
        var fresh: [Address: RedisNode] = [:]
        for address in missing {
            fresh[address] = RedisNode(configuration: resolution.configuration(of: address), group: group, tracking: tracking, logger: logger) {
                [weak self] event in self?.nodeEvent(event)
            }
        }
        await withTaskGroup(of: Void.self) { group in
            for node in fresh.values { group.addTask { await node.start() } }
        }
        let shrunk = from.map { resolution.shrunk(from: $0, to: to) } ?? []
        let outcome = state.withLockedValue { state -> (left: [RedisNode], losing: [RedisNode])? in
            guard !state.machine.isStopped else { return nil }
            let (nodes, left) = state.roster.install(wanted, fresh: fresh)
            state.routing = resolution.routing(to, nodes: nodes)
            state.lastChange = Change(from: from, to: to, at: wallClockSeconds())
            return (left, shrunk.compactMap { state.roster.routed[$0] })
        }
        guard let outcome else {
            for node in fresh.values { await node.shutdown() }
            return
        }
        // A slot that moved away: what its old owner read may be changed elsewhere from now on.
        for node in outcome.losing { onEvent(.invalidateAll(node: node.id)) }
        for node in outcome.left { onEvent(.removed(node: node.id)) }
        resolution.logApplied(from: from, to: to, left: outcome.left, logger: logger)
        for node in outcome.left { await node.shutdown() }
    }

    private func nodeEvent(_ event: RedisNodeEvent) {
        let verdict = state.withLockedValue { $0.roster.verdict(event) }
        guard verdict.forward else { return }
        onEvent(event)
        if verdict.refresh { request(.connectionLost) }
    }
}

/// A topology's nodes as a pure value: those it routes to, by address, and those it retired (their late
/// events are dropped). Decides which node events are forwarded and which ask for a resolution.
package struct NodeRoster<Node: TopologyNode>: Sendable {
    package typealias Address = SentinelConfiguration.Address

    package let refreshOnLoss: NodeLossPolicy
    /// The nodes routed to.
    package private(set) var routed: [Address: Node] = [:]
    /// Nodes that left: their events are not forwarded.
    package private(set) var retired: Set<UInt64> = []

    package init(refreshOnLoss: NodeLossPolicy) {
        self.refreshOnLoss = refreshOnLoss
    }

    /// The addresses in `wanted` without a node yet.
    package func missing(_ wanted: [Address]) -> [Address] {
        var seen: Set<Address> = []
        return wanted.filter { routed[$0] == nil && seen.insert($0).inserted }
    }

    /// Routes to `wanted`: keeps the nodes that stay, adds `fresh` (started for ``missing(_:)``), retires
    /// the others. Returns the nodes in `wanted`'s order, and those that left.
    package mutating func install(_ wanted: [Address], fresh: [Address: Node]) -> (nodes: [Node], left: [Node]) {
        routed.merge(fresh) { old, _ in old }
        let keep = Set(wanted)
        let left = routed.filter { !keep.contains($0.key) }.map(\.value)
        for node in left { retired.insert(node.id) }
        routed = routed.filter { keep.contains($0.key) }
        return (wanted.compactMap { routed[$0] }, left)
    }

    /// Stops routing (shutdown); returns the nodes that were routed to.
    package mutating func removeAll() -> [Node] {
        defer { routed = [:] }
        return Array(routed.values)
    }

    /// Whether to forward `event` to the local copy, and whether it asks for a resolution.
    package func verdict(_ event: RedisNodeEvent) -> (forward: Bool, refresh: Bool) {
        let id = event.node
        guard !retired.contains(id) else { return (false, false) }
        switch event {
        case .connectionLost, .connectFailed:
            switch refreshOnLoss {
            case .notRetired: return (true, true)
            case .routed: return (true, routed.values.contains { $0.id == id })
            }
        default:
            return (true, false)
        }
    }
}

/// Which nodes' lost connections (or failed connects) ask a topology for a resolution.
package enum NodeLossPolicy: Sendable, Hashable {
    /// Only the nodes routed to (Sentinel: the current master, not the next one while it connects).
    case routed
    /// Every node not retired: routed, or still connecting (Cluster).
    case notRetired
}

/// What ``NodeRoster`` needs of a node.
package protocol TopologyNode: Sendable {
    var id: UInt64 { get }
}

extension RedisNode: TopologyNode {}

/// Who waits for a resolution (a `MOVED` to a node the map does not know yet): those waiting for the one
/// in flight, and those that asked during it and wait for the one after it.
package struct RefreshWaiters<Waiter: Sendable>: Sendable {
    package private(set) var current: [Waiter] = []
    package private(set) var next: [Waiter] = []

    package init() {}

    /// `refreshRunning`: a resolution was in flight when `waiter` asked (it waits for the next one).
    package mutating func add(_ waiter: Waiter, refreshRunning: Bool) {
        if refreshRunning { next.append(waiter) } else { current.append(waiter) }
    }

    /// A step of the loop ended and the machine said `action`: the waiters it releases. All of them
    /// unless the same resolution goes on (an `apply`); when another resolution follows at once, those
    /// waiting for the next one become current, otherwise nobody waits longer than this one.
    package mutating func stepEnded<Snapshot>(_ action: TopologyRefreshStateMachine<Snapshot>.Action) -> [Waiter] {
        if case .apply = action { return [] }
        let done = current
        current = next
        next = []
        guard action == .refresh else { return done + removeAll() }
        return done
    }

    package mutating func removeAll() -> [Waiter] {
        defer {
            current = []
            next = []
        }
        return current + next
    }
}

extension RedisConnection {
    /// Connects to `configuration` (authenticated, database selected), runs `body`, closes: for the
    /// questions a topology asks (`SENTINEL`, `ROLE`, `CLUSTER SHARDS`), never for data.
    package static func oneShot<T>(
        _ configuration: RedisConfiguration, on eventLoop: any EventLoop, _ body: (RedisConnection) async throws -> T
    ) async throws -> T {
        let connection = try await RedisConnection.connect(configuration: configuration, eventLoop: eventLoop).get()
        defer { connection.channel.close(promise: nil) }
        return try await body(connection)
    }

    /// One command on a short-lived connection; an error reply throws (``RedisClientError/reply(_:)``).
    package static func ask(_ command: RedisCommand, _ configuration: RedisConfiguration, on eventLoop: any EventLoop) async throws -> RedisReply {
        try await oneShot(configuration, on: eventLoop) { connection in
            let reply = try await connection.send(command).get()
            if case .error(let message) = reply { throw RedisClientError.reply(message) }
            return reply
        }
    }
}
