@testable import CachedCore
import CachedProtocol
import CachedTestSupport
import NIOCore
import Testing

/// The get flow's own machine (``GetFlow``), without NIO; and the whole flow, ``GetFlow`` per request
/// over one shared ``FillStateMachine``, driven by a seeded scheduler against a simulated store.
@Suite("Get flow")
struct GetFlowTests {
    typealias Verdict = FillCoordinator.Verdict

    static func buffer(_ text: String) -> ByteBuffer { ByteBuffer(string: text) }

    static func describe(_ step: GetFlow.Step) -> String {
        switch step {
        case .readAged: "readAged"
        case .flight(let start): start ? "flight(start)" : "flight(join)"
        case .leaseRead(let mayLease): mayLease ? "leaseRead" : "leaseRead(noLease)"
        case .refreshInGrace: "refreshInGrace"
        case .checkGrace: "checkGrace"
        case .deadlinePassed: "deadlinePassed"
        case .answer(let result, let refresh):
            "answer \(describe(result))" + (refresh.map { $0.early ? " +earlyRefresh" : " +refresh" } ?? "")
        }
    }

    static func describe(_ result: MethodResult) -> String {
        switch result {
        case .get(let hit, let value): "get(\(hit), \(value.map { String(buffer: $0) } ?? "nil"))"
        case .fill(let value, let lease, let cached):
            "fill(\(value.map { String(buffer: $0) } ?? "nil"), lease: \(lease ?? "nil"), cached: \(cached))"
        case .hit(let value): "hit(\(String(buffer: value.raw)))"
        case .stale(let value): "stale(\(String(buffer: value.raw)))"
        default: "\(result)"
        }
    }

    static let handlerKey = GetFlow.Key(hasHandler: true, aged: false, mayLease: true)
    static let leaseKey = GetFlow.Key(hasHandler: false, aged: false, mayLease: true)
    static let agedKey = GetFlow.Key(hasHandler: true, aged: true, mayLease: true)

