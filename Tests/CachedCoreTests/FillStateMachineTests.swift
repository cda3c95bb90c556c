@testable import CachedCore
import CachedTestSupport
import NIOCore
import Testing

/// The fill and lease state machine, without NIO: waiters are numbers, and a ledger checks that every
/// waiter handed in is answered exactly once.
@Suite("Fill state machine")
struct FillStateMachineTests {
    typealias Machine = FillStateMachine<String, Int>

    /// Runs the machine's actions the way the shell does, and records every answer.
    final class Harness {
        var machine: Machine
        var answers: [Int: [String]] = [:]  // waiter -> what it was told, in order
        var leases: [String: (token: String, waiter: Int)] = [:]  // entry -> the lease its holder was granted
        var timers: Set<String> = []
        /// Grants that take the fleet's fill lock first (entry, lease, lock), and locks given back.
        var fleetGrants: [(entry: String, lease: String, lock: String)] = []
        var fleetReleases: [(entry: String, lock: String)] = []
        var nextWaiter = 0

        init() {
            let counter = Locked(0)
            machine = Machine(makeToken: { counter.withLock { $0 += 1; return "t\($0)" } })
        }

        func waiter() -> Int {
            nextWaiter += 1
            return nextWaiter
        }

        func apply(_ actions: [Machine.Action]) {
            for action in actions {
                switch action {
                case .answer(let waiters, let reply):
                    for w in waiters { answers[w, default: []].append("\(reply)") }
                case .grant(let w, let entry, let token, _, _, let fleetToken):
                    answers[w, default: []].append("lease \(token)")
                    leases[entry] = (token, w)
                    timers.insert(token)
                    if let fleetToken { fleetGrants.append((entry, token, fleetToken)) }
                case .releaseFleetLock(let entry, let token):
                    fleetReleases.append((entry, token))
                case .cancelExpiry(let token):
                    timers.remove(token)
                }
            }
        }

        /// The waiters answered by the shell outside the machine (flight outcomes, woken writers).
        func answer(_ waiters: [Int], _ what: String) {
            for w in waiters { answers[w, default: []].append(what) }
        }

        /// A get miss on a key without a handler, from `connection`: read, then missed.
        func miss(_ entry: String, _ connection: Int, mayLease: Bool = true) -> Int {
            let w = waiter()
            let ticket = machine.readStarted(entry)
            apply(machine.readMissed(entry, ticket, waiter: w, policy: mayLease ? .lease(ConnectionID(UInt64(connection)), timeout: .seconds(5)) : .noLease))
            return w
        }

        func told(_ w: Int) -> [String] { answers[w] ?? [] }

        func join(_ entry: String, _ waiter: Int) -> Bool { machine.joinFlight(entry, waiter: waiter) }
        func leave(_ entry: String, _ waiter: Int) -> Bool { machine.leave(entry, where: { $0 == waiter }) }
        func flightMissed(_ entry: String, _ id: UInt64) -> Bool { machine.flightReadMissed(entry, flight: id) }
        func mayStore(_ entry: String, _ id: UInt64) -> (allowed: Bool, overwrite: Bool) { machine.flightMayStore(entry, flight: id) }
        /// Ends a flight: returns the waiters its outcome is for; the others are told to read again.
        func finish(_ entry: String, _ id: UInt64) -> [Int] {
            let end = machine.finishFlight(entry, flight: id)
            answer(end.readAgain, "readAgain")
            return end.answer
        }
        func release(_ entry: String, _ token: String) -> Bool {
            let (released, actions) = machine.release(entry, token: token)
            apply(actions)
            return released
        }
        func expired(_ entry: String, _ token: String) -> Bool {
            let actions = machine.leaseExpired(entry, token: token)
            apply(actions)
            return !actions.isEmpty
        }
        func joined(_ entry: String, _ waiter: Int) -> Bool {
            if case .joined = machine.requestFlight(entry, waiter: waiter) { return true }
            return false
        }

