@testable import CachedRedis
import NIOCore
import Testing

@Suite("Sentinel state machine")
struct SentinelStateMachineTests {
    typealias Address = SentinelConfiguration.Address
    let backoff = ReconnectStateMachine.Backoff(base: .milliseconds(50), cap: .seconds(2))
    let a = Address(host: "10.0.0.1", port: 6379)
    let b = Address(host: "10.0.0.2", port: 6379)

    @Test func theFirstResolutionSwitchesToTheMasterWithoutCountingASwitch() {
        var m = SentinelStateMachine(backoff: backoff)
        #expect(m.resolveRequested(.start) == .resolve)
        #expect(m.resolved(a) == .switchMaster(from: nil, to: a))
        #expect(m.switchFinished() == .none)
        #expect(m.master == a && m.switches == 0)
        // The same master again: nothing to do.
        #expect(m.resolveRequested(.periodic) == .resolve)
        #expect(m.resolved(a) == .none)
        #expect(m.switches == 0)
    }

    @Test func aNewMasterIsASwitch() {
        var m = SentinelStateMachine(backoff: backoff)
        _ = m.resolveRequested(.start)
        _ = m.resolved(a)
        _ = m.switchFinished()
        #expect(m.resolveRequested(.switchMessage) == .resolve)
        #expect(m.resolved(b) == .switchMaster(from: a, to: b))
        #expect(m.switchFinished() == .none)
        #expect(m.master == b && m.switches == 1)
    }

    @Test func oneResolutionAtATimeAndARequestDuringOneRunsRightAfterIt() {
        var m = SentinelStateMachine(backoff: backoff)
        #expect(m.resolveRequested(.start) == .resolve)
        #expect(m.resolveRequested(.readOnly) == .none)
        #expect(m.resolveRequested(.connectionLost) == .none)
        #expect(m.resolved(a) == .switchMaster(from: nil, to: a))
        // Requests during the switch are folded into one more resolution.
        #expect(m.resolveRequested(.switchMessage) == .none)
        #expect(m.switchFinished() == .resolve)
        #expect(m.resolved(a) == .none)
        #expect(m.resolveRequested(.periodic) == .resolve)
    }

    @Test func failuresBackOffAndASuccessResetsThem() {
        var m = SentinelStateMachine(backoff: backoff)
        _ = m.resolveRequested(.start)
        #expect(m.resolveFailed() == .retry(after: .milliseconds(50)))
        #expect(m.resolveRequested(.retry) == .resolve)
        #expect(m.resolveFailed() == .retry(after: .milliseconds(100)))
        #expect(m.failures == 2)
        #expect(m.resolveRequested(.retry) == .resolve)
        #expect(m.resolved(a) == .switchMaster(from: nil, to: a))
        #expect(m.failures == 0)
    }

    @Test func stoppedMeansNothingMore() {
        var m = SentinelStateMachine(backoff: backoff)
        _ = m.resolveRequested(.start)
        m.stop()
        #expect(m.resolved(a) == .none)
        #expect(m.resolveRequested(.periodic) == .none)
        #expect(m.master == nil)
    }

    @Test func lateReportsWithoutAResolutionAreIgnored() {
        var m = SentinelStateMachine(backoff: backoff)
        #expect(m.resolved(a) == .none)
        #expect(m.resolveFailed() == .none)
        #expect(m.switchFinished() == .none)
        #expect(m.master == nil)
    }
}

@Suite("Sentinel URLs")
struct SentinelURLTests {
    @Test func theFullForm() throws {
        let c = try SentinelConfiguration(url: "redis-sentinel://app:s%40cret@10.0.0.1:26380,sentinel-b,[::1]:26381/mymaster/3")
        #expect(c.sentinels == [.init(host: "10.0.0.1", port: 26380), .init(host: "sentinel-b", port: 26379), .init(host: "::1", port: 26381)])
        #expect(c.masterName == "mymaster")
        #expect(c.data.username == "app" && c.data.password == "s@cret" && c.data.database == 3)
        #expect(c.data.tls == nil)
        #expect(c.redactedDescription == "redis-sentinel://app:***@10.0.0.1:26380,sentinel-b:26379,[::1]:26381/mymaster/3")
        // The Sentinels get their own password, database 0, no user.
        var withPassword = c
        withPassword.sentinelPassword = "sp"
        let sentinel = withPassword.sentinel(c.sentinels[0])
        #expect(sentinel.password == "sp" && sentinel.username == nil && sentinel.database == 0)
        #expect(sentinel.endpoint == .tcp(host: "10.0.0.1", port: 26380))
        #expect(c.dataNode(host: "10.0.0.9", port: 7000).password == "s@cret")
    }

    @Test func tlsAndDefaults() throws {
        let c = try SentinelConfiguration(url: "rediss-sentinel://127.0.0.1/m")
        #expect(c.data.tls != nil && c.data.database == 0 && c.data.password == nil)
        #expect(c.sentinels == [.init(host: "127.0.0.1", port: 26379)])
        #expect(SentinelConfiguration.isSentinelURL("rediss-sentinel://x/m"))
        #expect(!SentinelConfiguration.isSentinelURL("redis://x"))
    }

    @Test(arguments: [
        "redis-sentinel://127.0.0.1:26379", "redis-sentinel://127.0.0.1:26379/", "redis-sentinel:///m",
        "redis-sentinel://a:1,,b:2/m", "redis-sentinel://a:99999/m", "redis-sentinel://a/m/x", "redis-sentinel://a/m/1/2",
        "redis://a/m",
    ])
    func badURLsAreRefused(url: String) {
        #expect(throws: RedisURLError.self) { try SentinelConfiguration(url: url) }
    }
}
