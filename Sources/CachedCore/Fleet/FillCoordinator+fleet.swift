import CachedProtocol
import Logging
import NIOCore

/// Leases under the fleet's fill lock: before a lease is handed out, the daemon takes the entry's lock in
/// Redis; when another daemon holds it, the asker waits for that daemon's fill instead, and its local
/// waiters with it.
extension FillCoordinator {
    /// The grant of lease `token` to `waiter`, once the fleet lock allows it (``FleetLockStep``).
    ///
    /// The asker waits for another daemon's fill no longer than its deadline: then it is answered the
    /// deadline error and the lease passes on to the next local waiter, if any.
    func grantUnderFleetLock(
        _ waiter: EventLoopPromise<Verdict>, _ key: StoreLocation, token: String, timeout: Duration, deadline: RequestDeadline?,
        fleet: any FleetLocks, fleetToken: String
    ) {
        let eventLoop = waiter.futureResult.eventLoop
        FleetLockStep.take(fleet, key, token: fleetToken, lease: timeout, deadline: deadline, stats: fleetStats, on: eventLoop)
            .whenSuccess { outcome in
                switch outcome {
                case .won:
                    self.grantIfLive(waiter, key, token: token, timeout: timeout, won: true, fleetToken: fleetToken)
                case .present(let value), .filledElsewhere(let value):
                    self.filledElsewhere(waiter, key, token: token, value: value)
                case .alone:
                    // Redis failed, or the lock never came free in time: the lease is this daemon's alone.
                    self.grantIfLive(waiter, key, token: token, timeout: timeout, won: false, fleetToken: fleetToken)
                case .deadlinePassed:
                    // The asker's deadline ended its wait: it is told so, and the lease passes on.
                    waiter.fail(deadline?.error("get") ?? CachedError(.deadlineExceeded, "get: the request's deadline passed"))
                    _ = self.releaseLease(key, token: token, on: eventLoop)
                }
            }
    }

    /// Hands out the lease if it is still the entry's live one (a write may have revoked it, or its
    /// asker's connection closed meanwhile: then the asker reads again).
    private func grantIfLive(
        _ waiter: EventLoopPromise<Verdict>, _ key: StoreLocation, token: String, timeout: Duration, won: Bool, fleetToken: String
    ) {
        let (live, orphaned) = state.withLockedValue { $0.machine.fleetLockTaken(key, lease: token, fleetToken: fleetToken, won: won) }
        // Won for a lease that ended meanwhile, and no later lease of the entry uses the same lock: given back
        // at once rather than make everyone wait for its expiry.
        if orphaned { releaseFleetLocks([(key, fleetToken)], on: waiter.futureResult.eventLoop) }
        guard live else {
            waiter.succeed(.readAgain)
            return
        }
        grantNow(waiter, key, token: token, timeout: timeout)
    }

    /// Another daemon filled the entry: the lease ends, its asker and every local waiter get the value.
    private func filledElsewhere(_ waiter: EventLoopPromise<Verdict>, _ key: StoreLocation, token: String, value: ByteBuffer) {
        let redeem = state.withLockedValue { $0.machine.redeem(key, token: token) }
        waiter.succeed(.value(value, cached: true))
        guard case .accepted(let wake, let actions) = redeem else { return }
        run(actions)
        for other in wake { other.succeed(.value(value, cached: true)) }
        writeFinished(key)
    }

    /// Releases fleet locks at once, so other daemons' waits end without waiting for the lock's expiry.
    func releaseFleetLocks(_ locks: [(StoreLocation, String)], on eventLoop: any EventLoop) {
        guard let fleet else { return }
        for (key, token) in locks {
            fleet.release(key, token: token, on: eventLoop).whenFailure { _ in }
        }
    }
}