        /// Whether a `set` with this token is refused (it must store nothing).
        func refused(_ entry: String, _ token: String) -> Bool {
            if case .refused = machine.redeem(entry, token: token) { return true }
            return false
        }
    }

    let a = ConnectionID(1)
    let b = ConnectionID(2)

    // MARK: Leases

    @Test func firstMissGetsTheLeaseOthersWaitAndTheHoldersSetWakesThem() {
        let h = Harness()
        let holder = h.miss("e", 1)
        let w1 = h.miss("e", 2)
        let w2 = h.miss("e", 3)
        #expect(h.told(holder) == ["lease t1"])
        #expect(h.told(w1).isEmpty && h.told(w2).isEmpty)
        guard case .accepted(let wake, let actions) = h.machine.redeem("e", token: "t1") else {
            Issue.record("the live lease was refused")
            return
        }
        h.apply(actions)
        #expect(Set(wake) == [w1, w2])
        #expect(h.timers.isEmpty)
        #expect(h.machine.writeFinished("e").isEmpty)
        h.answer(wake, "value")
        #expect(h.machine.records.isEmpty)
        // The token is spent.
        #expect(h.refused("e", "t1"))
        #expect(h.machine.counters.leasesRefused == 1)
    }

    /// Finding 2: a miss whose read was sent before a write of the entry completed is never trusted.
    @Test func aMissOvertakenByAWriteReadsAgainInsteadOfTakingALease() {
        let h = Harness()
        let ticket = h.machine.readStarted("e")
        #expect(h.machine.writeStarted("e", isDelete: false).wake.isEmpty)
        h.apply(h.machine.writeFinished("e"))
        let w = h.waiter()
        h.apply(h.machine.readMissed("e", ticket, waiter: w, policy: .lease(a, timeout: .seconds(5))))
        #expect(h.told(w) == ["readAgain"])
        #expect(h.machine.leasesOut == 0)
        #expect(h.machine.counters.readsOvertaken == 1)
        #expect(h.machine.records.isEmpty)
    }

    /// While a write of the entry is in flight, a miss waits for it to end, then reads again.
    @Test func aMissWithAWriteInFlightIsParkedUntilTheWriteEnds() {
        let h = Harness()
        _ = h.machine.writeStarted("e", isDelete: false)
        let ticket = h.machine.readStarted("e")
        let w = h.waiter()
        h.apply(h.machine.readMissed("e", ticket, waiter: w, policy: .lease(a, timeout: .seconds(5))))
        #expect(h.told(w).isEmpty)
        h.apply(h.machine.writeFinished("e"))
        #expect(h.told(w) == ["readAgain"])
        #expect(h.machine.records.isEmpty)
    }

    @Test func aDeleteRevokesTheLeaseAndHandsItToTheNextWaiter() {
        let h = Harness()
        _ = h.miss("e", 1)
        let next = h.miss("e", 2)
        let start = h.machine.writeStarted("e", isDelete: true)
        h.apply(start.actions)
        #expect(start.wake.isEmpty)
        #expect(h.told(next) == ["lease t2"])
        #expect(h.refused("e", "t1"))
        h.apply(h.machine.writeFinished("e"))
        #expect(h.timers == ["t2"])
    }

    @Test func aPlainSetEndsTheLeaseAndWakesItsWaitersWithTheValue() {
        let h = Harness()
        _ = h.miss("e", 1)
        let w = h.miss("e", 2)
        let start = h.machine.writeStarted("e", isDelete: false)
        h.apply(start.actions)
        #expect(start.wake == [w])
        #expect(h.timers.isEmpty)
        h.apply(h.machine.writeFinished("e"))
        #expect(h.machine.records.isEmpty)
    }

