import CachedProtocol
import CachedRedis
import Logging
import NIOConcurrencyHelpers
import NIOCore

/// Runs one request: validates its params, talks to the store, fills misses, counts it.
public final class RequestDispatcher: Sendable {
    public let store: any CacheStore
    public let stats: Stats
    public let coordinator: FillCoordinator
    public let handlers: HandlerRegistry
    /// What the fleet's single flight and the stale window did.
    public let fleetStats = FleetStats()
    /// The Prometheus exposition of ``statsSnapshot()`` (`metrics`, `GET /metrics`).
    let metrics: MetricsExporter
    /// Connections that asked to be told of changes (`track`), for near caches in the clients.
    public let tracking: ClientTracking
    /// The near caches' proof (the staleness bound), once the daemon made it.
    let proofPublisher = NIOLockedValueBox<ProofPublisher?>(nil)
    private let configuration: NIOLockedValueBox<DaemonConfiguration>
    /// Per-key access (`[[access]]`): the rules in force and what they refused.
    let access: AccessControl
    private let startTime = NIODeadline.now()
    let logger: Logger

    public init(
        store: any CacheStore, configuration: DaemonConfiguration, handlers: HandlerRegistry? = nil,
        stats: Stats = Stats(), logger: Logger
    ) {
        self.store = store
        self.stats = stats
        self.coordinator = FillCoordinator(fleet: store.fleet, fleetStats: fleetStats)
        self.handlers = handlers ?? HandlerRegistry(factory: { key, _ in UnavailableHandler(key: key) })
        self.configuration = NIOLockedValueBox(configuration)
        self.logger = logger
        self.access = AccessControl(rules: configuration.live.access, logger: logger)
        self.metrics = MetricsExporter(topKeys: configuration.startup.metrics.topKeys)
        let tracking = ClientTracking(logger: logger)
        self.tracking = tracking
        store.observeChanges { change in
            switch change {
            case .keys(let keys): tracking.changed(keys: keys)
            case .all: tracking.changedAll()
            }
        }
    }

    /// The configuration in force (it can be replaced by a reload).
    public var currentConfiguration: DaemonConfiguration {
        configuration.withLockedValue { $0 }
    }

    /// Replaces the live configuration (TTLs and key settings take effect for the next request).
    public func updateConfiguration(_ new: DaemonConfiguration) {
        configuration.withLockedValue { $0 = new }
        if access.update(new.live.access) {
            // Near caches may hold entries of keys their peer can no longer read: every tracking connection
            // drops everything (a notification that names nothing), and open connections use the new rules
            // from their next request.
            tracking.changedAll()
        }
    }

    /// Where a request is counted: its event loop's shard (``Stats/Shard``).
    @inline(__always)
    func counters(_ context: RequestContext) -> Stats.Shard {
        context.stats ?? stats.common
    }

    /// A client connection closed: its leases pass on, its waits end.
    public func connectionClosed(_ connection: ConnectionID, on eventLoop: any EventLoop) {
        coordinator.connectionClosed(connection, on: eventLoop)
        tracking.stop(connection)
    }

    /// How a request is answered: right away (a hit in memory), or later.
    public enum Completion {
        case now(MethodResult)
        case later(EventLoopFuture<MethodResult>)
    }

    /// Runs a request; a `get` whose value is in the daemon's memory is answered without any future.
    public func run(_ request: JSONRPCRequest, context: RequestContext) -> Completion {
        guard request.method == "get" else { return .later(dispatch(request, context: context)) }
        let params: GetParams
        do {
            params = try GetParams(request.params)
        } catch {
            counters(context).record(method: "get", key: nil, outcome: .error(error.code))
            return .later(context.eventLoop.makeFailedFuture(error))
        }
        return run(params, context: context)
    }

