import NIOCore

/// The fills and leases of one daemon, per entry, as a pure state machine: events in, actions out.
///
/// No I/O, no locks, no clocks: the shell (``FillCoordinator``) keeps it behind a lock, runs the actions
/// (answers waiters, schedules lease expiries) and feeds back the events (reads answered, writes done,
/// timers fired). `Waiter` is whatever the shell completes (an `EventLoopPromise` in the daemon, a number
/// in the tests, which check that every waiter handed in is answered exactly once).
///
/// Per entry it keeps a record while anything is under way:
/// - an **epoch**, bumped when a write or delete of the entry starts and when it ends, and the number of
///   store reads and writes in flight. A read is trusted only if the epoch did not move while it was in
///   flight and no write is in flight: a miss overtaken by a `set` would otherwise grant a lease (or call
///   the handler) for an entry that is stored;
/// - at most one **activity**: a *handler flight* (the key has a sync handler: one store read and at most
///   one handler call, every concurrent `get` joins it) or a *lease* (no handler: the first asker fills,
///   the others wait for its `set`);
/// - the untrusted misses *parked* until the writes in flight end (then they read again).
///
/// A record is dropped when nothing is under way, so memory follows the activity, not the key space.
///
/// Beside the records it keeps the rest of what fills decide on: the fleet fill lock behind a lease (its
/// token, whether this daemon won it), the negative cache (entries the handler said do not exist, until
/// when: the shell hands in the clock's reading), the refresh backoff (entries whose refresh failed a
/// moment ago) and the fallback cap (handler calls per key while the store is down).
struct FillStateMachine<Entry: Hashable, Waiter> {
    typealias ReadTicket = FillReadTicket

    /// A `get` waiting on a lease, with the connection that sent it.
    struct Pending {
        var connection: ConnectionID
        var waiter: Waiter
        /// When it stops waiting (it leaves with ``leave(_:where:)``; a lease handed to it is cut short then).
        var deadline: RequestDeadline?
    }

    struct Lease {
        var token: String
        var holder: ConnectionID
        /// How long each holder has to fill before the lease passes on.
        var timeout: Duration
        var pending: [Pending] = []
        /// The fleet's fill lock behind the lease (one per entry, kept while the lease passes from one local
        /// asker to the next); nil: the lease is this daemon's alone.
        var fleet: FleetLease?
    }

    /// The fleet's fill lock behind an entry's leases.
    struct FleetLease: Equatable {
        var token: String
        /// Whether this daemon holds it (a lease `set` is then a fenced store).
        var won = false
    }

    struct Flight {
        var id: UInt64
        var waiters: [FlightWaiter]
        /// The entry's epoch when the flight's latest store read was sent (or when a refresh started it).
        var readEpoch: UInt64
        /// Store reads sent so far (the first goes out as the flight starts).
        var reads = 1
        /// Started by a `set` without value (a refresh): its value replaces what is stored.
        var overwrite: Bool
        /// The handler was called for a fill without the fleet lock (``FillStateMachine/flightCallsUnfenced(_:flight:)``):
        /// its value is good only for the waiters that were there before the call.
        var unfencedCall = false
    }

    /// A waiter of a flight, with what it takes to know whether the flight's answer is good for it.
    struct FlightWaiter {
        var waiter: Waiter
        /// Good whatever happens: it started the flight, or it joined with nothing written since the read.
        var clean: Bool
        /// The flight's reads sent when it joined: a read sent after it joined is good for it too.
        var readsBefore: Int
        /// It joined after the flight called its handler without the fleet lock.
        var afterUnfencedCall = false
    }

    /// What a flight's end means for its waiters.
    struct FlightEnd {
        /// The flight's outcome is good for these.
        var answer: [Waiter] = []
        /// These joined after a write of the entry started, and the flight's read came before that
        /// write: its outcome could be older than what they must see. They read again.
        var readAgain: [Waiter] = []
    }

    enum Activity {
        case flight(Flight)
        case lease(Lease)
    }

    struct Record {
        var epoch: UInt64 = 1
        var reads = 0
        var writes = 0
        var activity: Activity?
        var parked: [Waiter] = []

