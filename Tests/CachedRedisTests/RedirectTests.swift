import CachedProtocol
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOEmbedded
import Testing

@testable import CachedRedis

/// ``RedisTopology/execute(_:key:on:)`` following redirects, over embedded channels (no Redis): the
/// replies are written in by hand, in the order the commands reach each connection.
@Suite("Redirect following")
struct RedirectTests {
    /// Routes every key to `home`; answers error replies with `answer` and records what it was told.
    final class ScriptedTopology: RedisTopology {
        let home: RedisRoute?
        let answer: @Sendable (RedisErrorReply, Int) -> RedisRedirect?
        let told = NIOLockedValueBox<[RedisErrorReply]>([])

        init(home: RedisRoute?, answer: @escaping @Sendable (RedisErrorReply, Int) -> RedisRedirect?) {
            self.home = home
            self.answer = answer
        }

        func route(_ key: String, preferring eventLoop: any EventLoop) -> RedisRoute? { home }
        func errorReply(_ reply: RedisErrorReply, from node: RedisNode, attempt: Int, on eventLoop: any EventLoop) -> RedisRedirect? {
            told.withLockedValue { $0.append(reply) }
            return answer(reply, attempt)
        }
        func start() async {}
        func shutdown() async {}
        var status: RedisTopologyStatus { .cluster(.init(url: "", primaries: [], redirects: .init(), refreshes: 0, unownedSlots: 0, switches: 0)) }
    }

    let loop = EmbeddedEventLoop()