    @Test func aHandlerKeyJoinsOrStartsAFlightAndReadsAgainWhenAWriteOvertookIt() {
        var flow = GetFlow(Self.handlerKey)
        #expect(Self.describe(flow.start()) == "flight(start)")
        #expect(Self.describe(flow.next(.flightAnswered(.readAgain), deadlinePassed: false)) == "flight(start)")
        #expect(Self.describe(flow.next(.flightAnswered(.busy), deadlinePassed: false)) == "flight(start)")
        #expect(flow.attempt == 2)
        #expect(Self.describe(flow.next(.flightAnswered(.value(Self.buffer("v"), cached: true)), deadlinePassed: false))
                == "answer fill(v, lease: nil, cached: true)")
    }

    @Test func afterThreeOvertakenFlightsOnePlainReadWithoutALease() {
        var flow = GetFlow(Self.handlerKey)
        _ = flow.start()
        for _ in 0..<2 { _ = flow.next(.flightAnswered(.readAgain), deadlinePassed: false) }
        #expect(Self.describe(flow.next(.flightAnswered(.readAgain), deadlinePassed: false)) == "leaseRead(noLease)")
        // It stays a plain read from then on.
        #expect(Self.describe(flow.next(.leaseAnswered(.readAgain), deadlinePassed: false)) == "leaseRead(noLease)")
        #expect(Self.describe(flow.next(.stored(Self.buffer("x")), deadlinePassed: false)) == "answer get(true, x)")
    }

    @Test func aKeyWithoutAHandlerReadsAndTakesALeaseOrWaits() {
        var flow = GetFlow(Self.leaseKey)
        #expect(Self.describe(flow.start()) == "flight(join)")
        #expect(Self.describe(flow.next(.noFlight, deadlinePassed: false)) == "leaseRead")
        #expect(Self.describe(flow.next(.leaseAnswered(.readAgain), deadlinePassed: false)) == "leaseRead")
        #expect(Self.describe(flow.next(.leaseAnswered(.lease("t1")), deadlinePassed: false)) == "answer fill(nil, lease: t1, cached: true)")
        var reader = GetFlow(GetFlow.Key(hasHandler: false, aged: false, mayLease: false))
        _ = reader.start()
        #expect(Self.describe(reader.next(.noFlight, deadlinePassed: false)) == "leaseRead(noLease)", "lease: false never takes one")
    }

    @Test func theDeadlineStopsEveryReadAgainButNotTheFirstRead() {
        var flow = GetFlow(Self.handlerKey)
        #expect(Self.describe(flow.start()) == "flight(start)")
        #expect(Self.describe(flow.next(.flightAnswered(.readAgain), deadlinePassed: true)) == "deadlinePassed")
        var lease = GetFlow(Self.leaseKey)
        _ = lease.start()
        #expect(Self.describe(lease.next(.noFlight, deadlinePassed: true)) == "leaseRead", "the first read goes out")
        #expect(Self.describe(lease.next(.leaseAnswered(.busy), deadlinePassed: true)) == "deadlinePassed")
        // An answer that came is still the answer (the dispatcher's bounded future decides lateness).
        var answered = GetFlow(Self.handlerKey)
        _ = answered.start()
        #expect(Self.describe(answered.next(.flightAnswered(.inStore(nil)), deadlinePassed: true)) == "answer get(false, nil)")
    }

    static func age(freshFor fresh: Double, staleFor stale: Double, graceFor grace: Double, beta: Double = 0, delta: Duration? = nil) -> EntryAge {
        let now = NIODeadline.now()
        let f = now + .nanoseconds(Int64(fresh * 1e9))
        let s = f + .nanoseconds(Int64(stale * 1e9))
        return EntryAge(freshUntil: f, staleUntil: s, expiresAt: s + .nanoseconds(Int64(grace * 1e9)), delta: delta, beta: beta)
    }

    static func aged(_ text: String, _ age: EntryAge) -> EncodedValue {
        var value = EncodedValue(buffer(text))
        value.age = age
        return value
    }

    @Test func anAgedKeyReadsItsAgeFirstAndItsPhaseDecides() {
        var flow = GetFlow(Self.agedKey)
        #expect(Self.describe(flow.start()) == "readAged")
        #expect(Self.describe(flow.next(.agedRead(nil), deadlinePassed: false)) == "flight(start)", "a miss goes to the flight")
        var down = GetFlow(Self.agedKey)
        _ = down.start()
        #expect(Self.describe(down.next(.agedReadFailed(storeDown: true), deadlinePassed: false)) == "flight(start)", "Redis down: the fallback")

        var fresh = GetFlow(Self.agedKey)
        _ = fresh.start()
        #expect(Self.describe(fresh.next(.agedRead(Self.aged("v", Self.age(freshFor: 10, staleFor: 10, graceFor: 10))), deadlinePassed: false))
                == "answer hit(v)")
        var plain = GetFlow(Self.agedKey)
        _ = plain.start()
        #expect(Self.describe(plain.next(.agedRead(EncodedValue(Self.buffer("p"))), deadlinePassed: false)) == "answer get(true, p)")
        var stale = GetFlow(Self.agedKey)
        _ = stale.start()
        #expect(Self.describe(stale.next(.agedRead(Self.aged("s", Self.age(freshFor: -1, staleFor: 10, graceFor: 10))), deadlinePassed: false))
                == "answer stale(s) +refresh")
        var expired = GetFlow(Self.agedKey)
        _ = expired.start()
        #expect(Self.describe(expired.next(.agedRead(Self.aged("x", Self.age(freshFor: -3, staleFor: 1, graceFor: 1))), deadlinePassed: false))
                == "readAged", "expired in between: read again")
    }

    @Test func earlyRefreshFollowsXFetch() {
        let age = Self.age(freshFor: 0.001, staleFor: 10, graceFor: 10, beta: 1, delta: .seconds(5))
        var flow = GetFlow(Self.agedKey)
        #expect(Self.describe(flow.phase(Self.aged("v", age), age, now: .now(), random: 0.5, deadlinePassed: false)) == "answer hit(v) +earlyRefresh")
        let far = Self.age(freshFor: 100, staleFor: 10, graceFor: 10, beta: 1, delta: .milliseconds(1))
        var calm = GetFlow(Self.agedKey)
        #expect(Self.describe(calm.phase(Self.aged("v", far), far, now: .now(), random: 0.5, deadlinePassed: false)) == "answer hit(v)")
    }

    @Test func inGraceTheRefreshAnswersOrTheOldValueIfUnchanged() {
        let grace = Self.age(freshFor: -2, staleFor: 1, graceFor: 10)
        func inGrace() -> GetFlow {
            var flow = GetFlow(Self.agedKey)
            _ = flow.start()
            let step = flow.next(.agedRead(Self.aged("old", grace)), deadlinePassed: false)
            #expect(Self.describe(step) == "refreshInGrace")
            return flow
        }
        var refreshed = inGrace()
        #expect(Self.describe(refreshed.next(.refreshAnswered(.value(Self.buffer("new"), cached: true)), deadlinePassed: false))
                == "answer fill(new, lease: nil, cached: true)")
        var failed = inGrace()
        #expect(Self.describe(failed.next(.refreshFailed, deadlinePassed: false)) == "checkGrace")
        #expect(Self.describe(failed.next(.graceChecked(unchanged: true), deadlinePassed: false)) == "answer stale(old)")
        var changed = inGrace()
        #expect(Self.describe(changed.next(.refreshAnswered(.busy), deadlinePassed: false)) == "checkGrace")
        #expect(Self.describe(changed.next(.graceChecked(unchanged: false), deadlinePassed: false)) == "readAged", "changed: read again")
        var overtaken = inGrace()
        #expect(Self.describe(overtaken.next(.refreshAnswered(.readAgain), deadlinePassed: true)) == "deadlinePassed")
    }

    // MARK: The whole flow, randomized

    /// Requests on one entry, each with its ``GetFlow``, over one shared ``FillStateMachine``, against a
    /// simulated store with concurrent writes, lease holders that fill, release or vanish, and deadlines.
    /// A seeded scheduler picks which pending completion happens next. Checks: every request is answered
    /// exactly once, never after its deadline; a request's answered value was in the store at some moment
    /// during its life (or is a fill); and no record is left in the fill machine at the end.
    final class World {
        typealias Machine = FillStateMachine<String, Int>
        var rng: SplitMix64
        var machine: Machine
        var now = 0
        var store: String?
        /// Every value the store held, with the ticks it was there from and until (nil: still there).
        var history: [(value: String?, from: Int, until: Int?)] = []
        var requests: [Int: Request] = [:]
        var pending: [(at: Int, run: () -> Void)] = []
        var leases: [String: Int] = [:]  // token -> request holding it
        var writes = 0
        var writesInFlight = 0
        var nextValue = 0

        struct Request {
            var flow: GetFlow
            var deadline: Int
            var started: Int
            /// What the client was answered (the deadline, or the flow's end).
            var answers: [String] = []
            /// Every terminal step of the flow: exactly one, also for a request that timed out.
            var flowEnds: [String] = []
            var answeredAt: Int?
            var timedOut = false
        }

        init(seed: UInt64) {
            rng = SplitMix64(seed: seed)
            let counter = Locked(0)
            machine = Machine(makeToken: { counter.withLock { $0 += 1; return "t\($0)" } })
            history = [(nil, 0, nil)]
        }

        func random(_ n: Int) -> Int { Int(rng.next() % UInt64(n)) }

        func later(_ ticks: Int, _ run: @escaping () -> Void) { pending.append((now + ticks, run)) }

        func write(_ value: String?) {
            store = value
            history[history.count - 1].until = now
            history.append((value, now, nil))
        }

        /// Whether `value` was in the store at some tick in `[from, to]`.
        func wasStored(_ value: String?, from: Int, to: Int) -> Bool {
            history.contains { $0.value == value && $0.from <= to && ($0.until ?? Int.max) >= from }
        }

        /// The flow's own end (its terminal step). The client's answer is the first of that and the deadline;
        /// a lease that ends a flow whose request timed out is given back, as the dispatcher does.
        func answer(_ id: Int, _ what: String) {
            guard var r = requests[id] else { return }
            r.flowEnds.append(what)
            if r.answeredAt == nil {
                r.answeredAt = now
                r.answers.append(what)
            } else if what.hasPrefix("lease "), let token = what.split(separator: " ").last.map(String.init) {
                apply(machine.release("e", token: token).1)
            }
            requests[id] = r
        }

        /// Runs the fill machine's actions.
        func apply(_ actions: [Machine.Action]) {
            for action in actions {
                switch action {
                case .answer(let waiters, let reply):
                    for w in waiters {
                        switch reply {
                        case .readAgain: step(w, .leaseAnswered(.readAgain))
                        case .miss: step(w, .leaseAnswered(.miss))
                        case .connectionClosed: answer(w, "closed")
                        }
                    }
                case .grant(let w, _, let token, _, _, _):
                    // A lease only for an entry that is absent (or with a write under way that will end it).
                    if store != nil && writesInFlight == 0 {
                        Issue.record("lease \(token) granted to \(w) at \(now) while the store holds \(store!)")
                    }
                    leases[token] = w
                    holderActs(token, w)
                    step(w, .leaseAnswered(.lease(token)))
                case .releaseFleetLock, .cancelExpiry:
                    break
                }
            }
        }

        /// A lease holder fills (a value computed now), releases, or vanishes until the lease expires.
        func holderActs(_ token: String, _ w: Int) {
            let choice = random(4)
            let value = "fill\(nextValue)"
            nextValue += 1
            later(1 + random(6)) {
                switch choice {
                case 0:
                    self.apply(self.machine.release("e", token: token).1)
                case 1:
                    self.later(3) { self.apply(self.machine.leaseExpired("e", token: token)) }
                default:
                    guard case .accepted(let wake, let actions) = self.machine.redeem("e", token: token) else { return }
                    self.apply(actions)
                    // SET NX: stored only if still absent.
                    self.writesInFlight += 1
                    self.later(1 + self.random(2)) {
                        let stored = self.store == nil
                        if stored { self.write(value) }
                        self.writesInFlight -= 1
                        self.apply(self.machine.writeFinished("e"))
                        for other in wake { self.step(other, stored ? .leaseAnswered(.value(ByteBuffer(string: value), cached: true)) : .leaseAnswered(.readAgain)) }
                    }
                }
            }
        }

        /// Feeds `event` to request `id`'s flow and runs the step it gives.
        func step(_ id: Int, _ event: GetFlow.Event) {
            // The flow goes on after the client was answered at its deadline (as in the daemon): its own
            // deadline checks must end it.
            guard var r = requests[id] else { return }
            let next = r.flow.next(event, deadlinePassed: now >= r.deadline)
            requests[id] = r
            run(id, next)
        }

        func run(_ id: Int, _ step: GetFlow.Step) {
            switch step {
            case .answer(let result, _):
                switch result {
                case .get(_, let value): answer(id, "value \(value.map { String(buffer: $0) } ?? "nil")")
                case .fill(let value, let lease, _):
                    answer(id, lease.map { "lease \($0)" } ?? "value \(value.map { String(buffer: $0) } ?? "nil")")
                default: answer(id, "other")
                }
            case .deadlinePassed:
                answer(id, "deadline")
            case .flight:
                // No handler flights for this key: the lease flow.
                self.step(id, .noFlight)
            case .leaseRead(let mayLease):
                if let r = requests[id], r.flow.attempt > 0, now >= r.deadline {
                    Issue.record("request \(id) read again at \(now), after its deadline \(r.deadline)")
                }
                let ticket = machine.readStarted("e")
                later(1 + random(3)) {
                    guard let value = self.store else {
                        guard self.requests[id]?.timedOut == false else {
                            // Its waits end at the deadline: a miss after it is not queued (the daemon's
                            // coordinator answers it with the deadline's passing, as ``leave`` would).
                            self.machine.readFinished("e", ticket)
                            self.step(id, .leaseAnswered(.miss))
                            return
                        }
                        let policy: Machine.MissPolicy = mayLease ? .lease(ConnectionID(UInt64(id)), timeout: .seconds(5)) : .noLease
                        self.apply(self.machine.readMissed("e", ticket, waiter: id, policy: policy))
                        return
                    }
                    self.machine.readFinished("e", ticket)
                    self.step(id, .stored(ByteBuffer(string: value)))
                }
            case .readAged, .refreshInGrace, .checkGrace:
                Issue.record("not a step of this key")
            }
        }

        /// A write through the daemon: set or delete, as the dispatcher does it.
        func writeThrough() {
            let isDelete = random(3) == 0
            let value = "w\(nextValue)"
            nextValue += 1
            let start = machine.writeStarted("e", isDelete: isDelete)
            writesInFlight += 1
            apply(start.actions)
            writes += 1
            later(1 + random(3)) {
                self.write(isDelete ? nil : value)
                self.writesInFlight -= 1
                self.apply(self.machine.writeFinished("e"))
                for w in start.wake { self.step(w, .leaseAnswered(.value(ByteBuffer(string: value), cached: true))) }
            }
        }

        /// A request's deadline: answered then (the dispatcher's bounded future), and it leaves its wait.
        func expire(_ id: Int) {
            guard var r = requests[id], r.answeredAt == nil else { return }
            r.timedOut = true
            r.answers.append("deadline")
            r.answeredAt = now
            requests[id] = r
            // It leaves its wait; the flow ends with the deadline's answer (the coordinator's leave timer).
            if machine.leave("e", where: { $0 == id }) { step(id, .leaseAnswered(.miss)) }
            // A lease it holds is given back (as the dispatcher does for a late lease).
            for (token, holder) in leases where holder == id { apply(machine.release("e", token: token).1) }
        }

        func runToEnd(requests count: Int) {
            for id in 1...count {
                later(random(40)) {
                    let deadline = self.now + 2 + self.random(30)
                    var flow = GetFlow(GetFlow.Key(hasHandler: false, aged: false, mayLease: self.random(5) != 0))
                    let first = flow.start()
                    self.requests[id] = Request(flow: flow, deadline: deadline, started: self.now)
                    self.later(deadline - self.now) { self.expire(id) }
                    self.run(id, first)
                }
            }
            for _ in 0..<12 { later(random(50)) { self.writeThrough() } }
            var steps = 0
            while !pending.isEmpty {
                steps += 1
                precondition(steps < 100_000, "the simulation does not end")
                // The earliest tick first; among equals, a random one.
                let earliest = pending.map(\.at).min()!
                let ready = pending.indices.filter { pending[$0].at == earliest }
                let index = ready[random(ready.count)]
                let item = pending.remove(at: index)
                now = max(now, item.at)
                item.run()
            }
        }
    }

    @Test(arguments: Array(UInt64(1)...UInt64(24)))
    func theWholeFlowAnswersEveryRequestOnceNeverLateAndLeavesNothing(seed: UInt64) {
        let world = World(seed: seed)
        world.runToEnd(requests: 30)
        for (id, r) in world.requests.sorted(by: { $0.key < $1.key }) {
            // Answered exactly once (a lease handed to a request that already timed out is not an answer:
            // the dispatcher gives it back).
            #expect(r.answers.count == 1, "seed \(seed): request \(id) answered \(r.answers)")
            #expect(r.flowEnds.count == 1, "seed \(seed): request \(id)'s flow ended \(r.flowEnds)")
            guard let at = r.answeredAt else { continue }
            #expect(at <= r.deadline, "seed \(seed): request \(id) answered at \(at), after its deadline \(r.deadline)")
            if !r.timedOut, let answer = r.answers.first, answer.hasPrefix("value ") {
                let text = String(answer.dropFirst(6))
                let value: String? = text == "nil" ? nil : text
                // A value from the store at some moment of the request's life; or a lease's fill given to a waiter.
                #expect(world.wasStored(value, from: r.started, to: at) || (value?.hasPrefix("fill") ?? false),
                        "seed \(seed): request \(id) answered \(answer), never stored during its life")
            }
        }
        #expect(world.machine.records.isEmpty, "seed \(seed): records left \(world.machine.records.keys)")
    }
}
