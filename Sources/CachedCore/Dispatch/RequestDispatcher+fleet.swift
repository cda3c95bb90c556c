import CachedProtocol
import Logging
import NIOCore

/// One fill per entry across every daemon sharing the store: a handler flight that finds the entry
/// missing takes the entry's fill lock in Redis before it calls the handler; a daemon that finds the
/// lock held waits for the holder's value (see ``FleetLocks``).
extension RequestDispatcher {
    /// Whether the key's fills take the fleet's fill lock (`fleet_single_flight`, on by default with Redis).
    func fleetWide(_ keyConfig: DaemonConfiguration.KeyConfiguration) -> Bool {
        store.fleet != nil && keyConfig.fleetSingleFlight ?? true
    }

    /// The fill locks for `entry`, when its fills take them.
    func fleetLocks(_ keyConfig: DaemonConfiguration.KeyConfiguration, _ entry: StoreLocation) -> (any FleetLocks)? {
        guard fleetWide(keyConfig), let locks = store.fleet, locks.supports(entry) else { return nil }
        return locks
    }

    /// One store read of the entry; with its age for a key with a stale window, grace or early refresh
    /// (so a local copy made from it knows when it turns stale).
    func read(
        _ address: EntryAddress, _ keyConfig: DaemonConfiguration.KeyConfiguration, on eventLoop: any EventLoop
    ) -> EventLoopFuture<ByteBuffer?> {
        guard let policy = keyConfig.aging else { return store.get(address, on: eventLoop) }
        return store.readAged(address, policy: policy, on: eventLoop).map { $0?.value }
    }

    /// A handler fill after a trusted miss, under the fleet's fill lock: the daemon that takes it calls
    /// the handler and stores with a fenced store; the others wait for its value.
    func fleetFill(
        _ id: UInt64, _ entry: StoreLocation, _ handler: any SyncHandler, _ params: GetParams,
        _ keyConfig: DaemonConfiguration.KeyConfiguration, _ locks: any FleetLocks, on eventLoop: any EventLoop
    ) -> EventLoopFuture<FillCoordinator.FillOutcome> {
        let token = FillCoordinator.makeToken()
        // The flight goes on for every waiter: no deadline of one of them cuts the wait short.
        return FleetLockStep.take(locks, entry, token: token, lease: keyConfig.leaseTimeout, deadline: nil, stats: fleetStats, on: eventLoop)
            .flatMap { outcome -> EventLoopFuture<FillCoordinator.FillOutcome> in
                switch outcome {
                case .won:
                    return self.fillUnderLock(id, entry, handler, params, keyConfig, locks, token: token, on: eventLoop)
                case .present(let value):
                    return eventLoop.makeSucceededFuture(.inStore(value))
                case .filledElsewhere(let value):
                    // Filled by another daemon while this one waited: a miss answered by a fill, as at the holder.
                    return eventLoop.makeSucceededFuture(.filled(value, stored: true))
                case .alone(let gaveUp):
                    if gaveUp {
                        self.logger.warning(
                            "gave up waiting for another daemon's fill; filling without the fleet lock", metadata: ["entry": "\(entry)"])
                    }
                    return self.unfencedFill(id, entry, handler, params, on: eventLoop)
                case .deadlinePassed:
                    // Not for a flight (it takes the lock without a deadline); as a lock that never came free.
                    return self.unfencedFill(id, entry, handler, params, on: eventLoop)
                }
            }
    }

    /// A fill without the fleet's lock (Redis failed it, or the wait for another daemon's fill gave up): the
    /// handler answers the gets already waiting, and its value is **not stored**. A `SET NX` would not be
    /// fenced: a write through another daemon after the handler read its source, followed by a delete,
    /// would let the older value in, and every daemon would then serve it. Gets that join after the call
    /// read again (``FillCoordinator/FillOutcome/filledUnfenced(_:)``).
    private func unfencedFill(
        _ id: UInt64, _ entry: StoreLocation, _ handler: any SyncHandler, _ params: GetParams, on eventLoop: any EventLoop
    ) -> EventLoopFuture<FillCoordinator.FillOutcome> {
        fleetStats.count { $0.unfencedFills += 1 }
        coordinator.flightCallsUnfenced(entry, flight: id)
        return callHandler(handler, params.address, params.arguments, on: eventLoop).map { .filledUnfenced($0) }
    }

