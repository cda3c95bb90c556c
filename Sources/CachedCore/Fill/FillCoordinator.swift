import CachedProtocol
import NIOConcurrencyHelpers
import NIOCore

/// Makes one fill per missing entry, however many clients ask at once, and never trusts a store read
/// that a write overtook.
///
/// The decisions are made by the pure ``FillStateMachine`` (one handler flight or one lease per entry,
/// per-entry write epochs, parked misses, the fleet lock behind a lease, the negative cache, the fallback
/// cap); this type is its thin shell: it keeps the machine and the lease timers behind one lock and runs
/// the actions after the lock is released (promises are never completed under the lock).
public final class FillCoordinator: Sendable {
    /// What a handler flight produced.
    public enum FillOutcome: Sendable {
        /// The flight's own store read found the entry, or the negative cache knows it is absent (nil).
        case inStore(ByteBuffer?)
        /// The handler's value (nil = no such entry); `stored` is false when it was not stored.
        case filled(ByteBuffer?, stored: Bool)
        /// A refresh found another daemon refreshing the entry (its fill lock held): no value.
        case busy
        /// The handler's value (nil = no such entry), filled without the fleet's fill lock or with the store
        /// down (``FillCoordinator/flightCallsUnfenced(_:flight:)``): not stored, and answered only to the
        /// waiters that were there before the handler was called; the others read again.
        case filledUnfenced(ByteBuffer?)
        /// The fill's value was refused by the store (the entry was written meanwhile, or its fill lock
        /// was ended by a write through another daemon): it may be older than what is stored, so every
        /// waiter reads again.
        case overtaken
    }

    /// What a waiting `get` is answered with.
    public enum Verdict: Sendable {
        /// The flight found the entry in the store (nil: known to be absent); no handler ran.
        case inStore(ByteBuffer?)
        /// The filled or written value (nil = no such entry); `cached` is false when it was not stored.
        case value(ByteBuffer?, cached: Bool)
        /// The caller now holds the lease and should fill the entry.
        case lease(String)
        /// A miss, without a lease.
        case miss
        /// The store read was overtaken by a write of the entry: read again.
        case readAgain
        /// The refresh this get waited for is running on another daemon: no value from it.
        case busy
    }

    typealias Machine = FillStateMachine<StoreLocation, EventLoopPromise<Verdict>>
    public typealias ReadTicket = FillReadTicket

    struct State {
        var machine = Machine(makeToken: FillCoordinator.makeToken)
        var expiries: [String: Scheduled<Void>] = [:]
        /// Leases handed to a client (a lease the machine granted can end before that, when another
        /// daemon fills the entry first).
        var leasesHandedOut = 0
    }

    let state = NIOLockedValueBox(State())
    /// The fleet's fill locks (nil: leases are this daemon's alone).
    let fleet: (any FleetLocks)?
    let fleetStats: FleetStats

    public init(fleet: (any FleetLocks)? = nil, fleetStats: FleetStats = FleetStats()) {
        self.fleet = fleet
        self.fleetStats = fleetStats
    }

    // MARK: Reads (keys without a handler)

    /// A store read of the entry is about to be sent.
    public func readStarted(_ key: StoreLocation) -> ReadTicket {
        state.withLockedValue { $0.machine.readStarted(key) }
    }

    /// The read found the entry, or failed.
    public func readFinished(_ key: StoreLocation, _ ticket: ReadTicket) {
        state.withLockedValue { $0.machine.readFinished(key, ticket) }
    }

    /// The read found nothing: a lease, a wait for the holder, a plain miss (`mayLease` false), or
    /// `.readAgain` when a write overtook the read.
    public func readMissed(
        _ key: StoreLocation, _ ticket: ReadTicket, context: RequestContext, mayLease: Bool, leaseTimeout: Duration,
        deadline: RequestDeadline? = nil, fleetWide: Bool = false
    ) -> EventLoopFuture<Verdict> {
        let promise = context.eventLoop.makePromise(of: Verdict.self)
        let underFleetLock = fleetWide && fleet?.supports(key) == true
        let policy: Machine.MissPolicy =
            mayLease ? .lease(context.connection, timeout: leaseTimeout, deadline: deadline, fleetWide: underFleetLock) : .noLease
        let actions = state.withLockedValue { $0.machine.readMissed(key, ticket, waiter: promise, policy: policy) }
        run(actions)
        leaveAtDeadline(promise, key, deadline)
        return promise.futureResult
    }