        var isIdle: Bool { reads == 0 && writes == 0 && activity == nil && parked.isEmpty }
    }

    /// How an answer ends for a waiter that the machine answers itself.
    enum Reply: Equatable {
        /// The store read it waited on cannot be trusted: read again.
        case readAgain
        /// A miss without a lease (`"lease": false`, or the lease flow gave up after repeated overtaken reads).
        case miss
        /// Its connection closed while it waited.
        case connectionClosed
    }

    /// What the shell must do.
    enum Action {
        /// Answer these waiters.
        case answer([Waiter], Reply)
        /// Give `waiter` the lease `token`: schedule its expiry after `timeout`, then answer it. With a
        /// `fleetToken`, first take the fleet's fill lock with it (``fleetLockTaken(_:lease:fleetToken:won:)``),
        /// waiting no longer than `deadline`.
        case grant(Waiter, entry: Entry, token: String, timeout: Duration, deadline: RequestDeadline?, fleetToken: String?)
        /// The fleet's fill lock `token` that this daemon won for the entry's leases is no longer needed: release
        /// it in Redis, so other daemons' waits end without waiting for its expiry.
        case releaseFleetLock(entry: Entry, token: String)
        /// The lease `token` ended: cancel its expiry timer.
        case cancelExpiry(token: String)
    }

    /// What a trusted miss on a key without a handler leads to.
    enum MissPolicy {
        /// The lease flow: the first asker fills, the others wait for it.
        /// `fleetWide`: a new lease goes under the fleet's fill lock (granted once the lock allows).
        case lease(ConnectionID, timeout: Duration, deadline: RequestDeadline? = nil, fleetWide: Bool = false)
        /// Answer the miss at once; never take a lease, never wait behind one.
        case noLease
    }

    /// What `requestFlight` decided.
    enum FlightDecision {
        /// A flight is under way; the waiter joined it.
        case joined
        /// The caller runs a new flight with this id; a lease it replaced ended (see the actions).
        case start(id: UInt64, [Action])
    }

    /// What a write starting means for the waiters of a lease in flight.
    struct WriteStart {
        /// Waiters of a revoked lease to answer once the write is done (with its value, or read again).
        var wake: [Waiter] = []
        var actions: [Action] = []
    }

    enum Redeem {
        /// The token is the live lease: the caller stores (a write is now in flight) and wakes `wake` after.
        case accepted(wake: [Waiter], [Action])
        /// Not the live lease (written, deleted, expired, released or passed on): store nothing.
        case refused
    }

    struct Counters: Equatable {
        var flights = 0
        var joinedFlights = 0
        var leasesGranted = 0
        var leaseWaits = 0
        var leasesRefused = 0
        var leasesReleased = 0
        var leasesExpired = 0
        var readsOvertaken = 0
        /// Waiters that left at their deadline.
        var deadlinesPassed = 0
    }

    private(set) var records: [Entry: Record] = [:]
    /// Entries the handler said do not exist, until when (the negative cache).
    private(set) var negatives = ExpiringMarks<Entry>(limit: 100_000)
    /// Handler calls running per key while the store is down.
    private(set) var fallbacks: [String: Int] = [:]
    /// Entries whose last refresh failed, until when no new refresh starts.
    private(set) var refreshBackoffs = ExpiringMarks<Entry>(limit: 10_000)
    private(set) var counters = Counters()
    private var nextFlightID: UInt64 = 0
    private let makeToken: @Sendable () -> String

    init(makeToken: @escaping @Sendable () -> String) {
        self.makeToken = makeToken
    }

    var fillsInFlight: Int { records.values.reduce(0) { if case .flight? = $1.activity { $0 + 1 } else { $0 } } }
    var leasesOut: Int { records.values.reduce(0) { if case .lease? = $1.activity { $0 + 1 } else { $0 } } }

    // MARK: Reads

    /// A store read of `entry` is about to be sent.
    mutating func readStarted(_ entry: Entry) -> ReadTicket {
        records[entry, default: Record()].reads += 1
        return ReadTicket(epoch: records[entry]!.epoch)
    }