    /// Calls the handler while holding the lock `token` and stores its value with a fenced store (only
    /// while the lock is still this daemon's, and the entry still absent). Errors and "no such entry"
    /// release the lock at once.
    private func fillUnderLock(
        _ id: UInt64, _ entry: StoreLocation, _ handler: any SyncHandler, _ params: GetParams,
        _ keyConfig: DaemonConfiguration.KeyConfiguration, _ locks: any FleetLocks, token: String, on eventLoop: any EventLoop
    ) -> EventLoopFuture<FillCoordinator.FillOutcome> {
        let started = NIODeadline.now()
        return callHandler(handler, params.address, params.arguments, on: eventLoop).flatMapError { error in
            locks.release(entry, token: token, on: eventLoop).whenFailure { _ in }
            return eventLoop.makeFailedFuture(error)
        }.flatMap { value -> EventLoopFuture<FillCoordinator.FillOutcome> in
            let delta = Duration(NIODeadline.now() - started)
            guard let value else {
                self.coordinator.rememberAbsent(entry, for: keyConfig.negativeTTL)
                locks.release(entry, token: token, on: eventLoop).whenFailure { _ in }
                return eventLoop.makeSucceededFuture(.filled(nil, stored: false))
            }
            guard self.coordinator.flightMayStore(entry, flight: id).allowed else {
                locks.release(entry, token: token, on: eventLoop).whenFailure { _ in }
                return eventLoop.makeSucceededFuture(.filled(value, stored: false))
            }
            return self.fencedStore(locks, entry, token: token, value: value, keyConfig, mode: .fill, delta: delta, on: eventLoop)
        }
    }

    /// Stores a fill's or a refresh's value with the fenced script (see ``FleetLocks``). A refusal (the
    /// entry was written meanwhile, or the lock was lost: expired, or ended by a write through another
    /// daemon) means the value may be older than what is stored: every waiter reads again. A store error
    /// releases the lock; the value is still the answer (`cached: false`). `ttl`: the entry's (before the
    /// stale window and grace are added); nil = the key's.
    func fencedStore(
        _ locks: any FleetLocks, _ entry: StoreLocation, token: String?, value: ByteBuffer?,
        _ keyConfig: DaemonConfiguration.KeyConfiguration, ttl: Duration? = nil, mode: FleetStoreMode, delta: Duration,
        on eventLoop: any EventLoop
    ) -> EventLoopFuture<FillCoordinator.FillOutcome> {
        let keepDelta = (keyConfig.aging?.beta ?? 0) > 0 ? delta : nil
        return locks.store(
            entry, token: token, value: value, ttl: keyConfig.storeTTL(ttl ?? keyConfig.ttl), mode: mode, delta: keepDelta, on: eventLoop
        ).map { outcome -> FillCoordinator.FillOutcome in
            switch outcome {
            case .stored: return .filled(value, stored: true)
            case .writtenMeanwhile, .notRun: return .overtaken
            case .lockLost:
                self.fleetStats.count { $0.fencedOut += 1 }
                self.logger.notice("a fill lost its fleet lock before its store; its value was not stored", metadata: ["entry": "\(entry)"])
                return .overtaken
            }
        }.recover { error in
            if let token { locks.release(entry, token: token, on: eventLoop).whenFailure { _ in } }
            self.logger.warning("could not store a filled entry", metadata: ["entry": "\(entry)", "error": "\(error)"])
            return .filled(value, stored: false)
        }
    }
}

extension Duration {
    init(_ amount: TimeAmount) {
        self = .nanoseconds(amount.nanoseconds)
    }
}
