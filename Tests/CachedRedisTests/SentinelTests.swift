@testable import CachedRedis
import NIOCore
import Testing

@Suite("Topology refresh state machine")
struct TopologyRefreshStateMachineTests {
    typealias Address = SentinelConfiguration.Address
    let backoff = ReconnectStateMachine.Backoff(base: .milliseconds(50), cap: .seconds(2))
    let a = Address(host: "10.0.0.1", port: 6379)
    let b = Address(host: "10.0.0.2", port: 6379)

    @Test func theFirstRefreshAppliesWithoutCountingAChange() {
        var m = TopologyRefreshStateMachine<Address>(backoff: backoff)
        #expect(m.refreshRequested(.start) == .refresh)
        #expect(m.refreshed(a) == .apply(from: nil, to: a))
        #expect(m.applied() == .none)
        #expect(m.current == a && m.changes == 0)
        // The same master again: nothing to do.
        #expect(m.refreshRequested(.periodic) == .refresh)
        #expect(m.refreshed(a) == .none)
        #expect(m.changes == 0)
    }

    @Test func aNewSnapshotIsAChange() {
        var m = TopologyRefreshStateMachine<Address>(backoff: backoff)
        _ = m.refreshRequested(.start)
        _ = m.refreshed(a)
        _ = m.applied()
        #expect(m.refreshRequested(.switchMessage) == .refresh)
        #expect(m.refreshed(b) == .apply(from: a, to: b))
        #expect(m.applied() == .none)
        #expect(m.current == b && m.changes == 1)
    }

    @Test func oneRefreshAtATimeAndARequestDuringOneRunsRightAfterIt() {
        var m = TopologyRefreshStateMachine<Address>(backoff: backoff)
        #expect(m.refreshRequested(.start) == .refresh)
        #expect(m.refreshRequested(.readOnly) == .none)
        #expect(m.refreshRequested(.connectionLost) == .none)
        #expect(m.refreshed(a) == .apply(from: nil, to: a))
        // Requests during the switch are folded into one more resolution.
        #expect(m.refreshRequested(.switchMessage) == .none)
        #expect(m.applied() == .refresh)
        #expect(m.refreshed(a) == .none)
        #expect(m.refreshRequested(.periodic) == .refresh)
    }

    @Test func failuresBackOffAndASuccessResetsThem() {
        var m = TopologyRefreshStateMachine<Address>(backoff: backoff)
        _ = m.refreshRequested(.start)
        #expect(m.refreshFailed() == .retry(after: .milliseconds(50)))
        #expect(m.refreshRequested(.retry) == .refresh)
        #expect(m.refreshFailed() == .retry(after: .milliseconds(100)))
        #expect(m.failures == 2)
        #expect(m.refreshRequested(.retry) == .refresh)
        #expect(m.refreshed(a) == .apply(from: nil, to: a))
        #expect(m.failures == 0)
    }

    @Test func stoppedMeansNothingMore() {
        var m = TopologyRefreshStateMachine<Address>(backoff: backoff)
        _ = m.refreshRequested(.start)
        m.stop()
        #expect(m.refreshed(a) == .none)
        #expect(m.refreshRequested(.periodic) == .none)
        #expect(m.current == nil)
    }

    @Test func lateReportsWithoutAResolutionAreIgnored() {
        var m = TopologyRefreshStateMachine<Address>(backoff: backoff)
        #expect(m.refreshed(a) == .none)
        #expect(m.refreshFailed() == .none)
        #expect(m.applied() == .none)
        #expect(m.current == nil)
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