    /// The read found the entry, or failed: nothing to decide.
    mutating func readFinished(_ entry: Entry, _ ticket: ReadTicket) {
        update(entry) { $0.reads -= 1 }
    }

    /// The read found nothing. A miss overtaken by a write (or with a write still in flight) is never
    /// trusted: the waiter reads again (at once, or when the writes in flight end). A trusted miss follows
    /// `policy`.
    mutating func readMissed(_ entry: Entry, _ ticket: ReadTicket, waiter: Waiter, policy: MissPolicy) -> [Action] {
        guard var record = records[entry] else { preconditionFailure("readMissed without readStarted") }
        record.reads -= 1
        defer { store(entry, record) }
        if record.writes > 0 {
            counters.readsOvertaken += 1
            record.parked.append(waiter)
            return []
        }
        if record.epoch != ticket.epoch {
            counters.readsOvertaken += 1
            return [.answer([waiter], .readAgain)]
        }
        guard case .lease(let connection, let timeout, let deadline, let fleetWide) = policy else {
            return [.answer([waiter], .miss)]
        }
        switch record.activity {
        case .flight(var flight)?:
            // A handler flight (the key was given a handler by a reload): its answer is this entry's.
            join(waiter, &flight, record)
            record.activity = .flight(flight)
            counters.joinedFlights += 1
            return []
        case .lease(var lease)?:
            if lease.holder == connection {
                // The holder asks again: it gave up its fill. A new token for it; the old one is refused.
                let old = lease.token
                lease.token = makeToken()
                record.activity = .lease(lease)
                counters.leasesGranted += 1
                return [
                    .cancelExpiry(token: old),
                    .grant(waiter, entry: entry, token: lease.token, timeout: lease.timeout, deadline: deadline, fleetToken: lease.fleet?.token),
                ]
            }
            lease.pending.append(Pending(connection: connection, waiter: waiter, deadline: deadline))
            record.activity = .lease(lease)
            counters.leaseWaits += 1
            return []
        case nil:
            let token = makeToken()
            let fleet = fleetWide ? FleetLease(token: makeToken()) : nil
            record.activity = .lease(Lease(token: token, holder: connection, timeout: timeout, fleet: fleet))
            counters.leasesGranted += 1
            return [.grant(waiter, entry: entry, token: token, timeout: timeout, deadline: deadline, fleetToken: fleet?.token)]
        }
    }

    // MARK: Handler flights

    /// The live lease's token of `entry`, if a lease is out.
    func leaseToken(_ entry: Entry) -> String? {
        if case .lease(let lease)? = records[entry]?.activity { return lease.token }
        return nil
    }

    /// Whether a handler flight is under way for `entry`.
    func hasFlight(_ entry: Entry) -> Bool {
        if case .flight? = records[entry]?.activity { return true }
        return false
    }

    /// Joins the handler flight under way for `entry`, if any.
    mutating func joinFlight(_ entry: Entry, waiter: Waiter) -> Bool {
        guard var record = records[entry], case .flight(var flight)? = record.activity else { return false }
        join(waiter, &flight, record)
        record.activity = .flight(flight)
        records[entry] = record
        counters.joinedFlights += 1
        return true
    }

    /// A `get` (or, with `overwrite`, a `set` without value) of an entry whose key has a handler: joins the
    /// flight under way, or starts one. A lease in flight for the entry (the key had no handler before a
    /// reload) ends: its waiters join the new flight, its holder's token is refused from now on.
    mutating func requestFlight(_ entry: Entry, waiter: Waiter, overwrite: Bool = false) -> FlightDecision {
        var record = records[entry] ?? Record()
        defer { store(entry, record) }
        var waiters = [waiter]
        var actions: [Action] = []
        switch record.activity {
        case .flight(var flight)?:
            join(waiter, &flight, record)
            record.activity = .flight(flight)
            counters.joinedFlights += 1
            return .joined
        case .lease(let lease)?:
            waiters += lease.pending.map(\.waiter)
            actions.append(.cancelExpiry(token: lease.token))
        case nil:
            break
        }
        if overwrite { bump(&record) }  // a refresh is a write: reads in flight are overtaken
        nextFlightID += 1
        // Everyone waiting now waits for a read (or a refresh) that starts after it asked: good for all.
        let starters = waiters.map { FlightWaiter(waiter: $0, clean: true, readsBefore: 0) }
        record.activity = .flight(Flight(id: nextFlightID, waiters: starters, readEpoch: record.epoch, overwrite: overwrite))
        counters.flights += 1
        return .start(id: nextFlightID, actions)
    }