    /// Runs a `get` whose params are already validated (by ``FastGetRequest`` or ``GetParams``).
    public func run(_ params: GetParams, context: RequestContext) -> Completion {
        if let access = context.control?.access {
            // Checked before anything else. A peer that may read but not write never takes a lease (it could
            // not store the value): its miss is answered like a `"lease": false` get.
            switch access.access(params.address.key) {
            case .write: break
            case .read:
                if params.mayLease {
                    var readOnly = params
                    readOnly.mayLease = false
                    return runAllowed(readOnly, context: context)
                }
            case .none:
                let refusal = access.refusal(.read(key: params.address.key), method: "get")
                counters(context).record(method: "get", key: params.address.key, outcome: .error(refusal.code))
                return .later(context.eventLoop.makeFailedFuture(refusal))
            }
        }
        return runAllowed(params, context: context)
    }

    /// Runs a `get` the peer may make.
    @inline(__always)
    private func runAllowed(_ params: GetParams, context: RequestContext) -> Completion {
        // A tracking connection's get is tracked before the lookup: a change from then on is notified.
        let tracked = context.control.map { control in
            guard control.isTracking else { return false }
            tracking.read(params.address, by: control)
            return true
        } ?? false
        if let value = store.cachedValue(params.address) {
            if let age = value.age {
                // A key with a stale window, grace or early refresh: the entry's phase decides.
                switch agedAnswer(params, value, age, context: context) {
                case .now(let result):
                    counters(context).record(method: "get", key: params.address.key, outcome: Self.getOutcome(result))
                    return .now(result)
                case .later(let future):
                    return .later(
                        bounded(future, get: params, context).counted(self, context, method: "get", key: params.address.key, outcome: Self.getOutcome))
                }
            }
            counters(context).record(method: "get", key: params.address.key, outcome: .hit)
            if tracked {
                // A plain hit: how long a near cache may keep it (none when it is about to expire).
                let left = (value.expiresAt - .now()).nanoseconds / 1_000_000
                if left > 0 { return .now(.nearHit(value, nearTTL: min(left, Self.maximumNearTTL))) }
            }
            return .now(.hit(value))
        }
        return .later(countedGet(params, context: context))
    }

    /// The longest a near cache keeps an entry that has no expiry (a day, in milliseconds).
    static let maximumNearTTL: Int64 = 86_400_000

    /// `track`: starts or stops tracking for the connection.
    func track(_ params: TrackParams, context: RequestContext) throws(CachedError) -> MethodResult {
        guard let control = context.control else {
            throw CachedError(.invalidRequest, "track: only a client connection can be tracked")
        }
        guard params.enabled else {
            tracking.stop(control.id)
            return .json(.object(["tracking": .bool(false)]))
        }
        let cap = currentConfiguration.startup.limits.maxTrackedEntries
        let maxEntries = min(params.maxEntries ?? cap, cap)
        let token = tracking.start(control, maxEntries: maxEntries, separate: params.separate)
        var result: [String: JSONValue] = ["tracking": .bool(true), "maxEntries": .number(String(maxEntries))]
        if let token { result["token"] = .string(token) }
        if let publisher = proofPublisher.withLockedValue({ $0 }) {
            // Near hits only with fresh proof; a null path (no page could be made): no near hits at all.
            result["proof"] = .object([
                "path": publisher.path.map(JSONValue.string) ?? .null,
                "maxStaleness": .number(String(Double(publisher.maxStaleness.nanoseconds) / 1e9)),
            ])
        }
        return .json(.object(result))
    }

    /// `notifications {token}`: this connection carries another's notifications from now on.
    func claimNotifications(_ params: NotificationsParams, context: RequestContext) throws(CachedError) -> MethodResult {
        guard let control = context.control, tracking.claim(params.token, by: control) else {
            throw CachedError(.invalidParams, "notifications: no connection waits for token \"\(params.token)\"")
        }
        return .json(.object(["notifications": .bool(true)]))
    }

    /// Completes `write` after the connections that track `storeKey` (`field`) were told it changed (on
    /// success and on failure alike: a failed write's outcome may be unknown).
    func notifying(_ write: EventLoopFuture<MethodResult>, _ storeKey: String, field: String?) -> EventLoopFuture<MethodResult> {
        guard tracking.isActive else { return write }
        let eventLoop = write.eventLoop
        let answer = eventLoop.makePromise(of: MethodResult.self)
        write.whenComplete { result in
            guard let told = self.tracking.changed(storeKey, field: field) else {
                answer.completeWith(result)
                return
            }
            told.hop(to: eventLoop).whenComplete { _ in answer.completeWith(result) }
        }
        return answer.futureResult
    }