    /// Finding 4: a holder whose fill failed gives the lease back; the next waiter gets it at once.
    @Test func releaseHandsTheLeaseToTheNextWaiterAtOnce() {
        let h = Harness()
        _ = h.miss("e", 1)
        let next = h.miss("e", 2)
        let (released, actions) = h.machine.release("e", token: "t1")
        h.apply(actions)
        #expect(released)
        #expect(h.told(next) == ["lease t2"])
        #expect(h.timers == ["t2"])
        // The old token is worth nothing now, for release and for set.
        #expect(!h.release("e", "t1"))
        #expect(h.refused("e", "t1"))
        // Nobody waits: releasing ends the lease.
        let (again, last) = h.machine.release("e", token: "t2")
        h.apply(last)
        #expect(again)
        #expect(h.machine.records.isEmpty && h.timers.isEmpty)
        #expect(h.machine.counters.leasesReleased == 2)
    }

    /// Finding 5: a reader that never fills neither takes a lease nor waits behind one.
    @Test func aMissWithoutLeaseIsAnsweredAtOnceEvenWithALeaseOut() {
        let h = Harness()
        let holder = h.miss("e", 1)
        let looker = h.miss("e", 2, mayLease: false)
        let lone = h.miss("f", 2, mayLease: false)
        #expect(h.told(holder) == ["lease t1"])
        #expect(h.told(looker) == ["miss"])
        #expect(h.told(lone) == ["miss"])
        #expect(h.machine.leasesOut == 1)
    }

    @Test func theHolderAskingAgainGetsANewTokenAndTheOldOneIsRefused() {
        let h = Harness()
        _ = h.miss("e", 1)
        let again = h.miss("e", 1)
        #expect(h.told(again) == ["lease t2"])
        #expect(h.timers == ["t2"])
        #expect(h.refused("e", "t1"))
    }

    @Test func expiryPassesTheLeaseOnAndAStaleTimerDoesNothing() {
        let h = Harness()
        _ = h.miss("e", 1)
        let next = h.miss("e", 2)
        h.apply(h.machine.leaseExpired("e", token: "t1"))
        #expect(h.told(next) == ["lease t2"])
        #expect(!h.expired("e", "t1"))
        h.apply(h.machine.leaseExpired("e", token: "t2"))
        #expect(h.machine.records.isEmpty)
        #expect(h.machine.counters.leasesExpired == 2)
    }

    @Test func aClosedConnectionsWaitsAreAnsweredAndItsLeasesPassOn() {
        let h = Harness()
        _ = h.miss("e", 1)
        let mine = h.miss("e", 2)
        let theirs = h.miss("e", 3)
        _ = h.miss("f", 2)  // connection 2 holds f's lease
        let fWaiter = h.miss("f", 3)
        h.apply(h.machine.connectionClosed(ConnectionID(2)))
        #expect(h.told(mine) == ["connectionClosed"])
        #expect(h.told(theirs).isEmpty)
        #expect(h.told(fWaiter) == ["lease t3"])
        h.apply(h.machine.connectionClosed(ConnectionID(1)))
        #expect(h.told(theirs) == ["lease t4"])
    }

    // MARK: Handler flights

    @Test func oneFlightPerEntryEveryGetJoinsIt() {
        let h = Harness()
        let first = h.waiter()
        guard case .start(let id, let actions) = h.machine.requestFlight("e", waiter: first) else {
            Issue.record("no flight started")
            return
        }
        #expect(actions.isEmpty)
        let second = h.waiter()
        #expect(h.joined("e", second))
        let third = h.waiter()
        #expect(h.join("e", third))
        #expect(!h.join("other", h.waiter()))
        #expect(h.flightMissed("e", id))
        #expect(h.mayStore("e", id) == (true, false))
        #expect(h.finish("e", id) == [first, second, third])
        #expect(h.machine.records.isEmpty)
        #expect(h.machine.counters.flights == 1 && h.machine.counters.joinedFlights == 2)
    }