    /// The flight's store read found nothing. True: call the handler. False: the miss was overtaken by
    /// a write; the flight reads again (its read epoch moves to now).
    mutating func flightReadMissed(_ entry: Entry, flight id: UInt64) -> Bool {
        guard var record = records[entry], case .flight(var flight)? = record.activity, flight.id == id else { return true }
        guard record.epoch != flight.readEpoch || record.writes > 0 else { return true }
        counters.readsOvertaken += 1
        flight.readEpoch = record.epoch
        flight.reads += 1
        record.activity = .flight(flight)
        records[entry] = record
        return false
    }

    /// Whether the flight's value may be stored: no write or delete of the entry started since its read
    /// (or since the refresh started), and none is in flight. Returns the store mode too: a refresh
    /// replaces what is stored, a fill after a miss stores only if the entry is still absent.
    mutating func flightMayStore(_ entry: Entry, flight id: UInt64) -> (allowed: Bool, overwrite: Bool) {
        guard let record = records[entry], case .flight(let flight)? = record.activity, flight.id == id else { return (false, false) }
        return (record.epoch == flight.readEpoch && record.writes == 0, flight.overwrite)
    }

    /// The flight is about to call its handler without the fleet's fill lock (Redis failed the lock, or the
    /// wait for another daemon's fill gave up), or with the store down. Nothing fences that value against a
    /// write through another daemon made after the call, so it is not stored, and it is good only for the
    /// waiters already there: a get that joins later may have begun after such a write was visible.
    mutating func flightCallsUnfenced(_ entry: Entry, flight id: UInt64) {
        guard var record = records[entry], case .flight(var flight)? = record.activity, flight.id == id else { return }
        flight.unfencedCall = true
        record.activity = .flight(flight)
        records[entry] = record
    }

    /// The flight ended: the waiters its outcome is good for, and those that must read again.
    /// `unfenced`: the outcome is a value filled after ``flightCallsUnfenced(_:flight:)``; the waiters
    /// that joined after that call read again.
    mutating func finishFlight(_ entry: Entry, flight id: UInt64, unfenced: Bool = false) -> FlightEnd {
        guard var record = records[entry], case .flight(let flight)? = record.activity, flight.id == id else { return FlightEnd() }
        record.activity = nil
        store(entry, record)
        var end = FlightEnd()
        for w in flight.waiters {
            if unfenced && w.afterUnfencedCall {
                end.readAgain.append(w.waiter)
            } else if w.clean || w.readsBefore < flight.reads {
                end.answer.append(w.waiter)
            } else {
                end.readAgain.append(w.waiter)
            }
        }
        counters.readsOvertaken += end.readAgain.count
        return end
    }

    // MARK: Writes

    /// A `set` (with a value, without a lease) or a `delete` of `entry` is about to be sent. A lease in
    /// flight ends: after a set its waiters are woken with the value (``WriteStart/wake``); after a delete
    /// the lease passes to the next waiter (and the holder's late `set` is refused).
    mutating func writeStarted(_ entry: Entry, isDelete: Bool) -> WriteStart {
        var record = records[entry] ?? Record()
        defer { store(entry, record) }
        bump(&record)
        record.writes += 1
        guard case .lease(let lease)? = record.activity else { return WriteStart() }
        if isDelete {
            return WriteStart(actions: passOn(entry, lease, in: &record, endsLock: false))
        }
        record.activity = nil
        return WriteStart(wake: lease.pending.map(\.waiter), actions: [.cancelExpiry(token: lease.token)])
    }

