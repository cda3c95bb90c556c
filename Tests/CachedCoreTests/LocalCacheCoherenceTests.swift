@testable import CachedCore
import CachedTestSupport
import Testing

/// The local copy's coherence rules, without sockets, locks or clocks: sessions, nodes and listeners are
/// numbers, and a proof is a number the test sets.
@Suite("Local cache coherence")
struct LocalCacheCoherenceTests {
    /// A session's proof, advanced by hand (one per session, like a connection's tracking proof).
    final class Clock: LocalCacheProof {
        var provenAt: UInt64
        init(_ provenAt: UInt64 = 0) { self.provenAt = provenAt }
    }

    typealias Machine = LocalCacheCoherence<Clock>

    /// A read of `key` sent now by `session` of `node`, tracked for `redirect`.
    static func read(_ m: Machine, _ key: String = "k", session: UInt64 = 1, node: UInt64 = 1, redirect: Int64 = 10) -> Machine.Read {
        Machine.Read(key: key, session: session, node: node, epoch: m.epoch, redirect: redirect)
    }

    /// Inserts `read` from an open session.
    static func insert(_ m: inout Machine, _ read: Machine.Read, _ clock: Clock = Clock()) -> Machine.Insert {
        m.insert(read, proof: clock, sessionOpen: true)
    }

    // MARK: Inserts

    @Test func keptWhenTrackedByTheListenerItsNodeHasUp() {
        var m = Machine()
        #expect(m.listenerUp(node: 1, listener: 10) == [.dropAll(.trackingUp), .notifyDropObserver(epoch: 1)])
        #expect(m.hasListener)
        #expect(Self.insert(&m, Self.read(m)) == .store(watch: true))
        #expect(Self.insert(&m, Self.read(m, "other")) == .store(watch: false), "its end is watched once")
        #expect(m.sessions == [1: 1])
        #expect(m.provers[1]?.node == 1 && m.provers[1]?.leaving == nil)
    }

    @Test func refusedWithoutAListener() {
        var m = Machine()
        #expect(Self.insert(&m, Self.read(m)) == .refused(.noListener))
        #expect(m.sessions.isEmpty && m.provers.isEmpty)
    }

    @Test func refusedWhenTheListenerWentDownAfterTheRead() {
        var m = Machine()
        _ = m.listenerUp(node: 1, listener: 10)
        let read = Self.read(m)
        #expect(m.listenerDown(node: 1) == [.dropAll(.trackingDown), .notifyDropObserver(epoch: 2)])
        #expect(Self.insert(&m, read) == .refused(.noListener))
        #expect(!m.hasListener)
    }

    @Test func refusedWhenTheListenerChanged() {
        var m = Machine()
        _ = m.listenerUp(node: 1, listener: 10)
        _ = m.listenerUp(node: 2, listener: 20)
        #expect(Self.insert(&m, Self.read(m, session: 5, node: 2, redirect: 20)) == .store(watch: true))
        let before = Self.read(m, redirect: 11)
        _ = m.listenerUp(node: 1, listener: 11)
        // Tracked for the old listener: refused whenever it was read.
        #expect(Self.insert(&m, Self.read(m, redirect: 10)) == .refused(.otherListener))
        // Tracked for the new one, but read before it came up: what it read is not vouched for.
        #expect(Self.insert(&m, before) == .refused(.nodeFlushed))
        #expect(Self.insert(&m, Self.read(m, redirect: 11)) == .store(watch: true))
    }

    @Test func refusedWhenAnInvalidationOvertookTheRead() {
        var m = Machine()
        _ = m.listenerUp(node: 1, listener: 10)
        let k = Self.read(m, "k")
        let other = Self.read(m, "other")
        #expect(m.invalidate("k") == [.dropKey("k")])
        #expect(Self.insert(&m, k) == .refused(.invalidated))
        #expect(Self.insert(&m, other) == .store(watch: true), "another key's invalidation refuses nothing")
        #expect(Self.insert(&m, Self.read(m, "k")) == .store(watch: false), "a read sent after it is kept")
        #expect(m.counters.invalidations == 1)
    }