    /// Finding 3: a handler flight that replaces a lease (the key got a handler on reload) answers the
    /// lease's waiters too; the lease holder's token is refused from then on.
    @Test func aFlightReplacingALeaseTakesItsWaiters() {
        let h = Harness()
        _ = h.miss("e", 1)
        let waiting = h.miss("e", 2)
        let getter = h.waiter()
        guard case .start(let id, let actions) = h.machine.requestFlight("e", waiter: getter) else {
            Issue.record("no flight started")
            return
        }
        h.apply(actions)
        #expect(h.timers.isEmpty)
        #expect(Set(h.finish("e", id)) == [getter, waiting])
        #expect(h.refused("e", "t1"))
    }

    /// Finding 3: a `set` without a value (a refresh) over a lease: the lease's waiters get the refresh's value.
    @Test func aRefreshOverALeaseTakesItsWaitersAndOvertakesReads() {
        let h = Harness()
        _ = h.miss("e", 1)
        let waiting = h.miss("e", 2)
        let reading = h.machine.readStarted("e")
        let setter = h.waiter()
        guard case .start(let id, let actions) = h.machine.requestFlight("e", waiter: setter, overwrite: true) else {
            Issue.record("no flight started")
            return
        }
        h.apply(actions)
        #expect(h.mayStore("e", id) == (true, true))
        #expect(Set(h.finish("e", id)) == [setter, waiting])
        // A read sent before the refresh is overtaken by it.
        let late = h.waiter()
        h.apply(h.machine.readMissed("e", reading, waiter: late, policy: .lease(a, timeout: .seconds(5))))
        #expect(h.told(late) == ["readAgain"])
    }

    @Test func aFlightWhoseReadWasOvertakenReadsAgainAndDoesNotStore() {
        let h = Harness()
        guard case .start(let id, _) = h.machine.requestFlight("e", waiter: h.waiter()) else {
            Issue.record("no flight started")
            return
        }
        _ = h.machine.writeStarted("e", isDelete: false)
        #expect(!h.flightMissed("e", id))  // read again
        #expect(h.mayStore("e", id).allowed == false)  // the write is in flight
        _ = h.machine.writeFinished("e")
        #expect(h.mayStore("e", id).allowed == false)  // the write ended after the read
        #expect(!h.flightMissed("e", id))
        #expect(h.flightMissed("e", id))  // this read started after the write: trusted
        #expect(h.mayStore("e", id).allowed)
        _ = h.machine.writeStarted("e", isDelete: true)
        #expect(h.mayStore("e", id).allowed == false)
    }

    /// A get that joins a flight after a write of the entry started must not get the flight's older read.
    @Test func aGetJoiningAfterAWriteReadsAgainInsteadOfTakingTheFlightsOlderRead() {
        let h = Harness()
        let starter = h.waiter()
        guard case .start(let id, _) = h.machine.requestFlight("e", waiter: starter) else {
            Issue.record("no flight started")
            return
        }
        let early = h.waiter()
        #expect(h.join("e", early))  // before the write: the flight's read is good for it
        _ = h.machine.writeStarted("e", isDelete: false)
        h.apply(h.machine.writeFinished("e"))
        let late = h.waiter()
        #expect(h.join("e", late))
        #expect(h.finish("e", id) == [starter, early])
        #expect(h.told(late) == ["readAgain"])

        // A read the flight sends after the late joiner joined is good for it.
        let second = h.waiter()
        guard case .start(let id2, _) = h.machine.requestFlight("e", waiter: second) else {
            Issue.record("no flight started")
            return
        }
        _ = h.machine.writeStarted("e", isDelete: true)
        let late2 = h.waiter()
        #expect(h.join("e", late2))
        h.apply(h.machine.writeFinished("e"))
        #expect(!h.flightMissed("e", id2))  // overtaken: the flight reads again, after late2 joined
        #expect(h.finish("e", id2) == [second, late2])
    }