    /// A whole hash is about to be deleted: as ``writeStarted(_:isDelete:)`` for every field under way.
    /// Returns the entries to pass to ``writeFinished(_:)`` when it is done.
    mutating func hashDeleteStarted(_ matches: (Entry) -> Bool) -> (entries: [Entry], actions: [Action]) {
        negatives.removeAll(where: matches)
        var entries: [Entry] = []
        var actions: [Action] = []
        for entry in records.keys where matches(entry) {
            entries.append(entry)
            actions += writeStarted(entry, isDelete: true).actions
        }
        return (entries, actions)
    }

    /// A write or delete of `entry` is done (stored, refused or failed). When no write is left in flight,
    /// the parked misses read again.
    mutating func writeFinished(_ entry: Entry) -> [Action] {
        guard var record = records[entry] else { return [] }
        defer { store(entry, record) }
        bump(&record)
        record.writes -= 1
        guard record.writes == 0, !record.parked.isEmpty else { return [] }
        let parked = record.parked
        record.parked = []
        return [.answer(parked, .readAgain)]
    }

    // MARK: Leases

    /// A `set` with a lease token. Accepted only for the live lease; the lease ends and a write is in
    /// flight until ``writeFinished(_:)``.
    mutating func redeem(_ entry: Entry, token: String) -> Redeem {
        negatives.remove(entry)
        guard var record = records[entry], case .lease(let lease)? = record.activity, lease.token == token else {
            counters.leasesRefused += 1
            return .refused
        }
        defer { store(entry, record) }
        bump(&record)
        record.writes += 1
        record.activity = nil
        return .accepted(wake: lease.pending.map(\.waiter), [.cancelExpiry(token: token)])
    }

    /// The holder gives its lease back (its fill failed): the next waiter gets a new lease at once.
    mutating func release(_ entry: Entry, token: String) -> (released: Bool, [Action]) {
        guard var record = records[entry], case .lease(let lease)? = record.activity, lease.token == token else {
            return (false, [])
        }
        defer { store(entry, record) }
        counters.leasesReleased += 1
        return (true, passOn(entry, lease, in: &record))
    }

    /// The lease `token`'s timer fired: if it is still the live lease, it passes on.
    mutating func leaseExpired(_ entry: Entry, token: String) -> [Action] {
        guard var record = records[entry], case .lease(let lease)? = record.activity, lease.token == token else { return [] }
        defer { store(entry, record) }
        counters.leasesExpired += 1
        return passOn(entry, lease, in: &record)
    }

    /// A client connection closed: its waits end (answered as closed), its leases pass on.
    mutating func connectionClosed(_ connection: ConnectionID) -> [Action] {
        var actions: [Action] = []
        for entry in Array(records.keys) {
            guard var record = records[entry], case .lease(var lease)? = record.activity else { continue }
            let mine = lease.pending.filter { $0.connection == connection }
            if !mine.isEmpty {
                actions.append(.answer(mine.map(\.waiter), .connectionClosed))
                lease.pending.removeAll { $0.connection == connection }
            }
            if lease.holder == connection {
                actions += passOn(entry, lease, in: &record)
            } else {
                record.activity = .lease(lease)
            }
            store(entry, record)
        }
        return actions
    }

    // MARK: The fleet's fill lock behind a lease

    /// The fleet lock's answer for the grant of lease `token` (``Action/grant(_:entry:token:timeout:deadline:fleetToken:)``).
    /// `live`: the lease is still the entry's, hand it out (and, `won`, a lease `set` is then fenced with the
    /// lock). Not live (written, revoked, passed on meanwhile): the asker reads again; `orphaned`: a lock won
    /// for it that no later lease of the entry uses, to release at once.
    mutating func fleetLockTaken(_ entry: Entry, lease token: String, fleetToken: String, won: Bool) -> (live: Bool, orphaned: Bool) {
        guard var record = records[entry], case .lease(var lease)? = record.activity, lease.token == token else {
            var current: String?
            if case .lease(let lease)? = records[entry]?.activity { current = lease.fleet?.token }
            return (false, won && current != fleetToken)
        }
        lease.fleet?.won = won
        record.activity = .lease(lease)
        records[entry] = record
        return (true, false)
    }

