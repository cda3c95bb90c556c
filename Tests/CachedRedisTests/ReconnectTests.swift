@testable import CachedRedis
import CachedTestSupport
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Testing

@Suite("Reconnect state machine")
struct ReconnectStateMachineTests {
    let backoff = ReconnectStateMachine.Backoff(base: .milliseconds(50), cap: .seconds(2), jitter: 0.8...1.2)

    @Test func backoffDoublesFromBaseToCap() {
        #expect(backoff.delay(afterFailures: 1) == .milliseconds(50))
        #expect(backoff.delay(afterFailures: 2) == .milliseconds(100))
        #expect(backoff.delay(afterFailures: 6) == .milliseconds(1600))
        #expect(backoff.delay(afterFailures: 7) == .seconds(2))
        #expect(backoff.delay(afterFailures: 1000) == .seconds(2))
    }

    @Test func failuresBackOffWithJitterAndASuccessResetsThem() {
        var m = ReconnectStateMachine(backoff: backoff)
        #expect(m.start() == .connect)
        #expect(m.start() == .none)
        #expect(m.attemptFailed(random: 0) == .retry(after: .milliseconds(40), failures: 1))
        #expect(m.retryDue() == .connect)
        #expect(m.attemptFailed(random: 1) == .retry(after: .milliseconds(120), failures: 2))
        #expect(m.retryDue() == .connect)
        #expect(m.attemptFailed(random: 0.5) == .retry(after: .milliseconds(200), failures: 3))
        #expect(m.retryDue() == .connect)
        #expect(m.attemptSucceeded() == .use)
        #expect(m.isConnected && m.failures == 0)
        // A lost connection starts again from the base delay.
        #expect(m.connectionLost(random: 0.5) == .retry(after: .milliseconds(50), failures: 1))
        #expect(m.connectionLost(random: 0.5) == .none)  // not connected any more
        #expect(m.retryDue() == .connect)
        #expect(m.retryDue() == .none)  // an attempt is under way
    }

    @Test func stoppingEndsEverythingAndAConnectionThatComesUpLateIsClosed() {
        var m = ReconnectStateMachine(backoff: backoff)
        #expect(m.stop() == .shutDown)
        #expect(m.start() == .none)
        var n = ReconnectStateMachine(backoff: backoff)
        _ = n.start()
        #expect(n.stop() == .shutDown)
        #expect(n.attemptSucceeded() == .closeNew)
        #expect(n.attemptFailed(random: 0) == .none)
        #expect(n.retryDue() == .none)
        #expect(n.stop() == .none)
        var o = ReconnectStateMachine(backoff: backoff)
        _ = o.start()
        _ = o.attemptFailed(random: 0)
        #expect(o.stop() == .shutDown)
        #expect(o.retryDue() == .none)  // a retry timer that fires after the stop does nothing
    }
}

@Suite("Reconnector (the state machine's runner), without sockets")
struct ReconnectorTests {
    final class FakeConnection: Sendable {
        let closed: EventLoopPromise<Void>
        init(_ loop: any EventLoop) { closed = loop.makePromise() }
    }

    @Test func failsBacksOffComesUpReconnectsAfterALossAndStops() async throws {
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let attempts = NIOLockedValueBox(0)
        let events = NIOLockedValueBox([String]())
        let reconnector = Reconnector<FakeConnection>(
            eventLoop: loop, backoff: .init(base: .milliseconds(5), cap: .milliseconds(20)),
            connect: {
                let n = attempts.withLockedValue { $0 += 1; return $0 }
                // The first two attempts fail.
                if n <= 2 { return loop.makeFailedFuture(RedisClientError(.unavailable, "refused")) }
                return loop.makeSucceededFuture(FakeConnection(loop))
            },
            closeFuture: { $0.closed.futureResult },
            close: { connection in
                connection.closed.succeed()
                return loop.makeSucceededVoidFuture()
            },
            onEvent: { event in
                let text: String
                switch event {
                case .up(_, let failures): text = "up after \(failures)"
                case .lost: text = "lost"
                case .failed(_, let failures, _): text = "failed \(failures)"
                }
                events.withLockedValue { $0.append(text) }
            })
        await reconnector.start()  // returns after the first attempt (a failure)
        #expect(events.withLockedValue { $0 }.first == "failed 1")
        #expect(try waitUntil(timeout: 5) { reconnector.current != nil })
        #expect(events.withLockedValue { $0 } == ["failed 1", "failed 2", "up after 2"])
        // The connection drops: reported, and a new one comes up by itself (the loss counts as one failure).
        let first = try #require(reconnector.current)
        first.closed.succeed()
        #expect(try waitUntil(timeout: 5) { reconnector.current.map { $0 !== first } ?? false })
        #expect(events.withLockedValue { $0 } == ["failed 1", "failed 2", "up after 2", "lost", "up after 1"])
        let second = try #require(reconnector.current)
        await reconnector.shutdown()
        #expect(reconnector.current == nil)
        try await second.closed.futureResult.get()  // closed by the shutdown
        try await Task.sleep(for: .milliseconds(50))
        #expect(attempts.withLockedValue { $0 } == 4, "no attempt after the shutdown")
        #expect(events.withLockedValue { $0 }.count == 5, "a close by shutdown is not reported as a loss")
    }
}