    @Test func aHashDeleteOvertakesReadsOfItsFieldsOnly() {
        let h = Harness()
        let field = h.machine.readStarted("H#f")
        let other = h.machine.readStarted("K")
        let (entries, actions) = h.machine.hashDeleteStarted { $0.hasPrefix("H#") }
        h.apply(actions)
        #expect(entries == ["H#f"])
        let w1 = h.waiter()
        h.apply(h.machine.readMissed("H#f", field, waiter: w1, policy: .noLease))
        #expect(h.told(w1).isEmpty)  // parked: the delete is in flight
        let w2 = h.waiter()
        h.apply(h.machine.readMissed("K", other, waiter: w2, policy: .noLease))
        #expect(h.told(w2) == ["miss"])
        for e in entries { h.apply(h.machine.writeFinished(e)) }
        #expect(h.told(w1) == ["readAgain"])
        #expect(h.machine.records.isEmpty)
    }

    // MARK: Deadlines

    @Test func aLeaseWaiterWhoseDeadlinePassedIsNeverHandedTheLease() {
        let h = Harness()
        let holder = h.miss("e", 1)
        let gone = h.miss("e", 2)
        let next = h.miss("e", 3)
        #expect(h.told(holder) == ["lease t1"])
        #expect(h.leave("e", gone))
        #expect(!h.leave("e", gone), "it left once")
        h.apply(h.machine.release("e", token: "t1").1)
        #expect(h.told(gone).isEmpty, "the machine tells a waiter who left nothing")
        #expect(h.told(next) == ["lease t2"])
        #expect(h.machine.counters.deadlinesPassed == 1)
    }

    @Test func aFlightWaiterLeavesAndTheFlightGoesOnForTheOthers() {
        let h = Harness()
        let first = h.waiter()
        guard case .start(let id, _) = h.machine.requestFlight("e", waiter: first) else {
            Issue.record("no flight started")
            return
        }
        let second = h.waiter()
        #expect(h.join("e", second))
        #expect(h.leave("e", first))
        #expect(!h.leave("e", 99), "a stranger is not waiting")
        let end = h.machine.finishFlight("e", flight: id)
        #expect(end.answer == [second])
        #expect(h.machine.records.isEmpty)
    }

    @Test func aParkedMissLeaves() {
        let h = Harness()
        let ticket = h.machine.readStarted("e")
        h.apply(h.machine.writeStarted("e", isDelete: false).actions)
        h.apply(h.machine.readMissed("e", ticket, waiter: 7, policy: .lease(ConnectionID(1), timeout: .seconds(5))))
        #expect(h.leave("e", 7))
        h.apply(h.machine.writeFinished("e"))
        #expect(h.told(7).isEmpty)
        #expect(h.machine.records.isEmpty)
    }

    /// A fill without the fleet lock (or with the store down) is not fenced against a write through
    /// another daemon made after the handler was called: its value is only for the gets already waiting;
    /// one that joins after the call reads again.
    @Test func anUnfencedFillAnswersOnlyTheGetsThatWaitedBeforeTheHandlerCall() {
        let h = Harness()
        let first = h.waiter()
        guard case .start(let id, _) = h.machine.requestFlight("e", waiter: first) else {
            Issue.record("no flight started")
            return
        }
        let before = h.waiter()
        #expect(h.join("e", before))
        #expect(h.flightMissed("e", id))
        h.machine.flightCallsUnfenced("e", flight: id)
        let after = h.waiter()
        #expect(h.join("e", after))
        let end = h.machine.finishFlight("e", flight: id, unfenced: true)
        #expect(end.answer == [first, before])
        #expect(end.readAgain == [after])
        #expect(h.machine.records.isEmpty)
    }

