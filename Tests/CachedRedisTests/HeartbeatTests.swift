import CachedProtocol
import Foundation
import NIOCore
import NIOEmbedded
import Testing

@testable import CachedRedis

#if canImport(Glibc)
import Glibc
#endif

@Suite("Heartbeats and proof clocks")
struct HeartbeatTests {
    static let ping = RedisCommand("PING").encoded

    func activeChannel() throws -> EmbeddedChannel {
        let channel = EmbeddedChannel()
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 6379)).wait()
        return channel
    }

    @Test func aReplyProvesItsCommandsSendInstant() throws {
        let clock = ProofClock()
        let channel = try activeChannel()
        try channel.pipeline.syncOperations.addHandler(RedisCommandHandler(commandTimeout: .seconds(5), proof: clock))
        let before = NIODeadline.now().uptimeNanoseconds
        let promise = channel.eventLoop.makePromise(of: RedisReply.self)
        try channel.writeOutbound(RedisRequest(command: RedisCommand("GET", "k"), promise: promise))
        let after = NIODeadline.now().uptimeNanoseconds
        #expect(clock.provenAt == 0)  // nothing answered yet: nothing proved
        try channel.writeInbound(RedisReply.null)
        #expect(try promise.futureResult.wait() == .null)
        #expect(clock.provenAt >= before && clock.provenAt <= after)
        _ = try channel.finish(acceptAlreadyClosed: true)
    }

    @Test func anIdleConnectionBeatsAndABusyOneDoesNot() throws {
        let clock = ProofClock()
        clock.isVouching = true  // entries in memory rely on it
        let channel = try activeChannel()
        try channel.pipeline.syncOperations.addHandler(
            RedisCommandHandler(commandTimeout: .seconds(5), proof: clock, heartbeat: .milliseconds(100)))
        // Idle for a beat: a PING goes out, and its answer proves the connection.
        channel.embeddedEventLoop.advanceTime(by: .milliseconds(100))
        #expect(try channel.readOutbound(as: ByteBuffer.self) == Self.ping)
        try channel.writeInbound(RedisReply.status("PONG"))
        let proved = clock.provenAt
        #expect(proved > 0)
        // A command sent within the next beat: that beat sends nothing, the one after does.
        let promise = channel.eventLoop.makePromise(of: RedisReply.self)
        try channel.writeOutbound(RedisRequest(command: RedisCommand("GET", "k"), promise: promise))
        #expect(try channel.readOutbound(as: ByteBuffer.self) == RedisCommand("GET", "k").encoded)
        try channel.writeInbound(RedisReply.null)
        channel.embeddedEventLoop.advanceTime(by: .milliseconds(100))
        #expect(try channel.readOutbound(as: ByteBuffer.self) == nil)
        channel.embeddedEventLoop.advanceTime(by: .milliseconds(100))
        #expect(try channel.readOutbound(as: ByteBuffer.self) == Self.ping)
        try channel.writeInbound(RedisReply.status("PONG"))
        #expect(clock.provenAt > proved)
        _ = try channel.finish(acceptAlreadyClosed: true)
    }

    @Test func aConnectionThatVouchesForNothingOnlyKeepsItsFlowAlive() throws {
        let clock = ProofClock()
        let channel = try activeChannel()
        try channel.pipeline.syncOperations.addHandler(
            RedisCommandHandler(commandTimeout: .seconds(5), proof: clock, heartbeat: .milliseconds(100)))
        let beats = Int(RedisCommandHandler.keepAliveInterval.nanoseconds / TimeAmount.milliseconds(100).nanoseconds)
        for _ in 0..<(beats - 1) { channel.embeddedEventLoop.advanceTime(by: .milliseconds(100)) }
        #expect(try channel.readOutbound(as: ByteBuffer.self) == nil)
        channel.embeddedEventLoop.advanceTime(by: .milliseconds(100))
        #expect(try channel.readOutbound(as: ByteBuffer.self) == Self.ping)
        try channel.writeInbound(RedisReply.status("PONG"))
        // Once entries rely on it, it beats on every idle beat.
        clock.isVouching = true
        channel.embeddedEventLoop.advanceTime(by: .milliseconds(100))
        channel.embeddedEventLoop.advanceTime(by: .milliseconds(100))
        #expect(try channel.readOutbound(as: ByteBuffer.self) == Self.ping)
        _ = try channel.finish(acceptAlreadyClosed: true)
    }

    @Test func withoutHeartbeatNothingIsSent() throws {
        let channel = try activeChannel()
        try channel.pipeline.syncOperations.addHandler(RedisCommandHandler(commandTimeout: .seconds(5), proof: ProofClock()))
        channel.embeddedEventLoop.advanceTime(by: .seconds(10))
        #expect(try channel.readOutbound(as: ByteBuffer.self) == nil)
        _ = try channel.finish(acceptAlreadyClosed: true)
    }

    /// Builds `["message", "__redis__:invalidate", keys]` or another push.
    static func push(_ parts: [RedisReply]) -> RedisReply { .array(parts) }
    static func bulk(_ s: String) -> RedisReply { .bulk(ByteBuffer(string: s)) }

    @Test func theListenerProvesEveryInvalidationBeforeEachAnswer() throws {
        let clock = ProofClock()
        let events = EventLog()
        let channel = try activeChannel()
        try channel.pipeline.syncOperations.addHandler(
            RedisSubscriptionHandler(proof: clock, heartbeat: .milliseconds(50), timeout: .seconds(5)) { events.append($0) })
        #expect(try channel.readOutbound(as: ByteBuffer.self) == RedisCommand("SUBSCRIBE", "__redis__:invalidate").encoded)
        #expect(clock.provenAt == 0)
        try channel.writeInbound(Self.push([Self.bulk("subscribe"), Self.bulk("__redis__:invalidate"), .integer(1)]))
        let subscribed = clock.provenAt
        #expect(subscribed > 0)
        // Invalidations are pushes, not answers: they prove nothing by themselves.
        try channel.writeInbound(Self.push([Self.bulk("message"), Self.bulk("__redis__:invalidate"), .array([Self.bulk("k1")])]))
        #expect(clock.provenAt == subscribed)
        #expect(events.keys == [["k1"]])
        channel.embeddedEventLoop.advanceTime(by: .milliseconds(50))
        #expect(try channel.readOutbound(as: ByteBuffer.self) == Self.ping)
        let pingSent = NIODeadline.now().uptimeNanoseconds
        try channel.writeInbound(Self.push([Self.bulk("pong"), Self.bulk("")]))
        #expect(clock.provenAt > subscribed && clock.provenAt <= pingSent)
        #expect(channel.isActive)
        _ = try channel.finish(acceptAlreadyClosed: true)
    }

    /// Until Redis has run the `SUBSCRIBE`, it drops (sends nothing for) every invalidation for a listener that is
    /// not in Pub/Sub mode: the listener must not be announced, and no data connection redirected to it, before
    /// the confirmation arrived. A pong or an invalidation push does not count as the confirmation.
    @Test func theListenerIsAnnouncedOnlyOnceRedisConfirmedTheSubscription() throws {
        let channel = try activeChannel()
        let subscribed = channel.eventLoop.makePromise(of: Void.self)
        let done = EventLog()
        subscribed.futureResult.whenComplete { _ in done.mark() }
        try channel.pipeline.syncOperations.addHandler(
            RedisSubscriptionHandler(proof: ProofClock(), heartbeat: .milliseconds(50), timeout: .seconds(5), subscribed: subscribed) { _ in })
        #expect(try channel.readOutbound(as: ByteBuffer.self) == RedisCommand("SUBSCRIBE", "__redis__:invalidate").encoded)
        #expect(!done.marked)
        channel.embeddedEventLoop.advanceTime(by: .milliseconds(50))
        try channel.writeInbound(Self.push([Self.bulk("message"), Self.bulk("__redis__:invalidate"), .array([Self.bulk("k1")])]))
        #expect(!done.marked)
        try channel.writeInbound(Self.push([Self.bulk("subscribe"), Self.bulk("__redis__:invalidate"), .integer(1)]))
        #expect(done.marked)
        try subscribed.futureResult.wait()
        _ = try channel.finish(acceptAlreadyClosed: true)
    }

    @Test func aSubscriptionThatIsNeverConfirmedFailsAndCloses() throws {
        for closeFirst in [false, true] {
            let channel = try activeChannel()
            let subscribed = channel.eventLoop.makePromise(of: Void.self)
            try channel.pipeline.syncOperations.addHandler(
                RedisSubscriptionHandler(proof: ProofClock(), heartbeat: nil, timeout: .milliseconds(300), subscribed: subscribed) { _ in })
            _ = try channel.readOutbound(as: ByteBuffer.self)
            if closeFirst {
                try channel.close().wait()
            } else {
                channel.embeddedEventLoop.advanceTime(by: .milliseconds(299))
                #expect(channel.isActive)
                channel.embeddedEventLoop.advanceTime(by: .milliseconds(1))
                #expect(!channel.isActive)
            }
            #expect(throws: RedisClientError.self) { try subscribed.futureResult.wait() }
            _ = try? channel.finish(acceptAlreadyClosed: true)
        }
    }

    @Test func aListenerThatStopsAnsweringIsClosed() throws {
        let clock = ProofClock()
        let channel = try activeChannel()
        try channel.pipeline.syncOperations.addHandler(
            RedisSubscriptionHandler(proof: clock, heartbeat: .milliseconds(10), timeout: .milliseconds(30)) { _ in })
        _ = try channel.readOutbound(as: ByteBuffer.self)
        try channel.writeInbound(Self.push([Self.bulk("subscribe"), Self.bulk("__redis__:invalidate"), .integer(1)]))
        // Beats go out and nothing answers them; once the oldest is older than the timeout, the listener closes.
        for _ in 0..<20 where channel.isActive {
            usleep(5_000)
            channel.embeddedEventLoop.advanceTime(by: .milliseconds(10))
        }
        #expect(!channel.isActive)
        _ = try? channel.finish(acceptAlreadyClosed: true)
    }
}

/// The invalidation keys a listener reported, from any thread.
final class EventLog: @unchecked Sendable {
    private let lock = NSLock()
    private var _keys: [[String]] = []
    func append(_ event: RedisInvalidationListener.Event) {
        lock.withLock { if case .invalidate(let keys) = event { _keys.append(keys) } }
    }
    var keys: [[String]] { lock.withLock { _keys } }
    private var _marked = false
    func mark() { lock.withLock { _marked = true } }
    var marked: Bool { lock.withLock { _marked } }
}
