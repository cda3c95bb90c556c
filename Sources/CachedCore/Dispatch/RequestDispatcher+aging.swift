import CachedProtocol
import Logging
import NIOCore

/// Stale-while-revalidate, grace and early refresh (XFetch) for keys with `stale_ttl`, `grace` or
/// `early_refresh_beta`: the refreshes themselves. The entry's phase (from Redis's `PTTL`, see ``EntryAge``)
/// decides, in ``GetFlow``, whether a get is a plain hit, a stale answer with one background refresh, or a
/// wait for a refresh in grace.
extension RequestDispatcher {
    /// Starts one background refresh of the entry, unless a flight for it is under way here already
    /// (fleet-wide, the fill lock lets one daemon refresh).
    func startRefresh(_ params: GetParams, expected: ByteBuffer, early: Bool, context: RequestContext) {
        let entry = params.address.location
        guard !coordinator.hasFlight(entry), !coordinator.isBackingOff(entry), let handler = handlers.handler(for: params.address.key)
        else { return }
        let keyConfig = currentConfiguration.key(params.address.key)
        let eventLoop = context.eventLoop
        _ = coordinator.requestFlight(entry, on: eventLoop, overwrite: true) { id in
            self.fleetStats.count {
                $0.refreshes += 1
                if early { $0.earlyRefreshes += 1 }
            }
            self.runRefresh(id, entry, handler, params, keyConfig, expected: expected, on: eventLoop)
        }
    }

    /// One refresh flight: under the fleet lock (a daemon that finds it held leaves the refresh to its
    /// holder), call the handler and store its value only if the entry still holds `expected` (a write
    /// meanwhile wins) and, under the lock, only while this daemon holds it.
    func runRefresh(
        _ id: UInt64, _ entry: StoreLocation, _ handler: any SyncHandler, _ params: GetParams,
        _ keyConfig: DaemonConfiguration.KeyConfiguration, expected: ByteBuffer, on eventLoop: any EventLoop
    ) {
        let outcome: EventLoopFuture<FillCoordinator.FillOutcome>
        if let locks = fleetLocks(keyConfig, entry) {
            let token = FillCoordinator.makeToken()
            outcome = locks.acquire(entry, token: token, lease: keyConfig.leaseTimeout, requireAbsent: false, on: eventLoop)
                .flatMap { acquired in
                    if case .notRun = acquired {
                        // A slot migrating: as a failed refresh (the old value is answered, a later read tries again).
                        return eventLoop.makeFailedFuture(CachedError(.storeError, "Redis did not run the refresh's lock (a slot was migrating)"))
                    }
                    guard case .won = acquired else {
                        self.fleetStats.count { $0.locksLost += 1 }
                        return eventLoop.makeSucceededFuture(.busy)
                    }
                    self.fleetStats.count { $0.locksWon += 1 }
                    return self.refresh(id, entry, handler, params, keyConfig, expected: expected, token: token, on: eventLoop)
                }
        } else {
            outcome = refresh(id, entry, handler, params, keyConfig, expected: expected, token: nil, on: eventLoop)
        }
        outcome.whenComplete { result in
            if case .failure(let error) = result {
                self.fleetStats.count { $0.refreshesFailed += 1 }
                self.coordinator.refreshFailed(entry)
                self.logger.warning("a background refresh failed", metadata: ["entry": "\(entry)", "error": "\(error)"])
            }
            self.coordinator.finishFlight(entry, flight: id, result)
        }
    }

    private func refresh(
        _ id: UInt64, _ entry: StoreLocation, _ handler: any SyncHandler, _ params: GetParams,
        _ keyConfig: DaemonConfiguration.KeyConfiguration, expected: ByteBuffer, token: String?, on eventLoop: any EventLoop
    ) -> EventLoopFuture<FillCoordinator.FillOutcome> {
        let started = NIODeadline.now()
        let locks = store.fleet
        return callHandler(handler, params.address, params.arguments, on: eventLoop).flatMapError { error in
            if let token { locks?.release(entry, token: token, on: eventLoop).whenFailure { _ in } }
            return eventLoop.makeFailedFuture(error)
        }.flatMap { value -> EventLoopFuture<FillCoordinator.FillOutcome> in
            let delta = Duration(NIODeadline.now() - started)
            guard let locks, self.coordinator.flightMayStore(entry, flight: id).allowed else {
                if let token { locks?.release(entry, token: token, on: eventLoop).whenFailure { _ in } }
                return eventLoop.makeSucceededFuture(.filled(value, stored: false))
            }
            // The handler's "no such entry" deletes it (if it still holds `expected`). A store error counts as
            // a failed refresh.
            return self.fencedStore(locks, entry, token: token, value: value, keyConfig, mode: .refresh(expected: expected), delta: delta, on: eventLoop)
                .map { outcome in
                    if case .filled(_, false) = outcome, value != nil { self.fleetStats.count { $0.refreshesFailed += 1 } }
                    return outcome
                }
        }
    }
}