    @Test func aFencedOrLocalOutcomeStillAnswersLateJoiners() {
        let h = Harness()
        let first = h.waiter()
        guard case .start(let id, _) = h.machine.requestFlight("e", waiter: first) else {
            Issue.record("no flight started")
            return
        }
        #expect(h.flightMissed("e", id))
        h.machine.flightCallsUnfenced("e", flight: id)
        let after = h.waiter()
        #expect(h.join("e", after))
        // The store answered for the flight after all (e.g. its read found the entry): good for everyone.
        let end = h.machine.finishFlight("e", flight: id, unfenced: false)
        #expect(end.answer == [first, after])
        #expect(end.readAgain.isEmpty)
    }

    @Test func aFleetWideLeaseWhoseLockWasNotWonStoresNothing() {
        let h = Harness()
        let w = h.waiter()
        h.apply(h.machine.readMissed("e", h.machine.readStarted("e"), waiter: w,
                                     policy: .lease(ConnectionID(1), timeout: .seconds(5), fleetWide: true)))
        let grant = h.fleetGrants[0]
        #expect(h.machine.fleetLockTaken("e", lease: grant.lease, fleetToken: grant.lock, won: false).live)
        #expect(h.machine.leaseFence("e", lease: grant.lease) == .unfenced)
        #expect(h.machine.leaseFence("e", lease: "not-the-lease") == nil)
        // One daemon: no lock behind the lease.
        let local = Harness()
        let holder = local.miss("e", 1)
        #expect(local.machine.leaseFence("e", lease: local.leases["e"]!.token) == .local)
        _ = holder
    }

    @Test func theHolderCannotLeaveItGivesTheLeaseBack() {
        let h = Harness()
        let holder = h.miss("e", 1)
        #expect(!h.leave("e", holder))
    }

    // MARK: The fleet lock behind a lease, the negative cache, the fallback cap

    @Test func aFleetWideLeaseKeepsOneLockWhileItPassesOnAndReleasesItWhenNobodyWaits() {
        let h = Harness()
        let fleet: (Int) -> Machine.MissPolicy = { .lease(ConnectionID(UInt64($0)), timeout: .seconds(5), fleetWide: true) }
        let first = h.waiter()
        h.apply(h.machine.readMissed("e", h.machine.readStarted("e"), waiter: first, policy: fleet(1)))
        let second = h.waiter()
        h.apply(h.machine.readMissed("e", h.machine.readStarted("e"), waiter: second, policy: fleet(2)))
        #expect(h.fleetGrants.count == 1, "the waiter waits for the lease, it takes no lock")
        let lock = h.fleetGrants[0].lock
        let firstLease = h.fleetGrants[0].lease
        let r1 = h.machine.fleetLockTaken("e", lease: firstLease, fleetToken: lock, won: true)
        #expect(r1.live && !r1.orphaned)
        #expect(h.machine.leaseFence("e", lease: firstLease) == .fenced(token: lock))
        // The holder gives up: the next asker is granted under the same lock, which stays held.
        h.apply(h.machine.release("e", token: firstLease).1)
        #expect(h.fleetGrants.map(\.lock) == [lock, lock])
        #expect(h.fleetReleases.isEmpty)
        let secondLease = h.fleetGrants[1].lease
        #expect(secondLease != firstLease)
        let r2 = h.machine.fleetLockTaken("e", lease: secondLease, fleetToken: lock, won: true)
        #expect(r2.live && !r2.orphaned)
        // Nobody waits any longer: the won lock is given back.
        h.apply(h.machine.release("e", token: secondLease).1)
        #expect(h.fleetReleases.map(\.lock) == [lock])
        #expect(h.machine.records.isEmpty)
    }