    /// How a `set` with the live lease `token` may store.
    enum LeaseFence: Equatable {
        /// No fleet lock behind the lease (one daemon, or `fleet_single_flight` off): stored if still absent.
        case local
        /// This daemon holds the fleet lock: a fenced store with its token.
        case fenced(token: String)
        /// The lease is fleet-wide but the lock could not be taken (Redis failed it, or the wait for another
        /// daemon's fill gave up): nothing fences the store against a write through another daemon, so the
        /// value is not stored.
        case unfenced
    }

    /// How a `set` with lease `token` may store (nil: not the entry's live lease).
    func leaseFence(_ entry: Entry, lease token: String) -> LeaseFence? {
        guard case .lease(let lease)? = records[entry]?.activity, lease.token == token else { return nil }
        guard let fleet = lease.fleet else { return .local }
        return fleet.won ? .fenced(token: fleet.token) : .unfenced
    }

    // MARK: Negative entries

    /// Remembers that the handler said "no such entry", until `deadline` (bounded: past 100,000 entries
    /// they are all forgotten).
    mutating func rememberAbsent(_ entry: Entry, until deadline: NIODeadline) {
        negatives.mark(entry, until: deadline)
    }

    /// Whether the handler said "no such entry" and that is still remembered at `now`.
    mutating func isKnownAbsent(_ entry: Entry, now: NIODeadline) -> Bool {
        negatives.isMarked(entry, now: now)
    }

    /// The entry was written or deleted: it is no longer known to be absent.
    mutating func forgetAbsent(_ entry: Entry) {
        negatives.remove(entry)
    }

    // MARK: Refresh backoff

    /// A refresh of `entry` failed: no new refresh starts for it before `until` (bounded: past 10,000 entries
    /// they are all forgotten), so a failing origin is not called back-to-back by every stale or grace read.
    mutating func refreshFailed(_ entry: Entry, until: NIODeadline) {
        refreshBackoffs.mark(entry, until: until)
    }

    /// Whether a refresh of `entry` failed a moment ago (before `now`'s backoff ends).
    mutating func isBackingOff(_ entry: Entry, now: NIODeadline) -> Bool {
        refreshBackoffs.isMarked(entry, now: now)
    }

    // MARK: The fallback cap

    /// Takes a slot for a handler call of `key` while the store is down; false when `limit` already run.
    mutating func acquireFallback(_ key: String, limit: Int) -> Bool {
        let running = fallbacks[key, default: 0]
        guard running < limit else { return false }
        fallbacks[key] = running + 1
        return true
    }

    /// A fallback call of `key` ended.
    mutating func releaseFallback(_ key: String) {
        let running = fallbacks[key, default: 1] - 1
        fallbacks[key] = running > 0 ? running : nil
    }

    // MARK: Deadlines

    /// A waiter's deadline passed: it leaves the entry's lease queue, flight or parked misses, and is never
    /// handed a lease or an answer by the machine after that (the shell answers it with the deadline error).
    /// False when it is not waiting here any longer (answered already, or it holds the lease: a holder
    /// gives its lease back with ``release(_:token:)``). The work it waited for goes on for the others.
    mutating func leave(_ entry: Entry, where matches: (Waiter) -> Bool) -> Bool {
        guard var record = records[entry] else { return false }
        defer { store(entry, record) }
        if let index = record.parked.firstIndex(where: matches) {
            record.parked.remove(at: index)
            counters.deadlinesPassed += 1
            return true
        }
        switch record.activity {
        case .lease(var lease)?:
            guard let index = lease.pending.firstIndex(where: { matches($0.waiter) }) else { return false }
            lease.pending.remove(at: index)
            record.activity = .lease(lease)
        case .flight(var flight)?:
            guard let index = flight.waiters.firstIndex(where: { matches($0.waiter) }) else { return false }
            flight.waiters.remove(at: index)
            record.activity = .flight(flight)
        case nil:
            return false
        }
        counters.deadlinesPassed += 1
        return true
    }