    private func countedGet(_ params: GetParams, context: RequestContext) -> EventLoopFuture<MethodResult> {
        bounded(get(params, context: context), get: params, context)
            .counted(self, context, method: "get", key: params.address.key, outcome: Self.getOutcome)
    }

    @Sendable static func getOutcome(_ result: MethodResult) -> Stats.Outcome {
        switch result {
        case .get(true, _), .hit, .nearHit: .hit
        case .stale: .stale
        default: .miss
        }
    }

    /// Runs a request through its method's handler (``MethodRegistry``). The future fails only with ``CachedError``.
    public func dispatch(_ request: JSONRPCRequest, context: RequestContext) -> EventLoopFuture<MethodResult> {
        guard let method = CachedMethod(rawValue: request.method), let handler = MethodRegistry.byMethod[method] else {
            counters(context).record(method: request.method, key: nil, outcome: .error(.methodNotFound))
            return context.eventLoop.makeFailedFuture(CachedError.methodNotFound(request.method))
        }
        do {
            return try handler.run(self, request.params, context: context)
        } catch {
            // Only parameter validation throws.
            counters(context).record(method: request.method, key: nil, outcome: .error(error.code))
            return context.eventLoop.makeFailedFuture(error)
        }
    }

    // MARK: delete, deleteHash

    func delete(_ params: DeleteParams, context: RequestContext) -> EventLoopFuture<MethodResult> {
        let entry = params.address.location
        coordinator.forgetAbsent(entry)
        let wake = coordinator.writeStarted(entry, isDelete: true)
        assert(wake.isEmpty, "a delete passes a lease on; it wakes nobody")
        return store.delete(params.address, on: context.eventLoop)
            .always { _ in self.coordinator.writeFinished(entry) }
            .map { MethodResult.deleted($0) }
    }

    func deleteHash(_ params: DeleteHashParams, context: RequestContext) -> EventLoopFuture<MethodResult> {
        let entries = coordinator.hashDeleteStarted(params.hash.storeKey)
        return store.deleteHash(params.hash, on: context.eventLoop)
            .always { _ in self.coordinator.writesFinished(entries) }
            .map { MethodResult.deleted($0) }
    }

    /// The Prometheus text exposition (docs/metrics.md).
    public func metricsExposition() -> [UInt8] {
        let store = store.status()
        let (snapshot, latency) = statsSnapshotWithHistograms(store)
        return metrics.exposition(
            snapshot,
            histograms: [
                .init(
                    name: "cached_request_duration_seconds",
                    help: "Time from reading a request to writing its answer, by method and where the answer came from (memory, redis, fill, error).",
                    series: latency.map { ([("method", $0.method), ("source", $0.source.label)], $0.histogram) }),
                .init(
                    name: "cached_redis_command_duration_seconds", help: "Redis command round trips (write to reply), by node.",
                    series: store.nodes.filter { $0.metrics.roundTrip.count > 0 }.map { ([("node", $0.address)], $0.metrics.roundTrip) }),
                .init(
                    name: "cached_handler_duration_seconds", help: "Sync handler calls, from submission (time queued included) to answer, by key.",
                    series: handlers.callDurations.filter { $0.histogram.count > 0 }.map { ([("key", $0.key)], $0.histogram) }),
            ])
    }

    func statsSnapshot() -> JSONValue {
        statsSnapshotWithHistograms(store.status()).json
    }