    @Test func aLockWonForALeaseThatEndedIsOrphanedAndAWriteEndsTheLockItself() {
        let h = Harness()
        let w = h.waiter()
        h.apply(h.machine.readMissed("e", h.machine.readStarted("e"), waiter: w, policy: .lease(ConnectionID(1), timeout: .seconds(5), fleetWide: true)))
        let (lease, lock) = (h.fleetGrants[0].lease, h.fleetGrants[0].lock)
        // A set revokes the lease while its lock is being taken: the lock, once won, is nobody's.
        let start = h.machine.writeStarted("e", isDelete: false)
        h.apply(start.actions)
        let r3 = h.machine.fleetLockTaken("e", lease: lease, fleetToken: lock, won: true)
        #expect(!r3.live && r3.orphaned)
        let r4 = h.machine.fleetLockTaken("e", lease: lease, fleetToken: lock, won: false)
        #expect(!r4.live && !r4.orphaned)
        h.apply(h.machine.writeFinished("e"))
        #expect(h.fleetReleases.isEmpty, "the write fenced the lock in Redis: nothing to release")
        #expect(h.machine.records.isEmpty)
    }

    @Test func theNegativeCacheForgetsOnWritesHashDeletesAndTime() {
        var machine = Machine(makeToken: { "t" })
        let now = NIODeadline.now()
        machine.rememberAbsent("e", until: now + .seconds(1))
        let r5 = machine.isKnownAbsent("e", now: now)
        #expect(r5)
        let r6 = machine.isKnownAbsent("e", now: now + .seconds(2))
        #expect(!r6, "past its time")
        #expect(machine.negatives.isEmpty)
        machine.rememberAbsent("h:f", until: now + .seconds(1))
        machine.rememberAbsent("other", until: now + .seconds(1))
        _ = machine.hashDeleteStarted { $0.hasPrefix("h:") }
        let r7 = machine.isKnownAbsent("h:f", now: now)
        #expect(!r7)
        let r8 = machine.isKnownAbsent("other", now: now)
        #expect(r8)
        machine.forgetAbsent("other")
        #expect(machine.negatives.isEmpty)
    }

    @Test func aFailedRefreshBacksOffUntilItsTime() {
        var machine = Machine(makeToken: { "t" })
        let now = NIODeadline.now()
        machine.refreshFailed("e", until: now + .seconds(1))
        let during = machine.isBackingOff("e", now: now + .milliseconds(500))
        let other = machine.isBackingOff("f", now: now)
        let after = machine.isBackingOff("e", now: now + .seconds(1))
        #expect(during && !other && !after)
        #expect(machine.refreshBackoffs.isEmpty, "forgotten once it ended")
    }

    @Test func theFallbackCapCountsPerKey() {
        var machine = Machine(makeToken: { "t" })
        let r9 = machine.acquireFallback("K", limit: 2)
        #expect(r9)
        let r10 = machine.acquireFallback("K", limit: 2)
        #expect(r10)
        let r11 = machine.acquireFallback("K", limit: 2)
        #expect(!r11)
        let r12 = machine.acquireFallback("L", limit: 2)
        #expect(r12)
        machine.releaseFallback("K")
        let r13 = machine.acquireFallback("K", limit: 2)
        #expect(r13)
        for key in ["K", "K", "L"] { machine.releaseFallback(key) }
        #expect(machine.fallbacks.isEmpty, "no count is left behind")
    }

    // MARK: Every waiter answered exactly once