    // MARK: Internals

    /// Adds `waiter` to the flight, noting whether the flight's read (sent before it joined) is still
    /// good for it: no write of the entry started since that read was sent, and none is in flight.
    private func join(_ waiter: Waiter, _ flight: inout Flight, _ record: Record) {
        let clean = record.epoch == flight.readEpoch && record.writes == 0
        flight.waiters.append(
            FlightWaiter(waiter: waiter, clean: clean, readsBefore: flight.reads, afterUnfencedCall: flight.unfencedCall))
    }

    /// Ends the holder's lease: the first waiter gets a new one, or the lease ends when nobody waits.
    ///
    /// `endsLock`: when nobody waits, a fleet lock won for the lease is released (false for a delete, which
    /// ends the lock in Redis itself).
    private mutating func passOn(_ entry: Entry, _ lease: Lease, in record: inout Record, endsLock: Bool = true) -> [Action] {
        var lease = lease
        var actions: [Action] = [.cancelExpiry(token: lease.token)]
        guard !lease.pending.isEmpty else {
            record.activity = nil
            if endsLock, let fleet = lease.fleet, fleet.won { actions.append(.releaseFleetLock(entry: entry, token: fleet.token)) }
            return actions
        }
        let next = lease.pending.removeFirst()
        lease.token = makeToken()
        lease.holder = next.connection
        record.activity = .lease(lease)
        counters.leasesGranted += 1
        actions.append(
            .grant(next.waiter, entry: entry, token: lease.token, timeout: lease.timeout, deadline: next.deadline, fleetToken: lease.fleet?.token))
        return actions
    }

    private func bump(_ record: inout Record) {
        record.epoch &+= 1
    }

    private mutating func update(_ entry: Entry, _ change: (inout Record) -> Void) {
        guard var record = records[entry] else { return }
        change(&record)
        store(entry, record)
    }

    private mutating func store(_ entry: Entry, _ record: Record) {
        records[entry] = record.isIdle ? nil : record
    }
}

extension FillStateMachine: Sendable where Entry: Sendable, Waiter: Sendable {}
extension FillStateMachine.Record: Sendable where Entry: Sendable, Waiter: Sendable {}
extension FillStateMachine.Activity: Sendable where Entry: Sendable, Waiter: Sendable {}
extension FillStateMachine.Lease: Sendable where Entry: Sendable, Waiter: Sendable {}
extension FillStateMachine.Flight: Sendable where Entry: Sendable, Waiter: Sendable {}
extension FillStateMachine.FlightWaiter: Sendable where Entry: Sendable, Waiter: Sendable {}
extension FillStateMachine.Pending: Sendable where Entry: Sendable, Waiter: Sendable {}

/// Taken when a store read of an entry is sent; handed back with its answer, it tells whether a write of
/// the entry overtook the read.
public struct FillReadTicket: Hashable, Sendable {
    let epoch: UInt64
}

/// Entries marked until an instant (the negative cache, the refresh backoff): bounded, past `limit` marks
/// they are all forgotten; a mark is dropped when it is found expired.
struct ExpiringMarks<Entry: Hashable> {
    let limit: Int
    private(set) var until: [Entry: NIODeadline] = [:]

    init(limit: Int) { self.limit = limit }

    var isEmpty: Bool { until.isEmpty }

    mutating func mark(_ entry: Entry, until deadline: NIODeadline) {
        if until.count > limit { until.removeAll() }
        until[entry] = deadline
    }

    /// Whether `entry` is marked at `now`.
    mutating func isMarked(_ entry: Entry, now: NIODeadline) -> Bool {
        guard let deadline = until[entry] else { return false }
        if deadline <= now {
            until[entry] = nil
            return false
        }
        return true
    }

    mutating func remove(_ entry: Entry) {
        until[entry] = nil
    }

    mutating func removeAll(where matches: (Entry) -> Bool) {
        for entry in until.keys where matches(entry) { until[entry] = nil }
    }
}

extension ExpiringMarks: Sendable where Entry: Sendable {}
