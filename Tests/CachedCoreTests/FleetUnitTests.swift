import CachedProtocol
import CachedRedis
import CachedTestSupport
import NIOCore
import Testing

@testable import CachedCore

@Suite("Fleet wait state machine")
struct FleetWaitStateMachineTests {
    typealias Machine = FleetWaitStateMachine<String>
    static let ms: UInt64 = 1_000_000

    func machine(now: UInt64 = 0, timeout: UInt64 = 1_000 * Self.ms) -> Machine {
        Machine(now: now, timeout: timeout, firstPoll: 20 * Self.ms, maxPoll: 100 * Self.ms)
    }

    @Test func pollsBackOffUpToTheCapAndEndWithTheValue() {
        var m = machine()
        guard case .schedulePoll(let g1, let d1) = m.start() else { Issue.record("no first poll"); return }
        #expect(d1 == 20 * Self.ms)
        guard case .look = m.pollFired(g1, now: 20 * Self.ms) else { Issue.record("a poll must look"); return }
        var delays = [d1]
        var now = 20 * Self.ms
        for _ in 0..<6 {
            guard case .schedulePoll(let g, let d) = m.lookEnded(.held, now: now) else { Issue.record("held must poll again"); return }
            delays.append(d)
            now += d
            guard case .look = m.pollFired(g, now: now) else { Issue.record("a poll must look"); return }
        }
        #expect(delays == [20_000, 30_000, 45_000, 67_500, 100_000, 100_000, 100_000].map { $0 * Self.ms / 1000 })
        guard case .finish(.value(let v)) = m.lookEnded(.present("filled"), now: now) else { Issue.record("present ends it"); return }
        #expect(v == "filled")
        #expect(m.isDone)
        #expect(m.looks == 7)
    }

    @Test func aChangeDuringALookMakesOneMoreLookRightAfterIt() {
        var m = machine()
        _ = m.start()
        guard case .look = m.changed() else { Issue.record("a change must look"); return }
        guard case .none = m.changed() else { Issue.record("one look at a time"); return }
        guard case .none = m.changed() else { Issue.record("one look at a time"); return }
        guard case .look = m.lookEnded(.held, now: 1) else { Issue.record("the change seen during the look needs a look"); return }
        guard case .schedulePoll = m.lookEnded(.held, now: 2) else { Issue.record("then it polls"); return }
        #expect(m.looks == 2)
    }

    @Test func staleTimersAreIgnored() {
        var m = machine()
        guard case .schedulePoll(let old, _) = m.start() else { Issue.record("no first poll"); return }
        _ = m.changed()
        guard case .schedulePoll(let new, _) = m.lookEnded(.held, now: 1) else { Issue.record("must poll"); return }
        #expect(old != new)
        guard case .none = m.pollFired(old, now: 2) else { Issue.record("an old timer must not look"); return }
        guard case .look = m.pollFired(new, now: 3) else { Issue.record("the current timer looks"); return }
    }

    @Test func theLockWonOrAnErrorEndsTheWait() {
        var m = machine()
        _ = m.start()
        _ = m.changed()
        guard case .finish(.won) = m.lookEnded(.won, now: 1) else { Issue.record("won ends it"); return }
        guard case .none = m.changed() else { Issue.record("done ignores changes"); return }

        var f = machine()
        _ = f.start()
        _ = f.changed()
        struct Boom: Error {}
        guard case .finish(.failed) = f.lookEnded(.failed(Boom()), now: 1) else { Issue.record("an error ends it"); return }
    }

    @Test func itGivesUpAtTheDeadline() {
        var m = machine(now: 0, timeout: 50 * Self.ms)
        guard case .schedulePoll(let g, _) = m.start() else { Issue.record("no first poll"); return }
        guard case .finish(.gaveUp) = m.pollFired(g, now: 60 * Self.ms) else { Issue.record("past the deadline it gives up"); return }

        var h = machine(now: 0, timeout: 50 * Self.ms)
        _ = h.start()
        _ = h.changed()
        guard case .finish(.gaveUp) = h.lookEnded(.held, now: 51 * Self.ms) else { Issue.record("a held lock past the deadline gives up"); return }
    }

