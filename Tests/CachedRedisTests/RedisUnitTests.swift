import CachedRedis
import NIOCore
import NIOEmbedded
import Testing

@Suite("RESP reply decoder (hiredis)")
struct RedisReplyDecoderTests {
    @Test func decodesEveryReplyType() throws {
        let decoder = RedisReplyDecoder()
        var buffer = ByteBuffer(string: "+OK\r\n-ERR bad\r\n:42\r\n$5\r\nhe\0lo\r\n$-1\r\n*2\r\n$1\r\na\r\n*1\r\n:-7\r\n$0\r\n\r\n")
        let replies = try decoder.feed(&buffer)
        #expect(replies == [
            .status("OK"), .error("ERR bad"), .integer(42), .bulk(ByteBuffer(bytes: Array("he\0lo".utf8))), .null,
            .array([.bulk(ByteBuffer(string: "a")), .array([.integer(-7)])]), .bulk(ByteBuffer()),
        ])
        #expect(buffer.readableBytes == 0)
    }

    @Test func repliesSplitAcrossReadsAreNotLostOrStranded() throws {
        let channel = EmbeddedChannel(handler: ByteToMessageHandler(RedisReplyDecoder()))
        let wire = Array("$11\r\nhello world\r\n:1\r\n*2\r\n+a\r\n+b\r\n".utf8)
        for byte in wire {
            try channel.writeInbound(ByteBuffer(bytes: [byte]))
        }
        #expect(try channel.readInbound(as: RedisReply.self) == .bulk(ByteBuffer(string: "hello world")))
        #expect(try channel.readInbound(as: RedisReply.self) == .integer(1))
        #expect(try channel.readInbound(as: RedisReply.self) == .array([.status("a"), .status("b")]))
        #expect(try channel.readInbound(as: RedisReply.self) == nil)
        // Many replies in one read all come out at once.
        try channel.writeInbound(ByteBuffer(string: String(repeating: ":5\r\n", count: 100)))
        var count = 0
        while let reply = try channel.readInbound(as: RedisReply.self) {
            #expect(reply == .integer(5))
            count += 1
        }
        #expect(count == 100)
        _ = try channel.finish()
    }

    @Test func corruptStreamIsAnError() {
        let decoder = RedisReplyDecoder()
        var buffer = ByteBuffer(string: "?what\r\n")
        #expect(throws: RedisClientError.self) { try decoder.feed(&buffer) }
    }

    @Test func commandEncoding() {
        let command = RedisCommand("SET", "k", .bytes(ByteBuffer(bytes: [0, 0xFF])), "PX", "1500")
        #expect(command.encoded == ByteBuffer(bytes: Array("*5\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\n".utf8) + [0, 0xFF] + Array("\r\n$2\r\nPX\r\n$4\r\n1500\r\n".utf8)))
    }
}

@Suite("Command pipeline state machine")
struct RedisCommandStateMachineTests {
    @Test func repliesCompleteCommandsInOrder() {
        var machine = RedisCommandStateMachine<Int>()
        let later = NIODeadline.now() + .seconds(10)
        for i in 1...3 {
            guard case .write = machine.send(i, deadline: later) else { Issue.record("expected write"); return }
        }
        #expect(machine.pendingCount == 3)
        for i in 1...3 {
            guard case .succeed(let p, _) = machine.receive() else { Issue.record("expected succeed"); return }
            #expect(p == i)
        }
        guard case .failAllAndClose(let rest, let error) = machine.receive() else { Issue.record("unexpected reply must close"); return }
        #expect(rest.isEmpty)
        #expect(error.code == .protocolError)
        guard case .fail = machine.send(4, deadline: later) else { Issue.record("closed must fail"); return }
    }

    @Test func timeoutFailsEverythingInFlightAndCloses() {
        var machine = RedisCommandStateMachine<Int>()
        let now = NIODeadline.now()
        _ = machine.send(1, deadline: now + .milliseconds(10))
        _ = machine.send(2, deadline: now + .seconds(10))
        guard case .none = machine.checkTimeouts(now: now) else { Issue.record("not yet"); return }
        guard case .failAllAndClose(let failed, let error) = machine.checkTimeouts(now: now + .milliseconds(11)) else {
            Issue.record("expected timeout")
            return
        }
        #expect(failed == [1, 2])
        #expect(error.code == .timeout)
        guard case .ignore = machine.receive() else { Issue.record("late reply must be dropped"); return }
    }

    @Test func closeFailsPending() {
        var machine = RedisCommandStateMachine<Int>()
        _ = machine.send(1, deadline: .now() + .seconds(1))
        let (failed, error) = machine.close(RedisClientError(.connectionClosed, "gone"))
        #expect(failed == [1])
        #expect(error.code == .connectionClosed)
        #expect(machine.close(RedisClientError(.connectionClosed, "again")).0.isEmpty)
    }
}

@Suite("Redis URLs")
struct RedisURLTests {
    @Test func parses() throws {
        let a = try RedisConfiguration(url: "redis://127.0.0.1:6380/2")
        #expect(a.endpoint == .tcp(host: "127.0.0.1", port: 6380))
        #expect(a.database == 2)
        #expect(a.password == nil)
        let b = try RedisConfiguration(url: "redis://:p%40ss@localhost")
        #expect(b.endpoint == .tcp(host: "localhost", port: 6379))
        #expect(b.password == "p@ss")
        let c = try RedisConfiguration(url: "redis://user:pw@[::1]:7000/0")
        #expect(c.endpoint == .tcp(host: "::1", port: 7000))
        #expect(c.username == "user")
        let d = try RedisConfiguration(url: "unix:///run/redis.sock?db=4&password=x")
        #expect(d.endpoint == .unix(path: "/run/redis.sock"))
        #expect(d.database == 4)
        #expect(d.password == "x")
        #expect(!d.redactedDescription.contains("x?") && d.redactedDescription.hasPrefix("unix://"))
        #expect(!b.redactedDescription.contains("p@ss"))
        #expect(a.tls == nil && d.tls == nil)
        let e = try RedisConfiguration(url: "rediss://:secret@cache.internal:6380/1")
        #expect(e.endpoint == .tcp(host: "cache.internal", port: 6380))
        #expect(e.tls == RedisConfiguration.TLS())
        #expect(e.database == 1 && e.password == "secret")
        #expect(e.redactedDescription == "rediss://:***@cache.internal:6380/1")
    }

    @Test(arguments: ["http://x", "redis://host:notaport", "redis://host:70000", "unix://relative.sock", "unix:///a?db=x", "redis://h/db", "redis://", "rediss://", "redisss://h"])
    func rejects(_ url: String) {
        #expect(throws: RedisURLError.self) { try RedisConfiguration(url: url) }
    }
}
