import CachedProtocol
import Logging
import NIOCore

/// Stale-while-revalidate, grace and early refresh (XFetch) for keys with `stale_ttl`, `grace` or
/// `early_refresh_beta`: the entry's phase (from Redis's `PTTL`, see ``EntryAge``) decides whether a get
/// is a plain hit, a stale answer with one background refresh, or a wait for a refresh in grace.
extension RequestDispatcher {
    /// The answer to a get of an entry with an age.
    func agedAnswer(_ params: GetParams, _ value: EncodedValue, _ age: EntryAge, context: RequestContext, attempt: Int = 0) -> Completion {
        let now = NIODeadline.now()
        switch age.phase(at: now) {
        case .fresh:
            if age.beta > 0, age.shouldRefreshEarly(at: now, random: Double.random(in: 0..<1)) {
                startRefresh(params, expected: value.raw, early: true, context: context)
            }
            return .now(.hit(value))
        case .stale:
            fleetStats.count { $0.staleAnswers += 1 }
            startRefresh(params, expected: value.raw, early: false, context: context)
            return .now(.stale(value))
        case .grace:
            return .later(graceGet(params, stale: value, context: context, attempt: attempt))
        case .expired:
            // Gone from Redis by now (the local copy never outlives it; this is the instant in between).
            return .later(get(params, context: context, attempt: attempt, agedRead: true))
        }
    }

    /// A get of a key with an age that missed the local copy: one aged read, then as ``agedAnswer``; a
    /// miss goes to the flight. Nil when the key has no age (or no handler to refresh it).
    func agedGet(_ params: GetParams, context: RequestContext, attempt: Int) -> EventLoopFuture<MethodResult>? {
        let keyConfig = currentConfiguration.key(params.address.key)
        guard let policy = keyConfig.aging, handlers.handler(for: params.address.key) != nil else { return nil }
        let eventLoop = context.eventLoop
        return store.readAged(params.address, policy: policy, on: eventLoop).flatMap { entry -> EventLoopFuture<MethodResult> in
            guard let entry else { return self.get(params, context: context, attempt: attempt, agedRead: false) }
            guard let age = entry.age else { return eventLoop.makeSucceededFuture(.get(hit: true, value: entry.value)) }
            var encoded = EncodedValue(entry.value)
            encoded.age = age
            switch self.agedAnswer(params, encoded, age, context: context, attempt: attempt) {
            case .now(let result): return eventLoop.makeSucceededFuture(result)
            case .later(let future): return future
            }
        }.flatMapError { error in
            // Redis is down: the flight's fallback (the handler's value, not stored) answers.
            guard let cached = error as? CachedError, cached.code == .storeUnavailable else { return eventLoop.makeFailedFuture(error) }
            return self.get(params, context: context, attempt: attempt, agedRead: false)
        }
    }

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

    /// In grace: wait for one refresh; if it fails (or another daemon is refreshing), answer the old
    /// value marked stale instead of the error.
    func graceGet(_ params: GetParams, stale: EncodedValue, context: RequestContext, attempt: Int) -> EventLoopFuture<MethodResult> {
        let eventLoop = context.eventLoop
        guard let handler = handlers.handler(for: params.address.key) else { return eventLoop.makeSucceededFuture(.stale(stale)) }
        let entry = params.address.location
        let keyConfig = currentConfiguration.key(params.address.key)
        let mark = store.changeMark()
        let backingOff = coordinator.isBackingOff(entry)
        /// The old value, unless the entry changed meanwhile (a delete through another daemon): then
        /// what is stored now is the answer.
        @Sendable func staleAnswer() -> EventLoopFuture<MethodResult> {
            guard self.store.unchanged(params.address, since: mark) else {
                return self.get(params, context: context, attempt: attempt + 1)
            }
            self.fleetStats.count { $0.graceAnswers += 1 }
            return eventLoop.makeSucceededFuture(.stale(stale))
        }
        // A refresh of this entry failed a moment ago: the old value at once, not another call right away.
        if backingOff { return staleAnswer() }
        return coordinator.requestFlight(entry, on: eventLoop, overwrite: true) { id in
            self.fleetStats.count { $0.refreshes += 1 }
            self.runRefresh(id, entry, handler, params, keyConfig, expected: stale.raw, on: eventLoop)
        }.flatMap { verdict -> EventLoopFuture<MethodResult> in
            switch verdict {
            case .value(let value?, let cached): return eventLoop.makeSucceededFuture(.fill(value: value, lease: nil, cached: cached))
            case .inStore(let value?): return eventLoop.makeSucceededFuture(.get(hit: true, value: value))
            case .value(nil, _), .inStore(nil): return eventLoop.makeSucceededFuture(.get(hit: false, value: nil))
            case .busy:
                return staleAnswer()
            case .readAgain, .miss, .lease:
                // A write of the entry overtook the refresh: what it wrote is the answer.
                return self.get(params, context: context, attempt: attempt + 1)
            }
        }.flatMapError { error in
            self.logger.debug("answering a stale entry in grace after a failed refresh", metadata: ["entry": "\(entry)", "error": "\(error)"])
            return staleAnswer()
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