    /// Random events: it finishes exactly once, never has two looks out, and never looks after finishing.
    @Test(arguments: [1, 2, 3, 4, 5, 6, 7, 8] as [UInt64])
    func randomEventsFinishOnceWithOneLookAtATime(seed: UInt64) {
        var rng = SplitMix64(seed: seed)
        var m = machine(now: 0, timeout: 500 * Self.ms)
        var now: UInt64 = 0
        var timers: [UInt64] = []
        var lookOut = false
        var finished = 0
        func apply(_ action: Machine.Action) {
            switch action {
            case .look:
                #expect(!lookOut, "two looks in flight")
                #expect(finished == 0, "a look after the end")
                lookOut = true
            case .schedulePoll(let g, _): timers.append(g)
            case .finish: finished += 1
            case .none: break
            }
        }
        apply(m.start())
        for _ in 0..<400 {
            now += rng.next() % (30 * Self.ms)
            switch rng.next() % 3 {
            case 0: apply(m.changed())
            case 1:
                if !timers.isEmpty { apply(m.pollFired(timers[Int(rng.next() % UInt64(timers.count))], now: now)) }
            default:
                guard lookOut else { continue }
                lookOut = false
                let r = rng.next() % 10
                apply(m.lookEnded(r == 0 ? .present("v") : r == 1 ? .won : .held, now: now))
            }
        }
        // Drain: answer the look out, then fire timers until the deadline ends it.
        while finished == 0 {
            now += 100 * Self.ms
            if lookOut {
                lookOut = false
                apply(m.lookEnded(.held, now: now))
            } else if let g = timers.last {
                apply(m.pollFired(g, now: now))
            } else {
                apply(m.changed())
            }
        }
        #expect(finished == 1)
        #expect(m.isDone)
    }
}

@Suite("Fleet layout, ages and settings")
struct FleetLayoutTests {
    @Test(arguments: ["000STUDENT#0000000012", "a", "x{", "{x", "HASH#00000000AB", "k{user1000}.following", "{tag}rest", "Ünïcode#1"])
    func metadataKeysShareTheEntrysSlot(_ storeKey: String) throws {
        let meta = try #require(FleetLayout.metaKey(storeKey))
        #expect(meta.hasPrefix("cached:fill:{"))
        #expect(HashSlot.of(meta) == HashSlot.of(storeKey))
    }

    @Test func namesWithAStrayBraceHaveNoLock() {
        #expect(FleetLayout.metaKey("a}b") == nil)
        #expect(FleetLayout.metaKey("{}}") == nil)
        #expect(FleetLayout.metaKey("{}x") == nil)  // an empty tag: Redis hashes the whole name, "}" included
    }

    @Test func aNameWithItsOwnTagKeepsIt() {
        #expect(FleetLayout.metaKey("k{user1000}.following") == "cached:fill:{user1000}:k{user1000}.following")
        #expect(FleetLayout.metaKey("000STUDENT#0000000012") == "cached:fill:{000STUDENT#0000000012}")
        #expect(FleetLayout.lockField(StoreLocation(key: "h", field: nil)) == "lock")
        #expect(FleetLayout.lockField(StoreLocation(key: "h", field: "f#1")) == "lock:f#1")
    }

    func age(fresh: Int64, beta: Double = 1, delta: Duration? = .milliseconds(200)) -> EntryAge {
        let base = NIODeadline.uptimeNanoseconds(1_000_000_000_000)
        return EntryAge(
            freshUntil: base + .milliseconds(fresh), staleUntil: base + .milliseconds(fresh + 5000),
            expiresAt: base + .milliseconds(fresh + 8000), delta: delta, beta: beta)
    }

    @Test func phasesFollowTheDeadlines() {
        let a = age(fresh: 2000)
        let base = NIODeadline.uptimeNanoseconds(1_000_000_000_000)
        #expect(a.phase(at: base) == .fresh)
        #expect(a.phase(at: base + .milliseconds(2000)) == .stale)
        #expect(a.phase(at: base + .milliseconds(6999)) == .stale)
        #expect(a.phase(at: base + .milliseconds(7000)) == .grace)
        #expect(a.phase(at: base + .milliseconds(10_000)) == .expired)
    }

