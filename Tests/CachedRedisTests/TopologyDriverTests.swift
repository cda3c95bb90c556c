import NIOCore
import Testing

@testable import CachedRedis

@Suite("Topology driver: node roster and refresh waiters")
struct TopologyDriverTests {
    struct Node: TopologyNode, Hashable {
        let id: UInt64
    }

    typealias Address = SentinelConfiguration.Address
    let a = Address(host: "10.0.0.1", port: 7000)
    let b = Address(host: "10.0.0.2", port: 7000)
    let c = Address(host: "10.0.0.3", port: 7000)

    @Test func aChangeStartsOnlyMissingNodesKeepsTheOthersAndRetiresThoseThatLeft() {
        var roster = NodeRoster<Node>(refreshOnLoss: .notRetired)
        #expect(roster.missing([a, b, a]) == [a, b])
        var (nodes, left) = roster.install([a, b], fresh: [a: Node(id: 1), b: Node(id: 2)])
        #expect(nodes == [Node(id: 1), Node(id: 2)] && left.isEmpty)
        // b leaves, c comes: only c is new; the routing order is the snapshot's.
        #expect(roster.missing([c, a]) == [c])
        (nodes, left) = roster.install([c, a], fresh: [c: Node(id: 3)])
        #expect(nodes == [Node(id: 3), Node(id: 1)])
        #expect(left == [Node(id: 2)])
        #expect(roster.retired == [2])
        #expect(roster.routed == [a: Node(id: 1), c: Node(id: 3)])
        #expect(Set(roster.removeAll()) == [Node(id: 1), Node(id: 3)])
        #expect(roster.routed.isEmpty && roster.retired == [2])
    }

    @Test func eventsOfRetiredNodesAreDroppedAndLossesAskForAResolution() {
        var roster = NodeRoster<Node>(refreshOnLoss: .notRetired)
        _ = roster.install([a], fresh: [a: Node(id: 1)])
        _ = roster.install([b], fresh: [b: Node(id: 2)])
        #expect(roster.verdict(.invalidate(node: 1, keys: ["k"])) == (false, false))
        #expect(roster.verdict(.connectionLost(node: 1)) == (false, false))
        #expect(roster.verdict(.invalidate(node: 2, keys: ["k"])) == (true, false))
        #expect(roster.verdict(.connectionLost(node: 2)) == (true, true))
        #expect(roster.verdict(.connectFailed(node: 2)) == (true, true))
        // A node still connecting (not routed yet) under `.notRetired` asks too (a cluster's new primary).
        #expect(roster.verdict(.connectFailed(node: 9)) == (true, true))
    }

    @Test func underRoutedOnlyTheRoutedNodesLossAsksForAResolution() {
        var roster = NodeRoster<Node>(refreshOnLoss: .routed)
        _ = roster.install([a], fresh: [a: Node(id: 1)])
        #expect(roster.verdict(.connectionLost(node: 1)) == (true, true))
        // The next master while it connects: forwarded, but asks for nothing (Sentinel).
        #expect(roster.verdict(.connectFailed(node: 2)) == (true, false))
        #expect(roster.verdict(.trackingUp(node: 2, listener: 7)) == (true, false))
    }

    typealias Action = TopologyRefreshStateMachine<Address>.Action

    @Test func waitersAreReleasedByTheResolutionTheyWaitFor() {
        var waiters = RefreshWaiters<Int>()
        waiters.add(1, refreshRunning: false)
        waiters.add(2, refreshRunning: true)  // asked during the one in flight: waits for the next
        // The resolution goes on with a change: nobody is released yet.
        #expect(waiters.stepEnded(Action.apply(from: nil, to: a)).isEmpty)
        // It ends and another follows at once: 1 is released, 2 waits for that one.
        #expect(waiters.stepEnded(Action.refresh) == [1])
        #expect(waiters.current == [2] && waiters.next.isEmpty)
        #expect(waiters.stepEnded(Action.none) == [2])
    }

    @Test func whenNoResolutionFollowsNobodyWaitsLonger() {
        var waiters = RefreshWaiters<Int>()
        waiters.add(1, refreshRunning: false)
        waiters.add(2, refreshRunning: true)
        #expect(waiters.stepEnded(Action.retry(after: .milliseconds(50))) == [1, 2])
        waiters.add(3, refreshRunning: true)
        #expect(waiters.removeAll() == [3])
        #expect(waiters.current.isEmpty && waiters.next.isEmpty)
    }
}

@Suite("Error replies and redirects")
struct RedisErrorReplyTests {
    typealias Address = SentinelConfiguration.Address

    @Test func errorRepliesAreReadByTheirFirstWord() {
        #expect(RedisErrorReply("MOVED 3999 127.0.0.1:6381") == .moved(to: Address(host: "127.0.0.1", port: 6381)))
        #expect(RedisErrorReply("ASK 3999 [::1]:7002") == .ask(to: Address(host: "::1", port: 7002)))
        #expect(RedisErrorReply("MOVED 3999") == .moved(to: nil))
        #expect(RedisErrorReply("MOVED 3999 nowhere") == .moved(to: nil))
        #expect(RedisErrorReply("TRYAGAIN Multiple keys request during rehashing of slot") == .tryAgain)
        #expect(RedisErrorReply("CLUSTERDOWN The cluster is down") == .clusterDown)
        #expect(RedisErrorReply("READONLY You can't write against a read only replica.") == .readOnly)
        #expect(RedisErrorReply("WRONGTYPE Operation against a key holding the wrong kind of value") == .other(code: "WRONGTYPE"))
        #expect(RedisErrorReply("") == .other(code: ""))
    }

    @Test func anErrorReplyKeepsItsCodeAndARedirectMeansNotRun() {
        let oom = RedisClientError.reply("OOM command not allowed when used memory > 'maxmemory'.")
        #expect(oom.code == .errorReply && oom.redisCode == "OOM")
        #expect(oom.message == "OOM command not allowed when used memory > 'maxmemory'.")
        for word in ["MOVED", "ASK", "TRYAGAIN"] {
            let error = RedisClientError.reply("\(word) 12 127.0.0.1:7000")
            #expect(error.code == .notRun && error.redisCode == word)
        }
        #expect(RedisClientError.reply("CLUSTERDOWN Hash slot not served").code == .errorReply)
    }

    @Test func tryAgainBacksOffFrom20MillisecondsDoublingUpTo320() {
        #expect((0...6).map { RedisRedirect.tryAgainDelay(attempt: $0) } == [20, 40, 80, 160, 320, 320, 320].map { .milliseconds($0) })
        #expect(RedisRedirect.maximum == 5)
    }
}