    private func statsSnapshotWithHistograms(
        _ store: StoreStatus
    ) -> (json: JSONValue, latency: [(method: String, source: Stats.Source, histogram: LatencyHistogram)]) {
        let uptime = Double((NIODeadline.now() - startTime).nanoseconds) / 1e9
        let (json, latency) = stats.snapshotWithHistograms(store: store, uptimeSeconds: uptime)
        guard case .object(var members) = json else { return (.null, latency) }
        members["fills"] = coordinator.statistics
        members["fleet"] = fleetStats.json
        members["handlers"] = handlers.status
        var trackingStatus = tracking.status
        if case .object(var t) = trackingStatus, let publisher = proofPublisher.withLockedValue({ $0 }) {
            t["proof"] = publisher.status
            trackingStatus = .object(t)
        }
        members["tracking"] = trackingStatus
        members["access"] = access.status
        return (.object(members), latency)
    }

    // MARK: get (the flow: GetFlow, run by RequestDispatcher+getFlow.swift)

    /// One handler flight: read the store; on a trusted miss call the handler and store its value (only
    /// if the entry is still absent and no write or delete happened since the read); answer every waiter.
    func runFlight(
        _ id: UInt64, _ entry: StoreLocation, _ handler: any SyncHandler, _ params: GetParams,
        _ keyConfig: DaemonConfiguration.KeyConfiguration, on eventLoop: any EventLoop, attempt: Int
    ) {
        read(params.address, keyConfig, on: eventLoop)
            .map { Result<ByteBuffer?, any Error>.success($0) }
            .recover { .failure($0) }
            .whenSuccess { read in
                switch read {
                case .success(let value?):
                    self.coordinator.finishFlight(entry, flight: id, .success(.inStore(value)))
                case .success(nil):
                    if self.coordinator.isKnownAbsent(entry) {
                        self.coordinator.finishFlight(entry, flight: id, .success(.inStore(nil)))
                    } else if !self.coordinator.flightReadMissed(entry, flight: id) && attempt < GetFlow.maximumRereads {
                        self.runFlight(id, entry, handler, params, keyConfig, on: eventLoop, attempt: attempt + 1)
                    } else if let locks = self.fleetLocks(keyConfig, entry) {
                        self.fleetFill(id, entry, handler, params, keyConfig, locks, on: eventLoop)
                            .whenComplete { self.coordinator.finishFlight(entry, flight: id, $0) }
                    } else {
                        self.fillAndStore(id, entry, handler, params.address, params.arguments, keyConfig, ttl: keyConfig.ttl, on: eventLoop)
                            .whenComplete { self.coordinator.finishFlight(entry, flight: id, $0) }
                    }
                case .failure(let error):
                    self.fallback(after: error, id, entry, handler, params, keyConfig, on: eventLoop)
                        .whenComplete { self.coordinator.finishFlight(entry, flight: id, $0) }
                }
            }
    }

    /// The store failed the flight's read: for an unavailable or timed-out store the handler still answers
    /// (its value is not stored), with at most `fallback_concurrency` such calls per key; other errors fail.
    ///
    /// The value is not fenced against a write through another daemon that could reach the store
    /// (``FillCoordinator/FillOutcome/filledUnfenced(_:)``): it answers only the gets already waiting.
    private func fallback(
        after error: any Error, _ id: UInt64, _ entry: StoreLocation, _ handler: any SyncHandler, _ params: GetParams,
        _ keyConfig: DaemonConfiguration.KeyConfiguration, on eventLoop: any EventLoop
    ) -> EventLoopFuture<FillCoordinator.FillOutcome> {
        let address = params.address
        guard CachedError.isStoreDown(error), keyConfig.fallbackConcurrency > 0
        else { return eventLoop.makeFailedFuture(error) }
        guard coordinator.acquireFallback(address.key.uppercased(), limit: keyConfig.fallbackConcurrency) else {
            return eventLoop.makeFailedFuture(
                CachedError(.overloaded, "store unavailable and \(keyConfig.fallbackConcurrency) handler calls already running for key \(address.key)"))
        }
        coordinator.flightCallsUnfenced(entry, flight: id)
        return callHandler(handler, address, params.arguments, on: eventLoop)
            .map { .filledUnfenced($0) }
            .always { _ in self.coordinator.releaseFallback(address.key.uppercased()) }
    }