    @Test func xfetchRefreshesEarlyWithTheRightProbability() {
        let base = NIODeadline.uptimeNanoseconds(1_000_000_000_000)
        let a = age(fresh: 100)  // 100 ms before the end of freshness, Δ = 200 ms, β = 1
        // u = 1: ln u = 0, no head start; a tiny u: a huge head start.
        #expect(!a.shouldRefreshEarly(at: base, random: 1))
        #expect(a.shouldRefreshEarly(at: base, random: 1e-9))
        #expect(!age(fresh: 100, beta: 0).shouldRefreshEarly(at: base, random: 1e-9))
        #expect(!age(fresh: 100, delta: nil).shouldRefreshEarly(at: base, random: 1e-9))
        // P(−Δ·β·ln u ≥ 100 ms) = P(u ≤ e^−0.5) ≈ 0.607.
        var rng = SplitMix64(seed: 42)
        let n = 20_000
        var yes = 0
        for _ in 0..<n where a.shouldRefreshEarly(at: base, random: Double(rng.next() >> 11) / Double(1 << 53)) { yes += 1 }
        let rate = Double(yes) / Double(n)
        #expect(abs(rate - 0.6065) < 0.02, "rate \(rate)")
        // β = 2 doubles the head start: P(u ≤ e^−0.25) ≈ 0.779.
        yes = 0
        let b = age(fresh: 100, beta: 2)
        for _ in 0..<n where b.shouldRefreshEarly(at: base, random: Double(rng.next() >> 11) / Double(1 << 53)) { yes += 1 }
        #expect(abs(Double(yes) / Double(n) - 0.7788) < 0.02)
    }

    @Test func agesComeFromRedisPTTL() throws {
        let now = NIODeadline.uptimeNanoseconds(5_000_000_000)
        let policy = DaemonConfiguration.AgingPolicy(staleTTL: .seconds(5), grace: .seconds(3), beta: 1)
        let a = try #require(RedisCacheStore.age(ttl: .integer(9_000), delta: .bulk(ByteBuffer(string: "250")), policy: policy, now: now))
        #expect(a.expiresAt == now + .milliseconds(9000))
        #expect(a.staleUntil == now + .milliseconds(6000))
        #expect(a.freshUntil == now + .milliseconds(1000))
        #expect(a.delta == .milliseconds(250))
        #expect(RedisCacheStore.age(ttl: .integer(-1), delta: .null, policy: policy, now: now) == nil)  // no expiry
        #expect(RedisCacheStore.age(ttl: .integer(100), delta: .null, policy: policy, now: now)?.delta == nil)
    }

    @Test func settingsParseAndAreChecked() throws {
        var c = try DaemonConfiguration(toml: """
            redis = "redis://127.0.0.1:6379/0"
            [keys.Student]
            ttl = 60
            stale_ttl = 30
            grace = 600
            early_refresh_beta = 1.5
            fleet_single_flight = false
            handler = ["worker"]
            """)
        let key = c.key("student")
        #expect(key.staleTTL == .seconds(30) && key.grace == .seconds(600) && key.earlyRefreshBeta == 1.5)
        #expect(key.fleetSingleFlight == false)
        #expect(key.storeTTL(.seconds(60)) == .seconds(690))
        #expect(key.storeTTL(.zero) == .zero)
        #expect(DaemonConfiguration.KeyConfiguration(ttl: .seconds(5)).storeTTL(.seconds(5)) == .seconds(5))
        try c.validate()

        c.live.keys["Student"]?.handler = nil
        #expect(throws: ConfigurationError.self) { try c.validate() }  // nothing to refresh with
        c.live.keys["Student"]?.handler = .init(command: ["w"])
        c.live.keys["Student"]?.ttl = .zero
        #expect(throws: ConfigurationError.self) { try c.validate() }  // no expiry to act around
        c.live.keys["Student"]?.ttl = .seconds(1)
        c.startup.store = .embedded
        #expect(throws: ConfigurationError.self) { try c.validate() }  // no PTTL to read

        #expect(throws: ConfigurationError.self) { try DaemonConfiguration(toml: "[keys.S]\nearly_refresh_beta = -1") }
        #expect(throws: ConfigurationError.self) { try DaemonConfiguration(toml: "[keys.S]\nfleet_single_flight = 1") }
        #expect(throws: ConfigurationError.self) { try DaemonConfiguration(toml: "[keys.S]\nstale_ttl = \"x\"") }
    }
}