    @Test func refusedFromAClosedSession() {
        var m = Machine()
        _ = m.listenerUp(node: 1, listener: 10)
        #expect(m.insert(Self.read(m), proof: Clock(), sessionOpen: false) == .refused(.sessionClosed))
        #expect(m.sessions.isEmpty && m.provers.isEmpty)
    }

    @Test func refusedAfterEverythingWasDropped() {
        var m = Machine()
        _ = m.listenerUp(node: 1, listener: 10)
        _ = Self.insert(&m, Self.read(m))
        _ = m.invalidate("k")
        let before = Self.read(m, "x")
        #expect(m.invalidateAll() == [.dropAll(.invalidateAll), .notifyDropObserver(epoch: 3)])
        #expect(m.invalidatedAt.isEmpty, "a drop of everything forgets the keys")
        #expect(m.flushedAt == 3)
        #expect(m.provers[1]?.leaving == 3)
        #expect(Self.insert(&m, before) == .refused(.flushed))
        #expect(Self.insert(&m, Self.read(m, "x")) == .store(watch: false))
        #expect(m.counters.flushes == [.invalidateAll: 1, .trackingUp: 1])
    }

    // MARK: Sessions

    @Test func aSessionsEndDropsWhatItRead() {
        var m = Machine()
        _ = m.listenerUp(node: 1, listener: 10)
        _ = Self.insert(&m, Self.read(m))
        _ = Self.insert(&m, Self.read(m, session: 2))
        #expect(m.sessionEnded(1) == [.dropSessions([1], .ended), .notifyDropObserver(epoch: 2)])
        m.entriesDropped(3, .ended)
        #expect(m.sessions == [2: 1])
        #expect(m.provers[1]?.leaving == 2, "held back until the clients are told")
        #expect(m.sessionEnded(1) == [], "reported once")
        #expect(m.sessionEnded(7) == [], "a session that kept nothing has nothing to drop")
        #expect(m.counters.sessionsEnded == 1 && m.counters.droppedWithSession == 3)
        #expect(m.insert(Self.read(m), proof: Clock(), sessionOpen: false) == .refused(.sessionClosed))
    }

    // MARK: Nodes

    @Test func aNodesDropTakesOnlyItsSessionsWhenOthersHaveSome() {
        var m = Machine()
        _ = m.listenerUp(node: 1, listener: 10)
        _ = m.listenerUp(node: 2, listener: 20)
        _ = Self.insert(&m, Self.read(m, session: 1, node: 1))
        _ = Self.insert(&m, Self.read(m, session: 3, node: 1))
        _ = Self.insert(&m, Self.read(m, session: 2, node: 2, redirect: 20))
        let one = Self.read(m, "a", session: 1, node: 1)
        let two = Self.read(m, "a", session: 2, node: 2, redirect: 20)
        let e = m.epoch + 1
        #expect(m.invalidateAll(node: 1) == [.dropNode(1, sessions: [1, 3], .invalidateAll), .notifyDropObserver(epoch: e)])
        #expect(m.nodeFlushedAt[1] == e && m.flushedAt < e)
        #expect(m.provers[1]?.leaving == e && m.provers[3]?.leaving == e && m.provers[2]?.leaving == nil)
        #expect(m.sessions.count == 3, "sessions stay until their connection closes")
        #expect(Self.insert(&m, one) == .refused(.nodeFlushed))
        #expect(Self.insert(&m, two) == .store(watch: false), "another node's reads are still vouched for")
    }

    @Test func aNodesDropIsEverythingWhenOnlyItHasSessions() {
        var m = Machine()
        _ = m.listenerUp(node: 1, listener: 10)
        _ = m.listenerUp(node: 2, listener: 20)
        _ = Self.insert(&m, Self.read(m, session: 1, node: 1))
        let two = Self.read(m, "a", session: 2, node: 2, redirect: 20)
        #expect(m.listenerDown(node: 1) == [.dropAll(.trackingDown), .notifyDropObserver(epoch: m.epoch)])
        #expect(m.flushedAt == m.epoch && m.nodeFlushedAt.isEmpty)
        #expect(Self.insert(&m, two) == .refused(.flushed), "new stores instead of a scan: every older read goes")
    }

