import CachedProtocol
import Logging
import NIOCore

/// Leases under the fleet's fill lock: before a lease is handed out, the daemon takes the entry's lock in
/// Redis; when another daemon holds it, the asker waits for that daemon's fill instead, and its local
/// waiters with it.
extension FillCoordinator {
    /// The grant of lease `token` to `waiter`, once the fleet lock allows it.
    ///
    /// The asker waits for another daemon's fill no longer than its deadline: then it is answered the
    /// deadline error and the lease passes on to the next local waiter, if any.
    func grantUnderFleetLock(
        _ waiter: EventLoopPromise<Verdict>, _ key: StoreLocation, token: String, timeout: Duration, deadline: RequestDeadline?,
        fleet: any FleetLocks, fleetToken: String
    ) {
        let eventLoop = waiter.futureResult.eventLoop
        let longest = Self.fleetWaitTimeout(timeout)
        let waitTimeout = deadline.map { max(.zero, min(longest, Duration($0.instant - .now()))) } ?? longest
        fleet.acquire(key, token: fleetToken, lease: timeout, requireAbsent: true, on: eventLoop).whenComplete { result in
            switch result {
            case .success(.won):
                self.fleetStats.count { $0.locksWon += 1 }
                self.grantIfLive(waiter, key, token: token, timeout: timeout, won: true, fleetToken: fleetToken)
            case .success(.present(let value)):
                self.filledElsewhere(waiter, key, token: token, value: value)
            case .success(.held):
                self.fleetStats.count {
                    $0.locksLost += 1
                    $0.waits += 1
                }
                FleetWaiter.wait(fleet, key, token: fleetToken, lease: timeout, timeout: waitTimeout, on: eventLoop)
                    .whenSuccess { outcome in
                        switch outcome {
                        case .value(let value):
                            self.filledElsewhere(waiter, key, token: token, value: value)
                        case .won:
                            self.fleetStats.count { $0.locksWon += 1 }
                            self.grantIfLive(waiter, key, token: token, timeout: timeout, won: true, fleetToken: fleetToken)
                        case .gaveUp where deadline?.hasPassed() == true:
                            // The asker's deadline ended its wait: it is told so, and the lease passes on.
                            waiter.fail(deadline!.error("get"))
                            _ = self.releaseLease(key, token: token, on: eventLoop)
                        case .gaveUp, .failed:
                            // The lock never came free in time, or Redis failed: the lease is this daemon's alone.
                            if case .gaveUp = outcome { self.fleetStats.count { $0.waitsGaveUp += 1 } }
                            self.grantIfLive(waiter, key, token: token, timeout: timeout, won: false, fleetToken: fleetToken)
                        }
                    }
            case .failure:
                self.grantIfLive(waiter, key, token: token, timeout: timeout, won: false, fleetToken: fleetToken)
            }
        }
    }

    /// How long a daemon waits for another's fill before it fills without the lock: past two lock
    /// lifetimes, a holder that died has lost its lock long ago.
    static func fleetWaitTimeout(_ lease: Duration) -> Duration {
        lease * 2 + .seconds(1)
    }

    /// Hands out the lease if it is still the entry's live one (a write may have revoked it, or its
    /// asker's connection closed meanwhile: then the asker reads again).
    private func grantIfLive(
        _ waiter: EventLoopPromise<Verdict>, _ key: StoreLocation, token: String, timeout: Duration, won: Bool, fleetToken: String
    ) {
        let (live, orphaned) = state.withLockedValue { state -> (Bool, Bool) in
            guard state.machine.leaseToken(key) == token else {
                // Won for a lease that ended meanwhile: unless a later lease of the entry uses the same
                // lock, give it back at once rather than make everyone wait for its expiry.
                return (false, won && state.fleetLeases[key]?.token != fleetToken)
            }
            state.fleetLeases[key]?.won = won
            return (true, false)
        }
        if orphaned { releaseFleetLocks([(key, fleetToken)], on: waiter.futureResult.eventLoop) }
        guard live else {
            waiter.succeed(.readAgain)
            return
        }
        grantNow(waiter, key, token: token, timeout: timeout)
    }

    /// Another daemon filled the entry: the lease ends, its asker and every local waiter get the value.
    private func filledElsewhere(_ waiter: EventLoopPromise<Verdict>, _ key: StoreLocation, token: String, value: ByteBuffer) {
        let redeem = state.withLockedValue { state in
            let redeem = state.machine.redeem(key, token: token)
            if state.machine.leaseToken(key) == nil { state.fleetLeases[key] = nil }
            return redeem
        }
        waiter.succeed(.value(value, cached: true))
        guard case .accepted(let wake, let actions) = redeem else { return }
        run(actions)
        for other in wake { other.succeed(.value(value, cached: true)) }
        writeFinished(key)
    }

    /// Drops the fleet bookkeeping of `keys` whose lease ended with nobody to pass it to; the locks won
    /// for them, to release in Redis.
    static func endFleetLeases(_ state: inout State, _ keys: [StoreLocation]) -> [(StoreLocation, String)] {
        var ended: [(StoreLocation, String)] = []
        for key in keys {
            guard let lease = state.fleetLeases[key], state.machine.leaseToken(key) == nil else { continue }
            state.fleetLeases[key] = nil
            if lease.won { ended.append((key, lease.token)) }
        }
        return ended
    }

    /// Releases fleet locks at once, so other daemons' waits end without waiting for the lock's expiry.
    func releaseFleetLocks(_ locks: [(StoreLocation, String)], on eventLoop: any EventLoop) {
        guard let fleet else { return }
        for (key, token) in locks {
            fleet.release(key, token: token, on: eventLoop).whenFailure { _ in }
        }
    }
}