    /// At `deadline`, `waiter` leaves the entry's queue if it still waits in it, and is answered the deadline
    /// error (the machine never hands it anything after that).
    private func leaveAtDeadline(_ waiter: EventLoopPromise<Verdict>, _ key: StoreLocation, _ deadline: RequestDeadline?) {
        guard let deadline else { return }
        let eventLoop = waiter.futureResult.eventLoop
        let timer = eventLoop.scheduleTask(deadline: deadline.instant) { [weak self] in
            guard let self, self.state.withLockedValue({ $0.machine.leave(key, where: { $0 == waiter }) }) else { return }
            waiter.fail(deadline.error("get"))
        }
        waiter.futureResult.whenComplete { _ in timer.cancel() }
    }

    // MARK: Handler flights

    /// Whether a handler flight (a fill or a refresh) is under way for the entry.
    public func hasFlight(_ key: StoreLocation) -> Bool {
        state.withLockedValue { $0.machine.hasFlight(key) }
    }

    /// Joins the handler flight under way for the entry, if any: a miss that arrives while the handler
    /// runs waits for its value without reading the store first.
    public func joinFlight(_ key: StoreLocation, on eventLoop: any EventLoop, deadline: RequestDeadline? = nil) -> EventLoopFuture<Verdict>? {
        let joined = state.withLockedValue { state -> EventLoopPromise<Verdict>? in
            guard state.machine.hasFlight(key) else { return nil }
            let promise = eventLoop.makePromise(of: Verdict.self)
            _ = state.machine.joinFlight(key, waiter: promise)
            return promise
        }
        guard let joined else { return nil }
        leaveAtDeadline(joined, key, deadline)
        return joined.futureResult
    }

    /// Joins the flight under way for the entry, or starts one: then `run` is called with the flight's id
    /// (outside the lock) and must end with ``finishFlight(_:flight:_:)``.
    public func requestFlight(
        _ key: StoreLocation, on eventLoop: any EventLoop, overwrite: Bool = false, deadline: RequestDeadline? = nil,
        run start: (UInt64) -> Void
    ) -> EventLoopFuture<Verdict> {
        let promise = eventLoop.makePromise(of: Verdict.self)
        // (A flight that takes over a lease ends the lease's fleet lock: it expires in Redis.)
        let decision = state.withLockedValue { $0.machine.requestFlight(key, waiter: promise, overwrite: overwrite) }
        if case .start(let id, let actions) = decision {
            run(actions)
            start(id)
        }
        leaveAtDeadline(promise, key, deadline)
        return promise.futureResult
    }

    /// The flight's store read found nothing: true to call the handler, false to read again (a write
    /// overtook the read).
    public func flightReadMissed(_ key: StoreLocation, flight id: UInt64) -> Bool {
        state.withLockedValue { $0.machine.flightReadMissed(key, flight: id) }
    }

    /// Whether the flight's value may be stored, and whether it replaces what is stored (a refresh) or is
    /// stored only if the entry is still absent (a fill after a miss).
    public func flightMayStore(_ key: StoreLocation, flight id: UInt64) -> (allowed: Bool, overwrite: Bool) {
        state.withLockedValue { $0.machine.flightMayStore(key, flight: id) }
    }

    /// The flight is about to call its handler without the fleet's fill lock, or with the store down: its
    /// value is not stored and is for the waiters already there (``FillOutcome/filledUnfenced(_:)``).
    public func flightCallsUnfenced(_ key: StoreLocation, flight id: UInt64) {
        state.withLockedValue { $0.machine.flightCallsUnfenced(key, flight: id) }
    }

    /// The flight ended: every waiter gets its outcome.
    public func finishFlight(_ key: StoreLocation, flight id: UInt64, _ result: Result<FillOutcome, any Error>) {
        var unfenced = false
        if case .success(.filledUnfenced) = result { unfenced = true }
        let end = state.withLockedValue { $0.machine.finishFlight(key, flight: id, unfenced: unfenced) }
        for waiter in end.readAgain { waiter.succeed(.readAgain) }
        for waiter in end.answer {
            switch result {
            case .success(.inStore(let value)): waiter.succeed(.inStore(value))
            case .success(.filled(let value, let stored)): waiter.succeed(.value(value, cached: stored))
            case .success(.filledUnfenced(let value)): waiter.succeed(.value(value, cached: false))
            case .success(.busy): waiter.succeed(.busy)
            case .success(.overtaken): waiter.succeed(.readAgain)
            case .failure(let error): waiter.fail(error)
            }
        }
    }

    // MARK: Writes