    /// Runs the handler and stores its value, unless the entry was written or deleted since the flight's
    /// read. A fill after a miss stores only if the entry is still absent (`SET NX`), so a value written
    /// meanwhile by anyone is never replaced by the handler's older one (the waiters then read again); a
    /// refresh replaces it.
    func fillAndStore(
        _ id: UInt64, _ entry: StoreLocation, _ handler: any SyncHandler, _ address: EntryAddress,
        _ arguments: HandlerArguments, _ keyConfig: DaemonConfiguration.KeyConfiguration, ttl: Duration, on eventLoop: any EventLoop
    ) -> EventLoopFuture<FillCoordinator.FillOutcome> {
        let started = NIODeadline.now()
        return callHandler(handler, address, arguments, on: eventLoop).flatMap { value in
            guard let value else {
                self.coordinator.rememberAbsent(entry, for: keyConfig.negativeTTL)
                return eventLoop.makeSucceededFuture(.filled(nil, stored: false))
            }
            let (allowed, overwrite) = self.coordinator.flightMayStore(entry, flight: id)
            guard allowed else { return eventLoop.makeSucceededFuture(.filled(value, stored: false)) }
            if (keyConfig.aging?.beta ?? 0) > 0, address.storeField == nil, let locks = self.store.fleet, locks.supports(entry) {
                // Early refresh needs the fill's duration beside the entry (no lock: fleet_single_flight is off).
                return self.fencedStore(
                    locks, entry, token: nil, value: value, keyConfig, ttl: ttl, mode: overwrite ? .overwrite : .fill,
                    delta: Duration(NIODeadline.now() - started), on: eventLoop)
            }
            let storeTTL = keyConfig.storeTTL(ttl)
            let stored = overwrite
                ? self.store.set(address, value: value, ttl: storeTTL, on: eventLoop).map { true }
                : self.store.fill(address, value: value, ttl: storeTTL, on: eventLoop)
            return stored
                .map { $0 ? .filled(value, stored: true) : .overtaken }
                .recover { error in
                    self.logger.warning("could not store a filled entry", metadata: ["entry": "\(address)", "error": "\(error)"])
                    return .filled(value, stored: false)
                }
        }
    }

    func callHandler(
        _ handler: any SyncHandler, _ address: EntryAddress, _ arguments: HandlerArguments, on eventLoop: any EventLoop
    ) -> EventLoopFuture<ByteBuffer?> {
        let promise = eventLoop.makePromise(of: ByteBuffer?.self)
        promise.completeWithTask {
            try await handler.call(address, arguments: arguments)
        }
        return promise.futureResult
    }

    // MARK: set