    @Test func aRemovedNodeIsDroppedAndForgotten() {
        var m = Machine()
        _ = m.listenerUp(node: 1, listener: 10)
        _ = m.listenerUp(node: 2, listener: 20)
        _ = Self.insert(&m, Self.read(m, session: 1, node: 1))
        _ = Self.insert(&m, Self.read(m, session: 2, node: 2, redirect: 20))
        let late = Self.read(m, "a", session: 1, node: 1)
        let e = m.epoch + 1
        #expect(m.nodeRemoved(1) == [.dropNode(1, sessions: [1], .nodeRemoved), .notifyDropObserver(epoch: e)])
        #expect(m.listeners == [2: 20])
        #expect(m.nodeFlushedAt[1] == nil, "node ids are never reused")
        #expect(m.counters.nodesRemoved == 1 && m.counters.flushes[.nodeRemoved] == 1)
        #expect(Self.insert(&m, late) == .refused(.noListener))
        #expect(Self.insert(&m, Self.read(m, "a", session: 1, node: 1)) == .refused(.noListener))
        #expect(Self.insert(&m, Self.read(m, "a", session: 2, node: 2, redirect: 20)) == .store(watch: false))
    }

    // MARK: Overflow

    @Test func tooManyInvalidatedKeysDropEverything() {
        var m = Machine(maxInvalidatedKeys: 3)
        _ = m.listenerUp(node: 1, listener: 10)
        _ = Self.insert(&m, Self.read(m, "z"))
        for key in ["a", "b", "c", "a"] { #expect(m.invalidate(key) == [.dropKey(key)]) }
        let before = Self.read(m, "z")
        #expect(m.invalidate("d") == [.dropKey("d"), .dropAll(.overflow), .notifyDropObserver(epoch: m.epoch)])
        #expect(m.invalidatedAt.isEmpty)
        #expect(m.counters.flushes[.overflow] == 1 && m.counters.invalidations == 5)
        #expect(m.provers[1]?.leaving == m.epoch)
        #expect(Self.insert(&m, before) == .refused(.flushed))
    }

    // MARK: Proof

    @Test func aLapseDropsTheSessionAndMarksItLeavingUntilTold() {
        var m = Machine(maxStalenessNanos: 100)
        _ = m.listenerUp(node: 1, listener: 10)
        let old = Clock(1_000)
        let fresh = Clock(1_050)
        _ = Self.insert(&m, Self.read(m, session: 1), old)
        _ = Self.insert(&m, Self.read(m, session: 2), fresh)
        #expect(m.sweep(now: 1_100) == [], "exactly the bound old is still fresh")
        let e = m.epoch + 1
        #expect(m.sweep(now: 1_101) == [.dropSessions([1], .lapsed), .notifyDropObserver(epoch: e)])
        m.entriesDropped(2, .lapsed)
        #expect(m.provers[1]?.leaving == e)
        #expect(m.sessions.keys.contains(1), "the connection is still open: it may vouch again")
        #expect(m.sweep(now: 1_120) == [], "a leaving session is not counted again")
        #expect(m.sweep(now: 2_000) == [.dropSessions([2], .lapsed), .notifyDropObserver(epoch: e + 1)])
        #expect(m.counters.proofLapses == 2 && m.counters.droppedLapsed == 2)
        let released = m.dropTold(e)
        #expect(released.count == 1 && released.first === old)
        #expect(m.provers[1] == nil && m.provers[2]?.leaving == e + 1)
    }

    @Test func theProofInstantIsHeldBackWhileASessionIsLeaving() {
        var m = Machine(maxStalenessNanos: 100)
        #expect(m.freshness(now: 5_000) == 5_000, "nothing held needs proof")
        _ = m.listenerUp(node: 1, listener: 10)
        let clock = Clock(1_000)
        _ = Self.insert(&m, Self.read(m), clock)
        #expect(m.freshness(now: 1_050) == 1_000)
        let drop = m.sessionEnded(1)
        clock.provenAt = 4_000
        #expect(m.freshness(now: 5_000) == 4_000, "the dropped session still bounds the proof")
        guard case .notifyDropObserver(let e) = drop.last else {
            Issue.record("no drop to tell: \(drop)")
            return
        }
        #expect(m.dropTold(e).first === clock)
        #expect(m.freshness(now: 5_000) == 5_000)
        #expect(m.provers.isEmpty && m.sessions.isEmpty)
    }

    @Test func withoutABoundNothingLapses() {
        var m = Machine()
        _ = m.listenerUp(node: 1, listener: 10)
        _ = Self.insert(&m, Self.read(m), Clock(0))
        #expect(m.sweep(now: .max) == [])
        #expect(m.counters.proofLapses == 0)
    }

    @Test func anInsertWhileLeavingKeepsTheProver() {
        var m = Machine(maxStalenessNanos: 100)
        _ = m.listenerUp(node: 1, listener: 10)
        let clock = Clock(0)
        _ = Self.insert(&m, Self.read(m), clock)
        _ = m.invalidateAll()
        let e = m.epoch
        #expect(m.provers[1]?.leaving == e)
        #expect(Self.insert(&m, Self.read(m), clock) == .store(watch: false))
        #expect(m.dropTold(e).isEmpty, "it vouches for an entry again")
        #expect(m.provers[1]?.leaving == nil)
    }

    @Test func aLaterDropOfTheSameSessionIsTheOneThatReleasesIt() {
        var m = Machine()
        _ = m.listenerUp(node: 1, listener: 10)
        _ = m.listenerUp(node: 2, listener: 20)
        let clock = Clock()
        _ = Self.insert(&m, Self.read(m, session: 1, node: 1), clock)
        _ = Self.insert(&m, Self.read(m, session: 2, node: 2, redirect: 20))
        _ = m.invalidateAll(node: 1)
        let first = m.epoch
        _ = m.sessionEnded(1)
        let second = m.epoch
        #expect(m.dropTold(first).isEmpty)
        #expect(m.dropTold(second).first === clock)
        #expect(m.provers.keys.sorted() == [2])
    }

    /// Every drop is reported on its own: telling a later drop that did not touch a session does not release it,
    /// its own drop's report does (whatever order the observer calls return in).
    @Test func eachDropIsReportedOnItsOwn() {
        var m = Machine()
        _ = m.listenerUp(node: 1, listener: 10)
        let one = Clock()
        _ = Self.insert(&m, Self.read(m, session: 1), one)
        _ = Self.insert(&m, Self.read(m, session: 2))
        _ = m.sessionEnded(1)
        let first = m.epoch
        _ = m.sessionEnded(2)
        let second = m.epoch
        #expect(m.dropTold(second).count == 1)
        #expect(m.provers[1]?.leaving == first, "its drop is still untold")
        #expect(m.dropTold(first).first === one)
        #expect(m.provers.isEmpty)
    }

    // MARK: Change marks

    @Test func unchangedSinceAMark() {
        var m = Machine()
        _ = m.listenerUp(node: 1, listener: 10)
        _ = m.listenerUp(node: 2, listener: 20)
        _ = Self.insert(&m, Self.read(m, session: 2, node: 2, redirect: 20))
        var mark = m.epoch
        _ = m.invalidate("a")
        #expect(!m.unchanged("a", since: mark) && m.unchanged("b", since: mark))
        _ = m.invalidateAll(node: 1)
        #expect(!m.unchanged("b", since: mark), "a drop of any node's part")
        mark = m.epoch
        #expect(m.unchanged("a", since: mark) && m.unchanged("b", since: mark))
        _ = m.invalidateAll()
        #expect(!m.unchanged("b", since: mark))
    }

    // MARK: Random event sequences against the truth

    /// An entry the shell holds: which session read it, when the read was sent and when it was kept (steps).
    struct Held {
        var session: UInt64
        var node: UInt64
        var sentAt: Int
        var keptAt: Int
    }

    /// A data connection of the simulated daemon.
    struct Session {
        var node: UInt64
        var redirect: Int64
        var clock: Clock
        var open = true
        var kept = false
    }

    /// Random interleavings of every event, the shell simulated by a dictionary of entries (one per key),
    /// drop-observer calls delayed and reordered as threads would (each drop reported to the machine by its own
    /// ``LocalCacheCoherence/dropTold(_:)``, as the shell does), and every choice made by a seed alone (no
    /// dictionary order). After every step: every entry held is
    /// vouched for by the truth (no change of its key, of everything, of its node or its node's listener, no
    /// end of its session after its read was sent, no lapse of its proof after it was kept); the proof instant
    /// is never later than the proof of a session holding an entry or of one dropped and not yet heard of (no
    /// observer call that started after the drop has returned); a proof
    /// released holds nothing. An insert the truth vouches for is kept unless a drop came since its read. At the
    /// end, with every session ended and every drop told, no bookkeeping is left.
    @Test(arguments: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12])
    func everyEntryHeldIsVouchedFor(seed: UInt64) {
        var rng = SplitMix64(seed: seed)
        func pick(_ n: Int) -> Int { Int(rng.next() % UInt64(n)) }
        /// One of `sessions` (by id, so a seed replays the same run), or nil.
        func anySession(_ matching: (Session) -> Bool = { _ in true }) -> (UInt64, Session)? {
            let ids = sessions.filter { matching($0.value) }.keys.sorted()
            guard !ids.isEmpty else { return nil }
            let id = ids[pick(ids.count)]
            return (id, sessions[id]!)
        }
        let bound: UInt64 = 100
        var m = Machine(maxStalenessNanos: bound, maxInvalidatedKeys: 6)
        let keys = ["a", "b", "c", "d", "e", "f", "g", "h"]

        // The truth, by step.
        var step = 0
        var now: UInt64 = 1_000
        var listeners: [UInt64: Int64] = [:]
        var liveNodes: [UInt64] = [1, 2, 3]
        var nextNode: UInt64 = 4
        var nextListener: Int64 = 100
        var sessions: [UInt64: Session] = [:]
        var nextSession: UInt64 = 1
        var keyChangedAt: [String: Int] = [:]
        var nodeChangedAt: [UInt64: Int] = [:]
        var allChangedAt = 0
        var lapsedAt: [UInt64: Int] = [:]
        // The shell.
        var held: [String: Held] = [:]
        var reads: [(read: Machine.Read, sentAt: Int)] = []
        // Drops whose observer call has not returned yet, with the sessions whose entries they dropped. The
        // shell reports every one of them to the machine (`dropTold`), each on its own, in any order.
        var untold: [(epoch: UInt64, sessions: Set<UInt64>)] = []
        // The latest drop whose observer call returned: its clients heard of every drop up to it (an observer
        // call starts after its drop was applied, so after every earlier one too).
        var heardUpTo: UInt64 = 0
        var lastDropAt = 0
        // Coverage.
        var kept = 0
        var refusals: [Machine.Refusal: Int] = [:]
        var invalidations = 0
        var sessionsKeptAndEnded = 0

        func apply(_ actions: [Machine.Action]) {
            var dropped: Set<UInt64> = []
            for action in actions {
                switch action {
                case .dropKey(let key):
                    held[key] = nil
                case .dropAll:
                    dropped.formUnion(held.values.map(\.session))
                    held.removeAll()
                    lastDropAt = step
                case .dropNode(let node, let of, _):
                    #expect(of == Set(sessions.filter { $0.value.node == node && $0.value.kept && $0.value.open }.keys))
                    let doomed = held.filter { of.contains($0.value.session) }
                    #expect(doomed.allSatisfy { $0.value.node == node })
                    dropped.formUnion(doomed.values.map(\.session))
                    for key in doomed.keys { held[key] = nil }
                    lastDropAt = step
                case .dropSessions(let of, let cause):
                    let doomed = held.filter { of.contains($0.value.session) }
                    dropped.formUnion(doomed.values.map(\.session))
                    for key in doomed.keys { held[key] = nil }
                    m.entriesDropped(doomed.count, cause)
                case .notifyDropObserver(let epoch):
                    untold.append((epoch, dropped))
                }
            }
        }

        /// The observer call of `untold[index]` returns: the shell reports that drop, and only that one (the
        /// others' calls are still running, and report theirs when they return).
        func tell(_ index: Int) {
            let drop = untold.remove(at: index)
            let released = m.dropTold(drop.epoch)
            for proof in released {
                #expect(!held.values.contains { sessions[$0.session]?.clock === proof }, "a released proof vouched for an entry")
            }
            heardUpTo = max(heardUpTo, drop.epoch)
        }

        func vouched(_ entry: Held, key: String) -> Bool {
            guard let session = sessions[entry.session] else { return false }
            return session.open && listeners[session.node] == session.redirect && session.node == entry.node
                && (keyChangedAt[key] ?? 0) < entry.sentAt && (nodeChangedAt[session.node] ?? 0) < entry.sentAt
                && allChangedAt < entry.sentAt && (lapsedAt[entry.session] ?? 0) < entry.keptAt
        }

        for node in liveNodes {
            listeners[node] = nextListener
            apply(m.listenerUp(node: node, listener: nextListener))
            nextListener += 1
        }
        for _ in 0..<5_000 {
            step += 1
            now += UInt64(pick(20))
            switch pick(64) {
            case 0..<4:  // a data connection opens, tracked for its node's listener (or a stale one)
                let node = liveNodes[pick(liveNodes.count)]
                let redirect = pick(5) == 0 ? nextListener - 1 - Int64(pick(3)) : (listeners[node] ?? 1)
                sessions[nextSession] = Session(node: node, redirect: redirect, clock: Clock(now))
                nextSession += 1
            case 4..<16:  // a read is sent (now and then on a connection that closed since)
                guard let (id, session) = pick(10) == 0 ? anySession() : anySession({ $0.open }) else { continue }
                reads.append((Machine.Read(key: keys[pick(keys.count)], session: id, node: session.node, epoch: m.epoch, redirect: 0), step))
            case 16..<28:  // a reply arrives on the session's event loop
                guard !reads.isEmpty else { continue }
                var (read, sentAt) = reads.remove(at: pick(reads.count))
                let session = sessions[read.session]!
                read.redirect = session.redirect  // the shell reads the connection's tracking with the reply
                let decision = m.insert(read, proof: session.clock, sessionOpen: session.open)
                let truth = Held(session: read.session, node: read.node, sentAt: sentAt, keptAt: step)
                switch decision {
                case .store(let watch):
                    #expect(watch == !session.kept)
                    sessions[read.session]?.kept = true
                    held[read.key] = truth
                    kept += 1
                case .refused(let why):
                    refusals[why, default: 0] += 1
                    #expect(!vouched(truth, key: read.key) || lastDropAt >= sentAt, "refused (\(why)) a read the truth vouches for")
                }
            case 28..<36:  // a key changes
                let key = keys[pick(keys.count)]
                keyChangedAt[key] = step
                invalidations += 1
                apply(m.invalidate(key))
            case 36:  // a node reports
                let node = liveNodes[pick(liveNodes.count)]
                nodeChangedAt[node] = step
                switch listeners[node] == nil ? 0 : pick(5) {
                case 0, 1:  // (back) up; its connections track for the new listener now and then
                    let listener = pick(4) == 0 ? (listeners[node] ?? nextListener) : nextListener
                    nextListener += 1
                    listeners[node] = listener
                    // By id, so a seed replays the same run (a dictionary's order is per process).
                    for id in sessions.keys.sorted() where sessions[id]!.node == node && pick(4) != 0 { sessions[id]?.redirect = listener }
                    apply(m.listenerUp(node: node, listener: listener))
                case 2:
                    listeners[node] = nil
                    apply(m.listenerDown(node: node))
                case 3:
                    apply(m.invalidateAll(node: node))
                default:
                    listeners[node] = nil
                    liveNodes.removeAll { $0 == node }
                    liveNodes.append(nextNode)
                    apply(m.nodeRemoved(node))
                    // It is shut down: its connections close (some only later).
                    for id in sessions.keys.sorted() {
                        let session = sessions[id]!
                        guard session.node == node && session.open && pick(4) != 0 else { continue }
                        sessions[id]?.open = false
                        if session.kept { sessionsKeptAndEnded += 1 }
                        apply(m.sessionEnded(id))
                    }
                    listeners[nextNode] = nextListener
                    apply(m.listenerUp(node: nextNode, listener: nextListener))
                    nextNode += 1
                    nextListener += 1
                }
            case 38:  // everything changed (now and then)
                guard pick(2) == 0 else { continue }
                allChangedAt = step
                apply(m.invalidateAll())
            case 39, 40:  // a data connection closes
                guard let (id, session) = anySession({ $0.open }) else { continue }
                sessions[id]?.open = false
                if session.kept { sessionsKeptAndEnded += 1 }
                apply(m.sessionEnded(id))
            case 41..<47:  // replies and heartbeats prove connections up to some instant
                for id in sessions.keys.sorted() where pick(2) == 0 {
                    let to = now - UInt64(pick(150))
                    if to > sessions[id]!.clock.provenAt { sessions[id]!.clock.provenAt = to }
                }
            case 47..<51:  // the proof publisher's beat
                for (id, session) in sessions where session.clock.provenAt + bound < now { lapsedAt[id] = step }
                apply(m.sweep(now: now))
            default:  // the drop observer returns, in any order
                if !untold.isEmpty { tell(pick(untold.count)) }
            }

            for (key, entry) in held {
                #expect(vouched(entry, key: key), "step \(step): \(key) held from \(entry) is not vouched for")
            }
            let freshness = m.freshness(now: now)
            for entry in held.values {
                #expect(freshness <= sessions[entry.session]!.clock.provenAt, "the proof passed an entry held")
            }
            for drop in untold where drop.epoch > heardUpTo {
                for id in drop.sessions {
                    #expect(freshness <= sessions[id]!.clock.provenAt, "the proof passed a drop not yet told")
                }
            }
            #expect(m.sessions.count <= sessions.count(where: { $0.value.open }))
        }

        // Every connection closes, every drop is told: nothing is left behind.
        reads.removeAll()
        for id in sessions.keys.sorted() where sessions[id]!.open {
            sessions[id]?.open = false
            if sessions[id]!.kept { sessionsKeptAndEnded += 1 }
            apply(m.sessionEnded(id))
        }
        while !untold.isEmpty { tell(pick(untold.count)) }
        #expect(held.isEmpty)
        #expect(m.sessions.isEmpty, "left: \(m.sessions)")
        #expect(m.provers.isEmpty, "left: \(m.provers.keys.sorted())")
        #expect(m.freshness(now: now) == now)
        #expect(m.listeners == listeners.filter { liveNodes.contains($0.key) })
        #expect(Set(m.nodeFlushedAt.keys).isSubset(of: liveNodes))
        #expect(m.invalidatedAt.count <= m.maxInvalidatedKeys)
        #expect(m.counters.invalidations == invalidations)
        #expect(m.counters.sessionsEnded == sessionsKeptAndEnded)
        let c = m.counters
        #expect(kept > 50 && c.proofLapses > 0 && c.flushes[.overflow, default: 0] > 0, "not every path was taken: \(kept) kept, \(c), \(refusals)")
        #expect(refusals[.invalidated, default: 0] > 0 && refusals[.sessionClosed, default: 0] > 0, "refusals: \(refusals)")
    }
}