    /// Random interleavings of every event. At the end, with every write and flight finished, every
    /// lease released or expired and every connection closed, each waiter handed in has exactly one
    /// answer and no record is left.
    @Test(arguments: [1, 2, 3, 4, 5, 6, 7, 8])
    func everyWaiterIsAnsweredExactlyOnce(seed: UInt64) {
        var rng = SplitMix64(seed: seed)
        let h = Harness()
        let entries = ["a", "b", "c"]
        var handedIn: [Int] = []
        var flights: [(entry: String, id: UInt64, waiters: Int)] = []
        var writes: [String] = []
        var reads: [(entry: String, ticket: FillReadTicket)] = []
        for _ in 0..<2_000 {
            let entry = entries[Int(rng.next() % 3)]
            let connection = Int(rng.next() % 4) + 1
            switch rng.next() % 13 {
            case 0: reads.append((entry, h.machine.readStarted(entry)))
            case 1 where !reads.isEmpty:
                let (e, t) = reads.remove(at: Int(rng.next() % UInt64(reads.count)))
                let w = h.waiter()
                handedIn.append(w)
                h.apply(h.machine.readMissed(e, t, waiter: w, policy: rng.next() % 4 == 0 ? .noLease : .lease(ConnectionID(UInt64(connection)), timeout: .seconds(5))))
            case 2 where !reads.isEmpty:
                let (e, t) = reads.remove(at: Int(rng.next() % UInt64(reads.count)))
                h.machine.readFinished(e, t)
            case 3:
                let start = h.machine.writeStarted(entry, isDelete: rng.next() % 2 == 0)
                h.apply(start.actions)
                h.answer(start.wake, "value")
                writes.append(entry)
            case 4 where !writes.isEmpty:
                h.apply(h.machine.writeFinished(writes.remove(at: Int(rng.next() % UInt64(writes.count)))))
            case 5:
                let w = h.waiter()
                handedIn.append(w)
                if case .start(let id, let actions) = h.machine.requestFlight(entry, waiter: w, overwrite: rng.next() % 3 == 0) {
                    h.apply(actions)
                    flights.append((entry, id, 0))
                }
            case 6 where !flights.isEmpty:
                let f = flights.remove(at: Int(rng.next() % UInt64(flights.count)))
                _ = h.machine.flightReadMissed(f.entry, flight: f.id)
                _ = h.machine.flightMayStore(f.entry, flight: f.id)
                h.answer(h.finish(f.entry, f.id), "filled")
            case 7:
                let w = h.waiter()
                if h.machine.joinFlight(entry, waiter: w) { handedIn.append(w) }
            case 8:
                if let lease = h.leases[entry] {
                    if case .accepted(let wake, let actions) = h.machine.redeem(entry, token: lease.token) {
                        h.apply(actions)
                        h.answer(wake, "value")
                        writes.append(entry)
                    }
                }
            case 9:
                if let lease = h.leases[entry] { h.apply(h.machine.release(entry, token: lease.token).1) }
            case 10:
                if let lease = h.leases[entry] { h.apply(h.machine.leaseExpired(entry, token: lease.token)) }
            case 11 where !handedIn.isEmpty:
                // A waiter's deadline passed: if it still waits here it leaves, and the shell answers it.
                let w = handedIn[Int(rng.next() % UInt64(handedIn.count))]
                if entries.contains(where: { h.machine.leave($0, where: { $0 == w }) }) { h.answer([w], "deadline") }
            default:
                if rng.next() % 8 == 0 {
                    h.apply(h.machine.connectionClosed(ConnectionID(UInt64(connection))))
                } else if !writes.isEmpty {
                    h.apply(h.machine.writeFinished(writes.removeFirst()))
                }
            }
        }
        // Drain: reads answered, writes and flights finished, leases expire until nobody waits.
        for (e, t) in reads { h.machine.readFinished(e, t) }
        for e in writes { h.apply(h.machine.writeFinished(e)) }
        for f in flights { h.answer(h.finish(f.entry, f.id), "filled") }
        for c in 1...4 { h.apply(h.machine.connectionClosed(ConnectionID(UInt64(c)))) }
        while let (entry, lease) = h.leases.first {
            h.leases[entry] = nil
            h.apply(h.machine.leaseExpired(entry, token: lease.token))
        }
        for w in handedIn {
            #expect(h.told(w).count == 1, "waiter \(w) was told \(h.told(w))")
        }
        #expect(h.answers.keys.allSatisfy(Set(handedIn).contains))
        #expect(h.machine.records.isEmpty, "left: \(h.machine.records.keys.sorted())")
        #expect(h.timers.isEmpty)
        let c = h.machine.counters
        #expect(c.leasesGranted > 0 && c.readsOvertaken > 0 && c.flights > 0 && c.deadlinesPassed > 0, "not every path was taken: \(c)")
    }
}