    func set(_ params: SetParams, context: RequestContext) -> EventLoopFuture<MethodResult> {
        let eventLoop = context.eventLoop
        let address = params.address
        let keyConfig = currentConfiguration.key(address.key)
        let ttl = params.ttl.map { Duration.seconds($0) } ?? keyConfig.ttl
        let entry = address.location

        guard let value = params.value else {
            // pyredis-cache's set(identity) without data: fill from the key's handler and store, replacing
            // what is stored. It joins a flight under way (whose value may then not be stored).
            guard let handler = handlers.handler(for: address.key) else {
                return eventLoop.makeFailedFuture(
                    CachedError(.invalidParams, "set: missing parameter \"value\" (key \(address.key) has no handler to fill it)"))
            }
            coordinator.forgetAbsent(entry)
            return coordinator.requestFlight(entry, on: eventLoop, overwrite: true) { id in
                self.fillAndStore(id, entry, handler, address, params.arguments, keyConfig, ttl: ttl, on: eventLoop)
                    .whenComplete { self.coordinator.finishFlight(entry, flight: id, $0) }
            }.map { answer in
                switch answer {
                case .value(nil, _), .inStore(nil): return .storedRefused("the handler has no such entry")
                case .value(_, let stored): return stored ? .stored(true) : .storedRefused("the filled value could not be stored")
                case .inStore: return .stored(true)  // joined a get's flight that found the entry stored
                case .readAgain, .busy: return .storedRefused("the entry was written meanwhile")
                case .lease, .miss: return .stored(false)
                }
            }
        }

        if let token = params.lease {
            guard let (waiters, fence) = coordinator.redeemLease(entry, token: token) else {
                return eventLoop.makeSucceededFuture(
                    .storedRefused("lease no longer valid: the entry was written or deleted, or the lease expired or was released"))
            }
            // The holder fills a missing entry: stored only if it is still absent, so a value written
            // meanwhile (directly in Redis, or by a set racing this one) is never replaced by an older one;
            // under the fleet's fill lock, only while this daemon still holds it.
            let storeTTL = keyConfig.storeTTL(ttl)
            let stored: EventLoopFuture<(Bool, String?)>
            if case .unfenced = fence {
                // The lock could not be taken for this lease: a store could not be fenced against a write
                // through another daemon made after the value was computed. Not stored; the waiters read
                // again (they may have begun after such a write was visible).
                fleetStats.count { $0.unfencedFills += 1 }
                stored = eventLoop.makeSucceededFuture(
                    (false, "this daemon could not take the entry's fleet fill lock (Redis failed it, or another daemon's fill never ended); the lease's value was not stored"))
            } else if case .fenced(let fleetToken) = fence, let locks = store.fleet {
                stored = locks.store(entry, token: fleetToken, value: value, ttl: storeTTL, mode: .fill, delta: nil, on: eventLoop)
                    .map { outcome in
                        switch outcome {
                        case .stored: return (true, nil)
                        case .writtenMeanwhile: return (false, "the entry was written meanwhile; the lease's value was not stored")
                        case .notRun: return (false, "the entry's cluster slot was migrating; the lease's value was not stored")
                        case .lockLost:
                            self.fleetStats.count { $0.fencedOut += 1 }
                            return (false, "the lease's fill lock expired before the set (another daemon may fill the entry); the value was not stored")
                        }
                    }
            } else {
                stored = store.fill(address, value: value, ttl: storeTTL, on: eventLoop)
                    .map { $0 ? (true, nil) : (false, "the entry was written meanwhile; the lease's value was not stored") }
            }
            return stored.always { result in
                self.coordinator.writeFinished(entry)
                self.coordinator.wake(waiters, stored: (try? result.get()).map(\.0), value: value)
            }.map { stored, reason in
                stored ? MethodResult.stored(true) : .storedRefused(reason ?? "not stored")
            }
        }
        coordinator.forgetAbsent(entry)
        let waiters = coordinator.writeStarted(entry, isDelete: false)
        return store.set(address, value: value, ttl: keyConfig.storeTTL(ttl), on: eventLoop).always { result in
            self.coordinator.writeFinished(entry)
            self.coordinator.wake(waiters, stored: (try? result.get()).map { true }, value: value)
        }.map { MethodResult.stored(true) }
    }
}

/// Stands in for a handler nobody built (a dispatcher made without a registry).
public struct UnavailableHandler: ManagedSyncHandler {
    let key: String
    public init(key: String) { self.key = key }
    public func call(_ address: EntryAddress, arguments: HandlerArguments) async throws(CachedError) -> ByteBuffer? {
        throw CachedError(.handlerError, "no handler available for key \(key)")
    }
    public func start() async {}
    public func shutdown() async {}
    public var status: JSONValue { .null }
}

extension EventLoopFuture where Value == MethodResult {
    /// Counts the request's outcome, and makes sure the future fails only with ``CachedError``.
    func counted(
        _ dispatcher: RequestDispatcher, _ context: RequestContext, method: String, key: String,
        outcome: @escaping @Sendable (MethodResult) -> Stats.Outcome = { _ in .ok }
    ) -> EventLoopFuture<MethodResult> {
        let stats = dispatcher.counters(context)
        return self.map { result in
            stats.record(method: method, key: key, outcome: outcome(result))
            return result
        }.flatMapErrorThrowing { error in
            let error = CachedError(failure: error)
            stats.record(method: method, key: key, outcome: .error(error.code))
            throw error
        }
    }
}