    /// A write (`isDelete` false: a `set` with a value and no lease) or a delete of the entry is about to
    /// be sent. Returns the waiters of a lease it revoked, to be answered when the write is done
    /// (``wake(_:stored:value:)``). Must be followed by ``writeFinished(_:)``.
    public func writeStarted(_ key: StoreLocation, isDelete: Bool) -> [EventLoopPromise<Verdict>] {
        // (The write ends a lease's fleet lock in Redis too: a fencing write.)
        let start = state.withLockedValue { $0.machine.writeStarted(key, isDelete: isDelete) }
        run(start.actions)
        return start.wake
    }

    /// A whole hash is about to be deleted. Returns the entries to pass to ``writesFinished(_:)``.
    public func hashDeleteStarted(_ storeKey: String) -> [StoreLocation] {
        // (The delete's script ends every field's fleet lock.)
        let (entries, actions) = state.withLockedValue { $0.machine.hashDeleteStarted { $0.key == storeKey && $0.field != nil } }
        run(actions)
        return entries
    }

    /// The write is done (stored, refused or failed): misses parked behind it read again.
    public func writeFinished(_ key: StoreLocation) {
        writesFinished([key])
    }

    public func writesFinished(_ keys: [StoreLocation]) {
        guard !keys.isEmpty else { return }
        let actions = state.withLockedValue { state in keys.flatMap { state.machine.writeFinished($0) } }
        run(actions)
    }

    /// Answers the waiters of a revoked or redeemed lease once its write is done: with the value when
    /// it was stored or the store failed (`cached: false`), or read again when the store refused it.
    public func wake(_ waiters: [EventLoopPromise<Verdict>], stored: Bool?, value: ByteBuffer) {
        for waiter in waiters {
            switch stored {
            case true?: waiter.succeed(.value(value, cached: true))
            case false?: waiter.succeed(.readAgain)
            case nil: waiter.succeed(.value(value, cached: false))
            }
        }
    }

    // MARK: Leases

    /// A `set` with a lease token: nil if the token is not the entry's live lease; otherwise the lease
    /// ended, a write is in flight (end it with ``writeFinished(_:)``) and these waiters wait for it.
    ///
    /// `fence` says how the value may be stored: with the fleet lock's token when this daemon holds the
    /// entry's lock for the lease (taken in the same step as the lease ends, so nothing can drop the lock's
    /// bookkeeping in between), not at all when the lease is fleet-wide but the lock could not be taken.
    func redeemLease(_ key: StoreLocation, token: String) -> (wake: [EventLoopPromise<Verdict>], fence: Machine.LeaseFence)? {
        let (redeem, fence) = state.withLockedValue { state -> (Machine.Redeem, Machine.LeaseFence?) in
            let fence = state.machine.leaseFence(key, lease: token)
            return (state.machine.redeem(key, token: token), fence)
        }
        guard case .accepted(let wake, let actions) = redeem, let fence else { return nil }
        run(actions)
        return (wake, fence)
    }

    /// The holder gives its lease back: the next waiter gets a new one at once. False when the token is
    /// no longer the entry's live lease.
    public func releaseLease(_ key: StoreLocation, token: String, on eventLoop: any EventLoop) -> Bool {
        let (released, actions) = state.withLockedValue { $0.machine.release(key, token: token) }
        run(actions, on: eventLoop)
        return released
    }

    /// A client connection closed: its leases pass to the next waiter, its waits are answered.
    public func connectionClosed(_ connection: ConnectionID, on eventLoop: any EventLoop) {
        let actions = state.withLockedValue { $0.machine.connectionClosed(connection) }
        run(actions, on: eventLoop)
    }

    // MARK: Negative entries

    /// Remembers that the handler said "no such entry", for `duration`.
    public func rememberAbsent(_ key: StoreLocation, for duration: Duration) {
        guard duration > .zero else { return }
        let deadline = NIODeadline.now() + TimeAmount(duration)
        state.withLockedValue { $0.machine.rememberAbsent(key, until: deadline) }
    }

    /// Whether the handler recently said "no such entry".
    public func isKnownAbsent(_ key: StoreLocation) -> Bool {
        let now = NIODeadline.now()
        return state.withLockedValue { $0.machine.isKnownAbsent(key, now: now) }
    }

    /// The entry was written or deleted: forget that it was absent.
    public func forgetAbsent(_ key: StoreLocation) {
        state.withLockedValue { $0.machine.forgetAbsent(key) }
    }

    // MARK: Refresh backoff