    /// A connection on an embedded channel with the real command handler; all on one loop.
    func route(_ port: Int) throws -> (RedisRoute, EmbeddedChannel) {
        let channel = EmbeddedChannel(loop: loop)
        try channel.pipeline.syncOperations.addHandler(RedisCommandHandler(commandTimeout: .seconds(5)))
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: port)).wait()
        let node = RedisNode(
            configuration: RedisConfiguration(endpoint: .tcp(host: "127.0.0.1", port: port)), group: loop, tracking: false,
            logger: Logger(label: "test")
        ) { _ in }
        let connection = RedisConnection(channel: channel, id: RedisConnection.nextID(), proof: ProofClock())
        return (RedisRoute(node: node, connection: connection), channel)
    }

    /// The commands written on `channel` so far, as their RESP text.
    func written(_ channel: EmbeddedChannel) throws -> [String] {
        loop.run()
        var commands: [String] = []
        while var buffer = try channel.readOutbound(as: ByteBuffer.self) {
            commands.append(buffer.readString(length: buffer.readableBytes)!)
        }
        return commands
    }

    func resp(_ words: String...) -> String { RedisCommand(words.map { .string($0) }).encodedString }

    @Test func movedIsResentToTheNodeItNames() throws {
        let (a, channelA) = try route(7000)
        let (b, channelB) = try route(7001)
        let topology = ScriptedTopology(home: a) { reply, _ in reply == .moved(to: .init(host: "127.0.0.1", port: 7001)) ? .resend(b, asking: false) : nil }
        let answer = topology.execute(RedisCommand("GET", "k"), key: "k", on: loop)
        try channelA.writeInbound(RedisReply.error("MOVED 3999 127.0.0.1:7001"))
        try channelB.writeInbound(RedisReply.bulk(ByteBuffer(string: "v")))
        let (reply, answeredBy) = try answer.wait()
        #expect(reply == .bulk(ByteBuffer(string: "v")))
        #expect(answeredBy.connection === b.connection)
        #expect(try written(channelB) == [resp("GET", "k")])
        #expect(topology.told.withLockedValue { $0 } == [.moved(to: .init(host: "127.0.0.1", port: 7001))])
    }

    @Test func askIsResentPrecededByAsking() throws {
        let (a, channelA) = try route(7000)
        let (b, channelB) = try route(7001)
        let topology = ScriptedTopology(home: a) { reply, _ in if case .ask = reply { .resend(b, asking: true) } else { nil } }
        let answer = topology.send(RedisCommand("SET", "k", "v"), key: "k", on: loop)
        try channelA.writeInbound(RedisReply.error("ASK 3999 127.0.0.1:7001"))
        try channelB.writeInbound(RedisReply.status("OK"))  // ASKING
        try channelB.writeInbound(RedisReply.status("OK"))  // SET
        #expect(try answer.wait() == .status("OK"))
        #expect(try written(channelB) == [resp("ASKING"), resp("SET", "k", "v")])
    }

    @Test func tryAgainRoutesAgainOnceTheBackoffEnds() throws {
        let (a, channelA) = try route(7000)
        let attempts = NIOLockedValueBox<[Int]>([])
        let topology = ScriptedTopology(home: a) { [loop] reply, attempt in
            attempts.withLockedValue { $0.append(attempt) }
            return reply == .tryAgain ? .retry(after: loop.makeSucceededVoidFuture()) : nil
        }
        let answer = topology.send(RedisCommand("GET", "k"), key: "k", on: loop)
        try channelA.writeInbound(RedisReply.error("TRYAGAIN Multiple keys request during rehashing of slot"))
        try channelA.writeInbound(RedisReply.error("TRYAGAIN Multiple keys request during rehashing of slot"))
        try channelA.writeInbound(RedisReply.null)
        #expect(try answer.wait() == .null)
        #expect(attempts.withLockedValue { $0 } == [0, 1])
        #expect(try written(channelA).count == 3)
    }

    @Test func redirectsPastTheLimitFailAsNotRunWithTheRedirectsCode() throws {
        let (a, channelA) = try route(7000)
        let topology = ScriptedTopology(home: a) { _, _ in .resend(a, asking: false) }
        let answer = topology.send(RedisCommand("GET", "k"), key: "k", on: loop)
        for _ in 0...RedisRedirect.maximum {
            try channelA.writeInbound(RedisReply.error("MOVED 3999 127.0.0.1:7000"))
        }
        let error = try #require(throws: RedisClientError.self) { try answer.wait() }
        #expect(error.code == .notRun && error.redisCode == "MOVED")
        #expect(error.message == "MOVED 3999 127.0.0.1:7000")
        // Asked for the first five; the sixth reply fails the command without asking.
        #expect(topology.told.withLockedValue { $0.count } == RedisRedirect.maximum)
        #expect(try written(channelA).count == RedisRedirect.maximum + 1)
    }

    @Test func anOtherErrorReplyFailsTypedWithItsCode() throws {
        let (a, channelA) = try route(7000)
        let topology = ScriptedTopology(home: a) { _, _ in nil }
        let answer = topology.send(RedisCommand("INCR", "k"), key: "k", on: loop)
        try channelA.writeInbound(RedisReply.error("WRONGTYPE Operation against a key holding the wrong kind of value"))
        let error = try #require(throws: RedisClientError.self) { try answer.wait() }
        #expect(error.code == .errorReply && error.redisCode == "WRONGTYPE")
        #expect(topology.told.withLockedValue { $0 } == [.other(code: "WRONGTYPE")])
    }

    @Test func noRouteAndALostConnectionFailTyped() throws {
        let nowhere = ScriptedTopology(home: nil) { _, _ in nil }
        let unavailable = try #require(throws: RedisClientError.self) { try nowhere.send(RedisCommand("GET", "k"), key: "k", on: loop).wait() }
        #expect(unavailable == .noConnection)

        let (a, channelA) = try route(7000)
        let topology = ScriptedTopology(home: a) { _, _ in nil }
        let answer = topology.send(RedisCommand("GET", "k"), key: "k", on: loop)
        try channelA.close().wait()
        let closed = try #require(throws: RedisClientError.self) { try answer.wait() }
        #expect(closed.code == .connectionClosed && closed.redisCode == nil)
    }
}

extension RedisCommand {
    var encodedString: String {
        var buffer = encoded
        return buffer.readString(length: buffer.readableBytes)!
    }
}