    /// How long after a failed refresh of an entry no new one starts.
    static let refreshBackoff = TimeAmount.seconds(1)

    /// A background refresh of `key` failed.
    public func refreshFailed(_ key: StoreLocation) {
        let until = NIODeadline.now() + Self.refreshBackoff
        state.withLockedValue { $0.machine.refreshFailed(key, until: until) }
    }

    /// Whether a refresh of `key` failed a moment ago (then the old value is answered, no new call made).
    public func isBackingOff(_ key: StoreLocation) -> Bool {
        let now = NIODeadline.now()
        return state.withLockedValue { $0.machine.isBackingOff(key, now: now) }
    }

    // MARK: Fallback cap

    /// Takes a slot for a handler call while the store is down; false if `limit` are already running.
    public func acquireFallback(_ key: String, limit: Int) -> Bool {
        state.withLockedValue { $0.machine.acquireFallback(key, limit: limit) }
    }

    public func releaseFallback(_ key: String) {
        state.withLockedValue { $0.machine.releaseFallback(key) }
    }

    // MARK: Stats

    public var statistics: JSONValue {
        state.withLockedValue { s in
            let c = s.machine.counters
            return .object([
                "flights": .number(String(c.flights)), "joinedFlights": .number(String(c.joinedFlights)),
                "leasesGranted": .number(String(s.leasesHandedOut)), "leaseWaits": .number(String(c.leaseWaits)),
                "leasesRefused": .number(String(c.leasesRefused)), "leasesReleased": .number(String(c.leasesReleased)),
                "leasesExpired": .number(String(c.leasesExpired)), "readsOvertaken": .number(String(c.readsOvertaken)),
                "fillsInFlight": .number(String(s.machine.fillsInFlight)), "leasesOut": .number(String(s.machine.leasesOut)),
                "deadlinesPassed": .number(String(c.deadlinesPassed)),
            ])
        }
    }

    // MARK: Running actions

    /// Runs the machine's actions; `eventLoop`: where a fleet lock is released (a release, an expiry, a
    /// closed connection).
    func run(_ actions: [Machine.Action], on eventLoop: (any EventLoop)? = nil) {
        for action in actions {
            switch action {
            case .answer(let waiters, let reply):
                for waiter in waiters {
                    switch reply {
                    case .readAgain: waiter.succeed(.readAgain)
                    case .miss: waiter.succeed(.miss)
                    case .connectionClosed: waiter.fail(CachedError(.shuttingDown, "connection closed"))
                    }
                }
            case .grant(let waiter, let key, let token, let timeout, let deadline, let fleetToken):
                if let fleet, let fleetToken {
                    grantUnderFleetLock(waiter, key, token: token, timeout: timeout, deadline: deadline, fleet: fleet, fleetToken: fleetToken)
                    continue
                }
                grantNow(waiter, key, token: token, timeout: timeout)
            case .releaseFleetLock(let key, let token):
                // Only a release, an expiry or a closed connection ends a won lock: each runs on a loop.
                assert(eventLoop != nil, "a fleet lock to release with no event loop to send it on")
                if let eventLoop { releaseFleetLocks([(key, token)], on: eventLoop) }
            case .cancelExpiry(let token):
                state.withLockedValue { $0.expiries.removeValue(forKey: token) }?.cancel()
            }
        }
    }

    func expire(_ key: StoreLocation, token: String, on eventLoop: any EventLoop) {
        let actions = state.withLockedValue { state in
            state.expiries[token] = nil
            return state.machine.leaseExpired(key, token: token)
        }
        run(actions, on: eventLoop)
    }

    /// Schedules the lease's expiry and hands it to `waiter`.
    func grantNow(_ waiter: EventLoopPromise<Verdict>, _ key: StoreLocation, token: String, timeout: Duration) {
        let eventLoop = waiter.futureResult.eventLoop
        let task = eventLoop.scheduleTask(in: TimeAmount(timeout)) { [weak self] in
            guard let self else { return }
            self.expire(key, token: token, on: eventLoop)
        }
        state.withLockedValue {
            $0.expiries[token] = task
            $0.leasesHandedOut += 1
        }
        waiter.succeed(.lease(token))
    }

    static func makeToken() -> String {
        var rng = SystemRandomNumberGenerator()
        let a = rng.next() as UInt64
        let b = rng.next() as UInt64
        let hex = String(a, radix: 16) + String(b, radix: 16)
        return String(repeating: "0", count: max(0, 32 - hex.count)) + hex
    }
}
