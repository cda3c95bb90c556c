@testable import CachedCore
import CachedProtocol
import CachedTestSupport
import Logging
import NIOCore
import NIOEmbedded
import NIOExtras
import Testing

@Suite("Client connection state machine")
struct ClientConnectionStateMachineTests {
    @Test func readingStopsAtTheLimitAndResumesWhenAnAnswerGoesOut() {
        var m = ClientConnectionStateMachine(maxInFlight: 2)
        let r1 = m.readRequested()
        #expect(r1)
        let a = m.requestStarted(ids: [.number("1")])
        let b = m.requestStarted(ids: [.number("2")])
        let r2 = m.readRequested()
        #expect(!r2)
        #expect(m.readHeldBack)
        let r3a = m.answerReady(a)
        let r3 = m.requestFinished()
        #expect(r3a == true && r3 == .read)
        let r4a = m.answerReady(b)
        let r4 = m.requestFinished()
        #expect(r4a == true && r4 == .none)
        #expect(m.inFlight == 0)
    }

    @Test func halfCloseAnswersWhatIsInFlightThenCloses() {
        var m = ClientConnectionStateMachine(maxInFlight: 8)
        let a = m.requestStarted(ids: [.number("1")])
        let r5 = m.inputClosed(unterminatedBytes: false)
        #expect(r5 == .none)
        #expect(m.state == .inputClosed)
        let r6a = m.answerReady(a)
        let r6 = m.requestFinished()
        #expect(r6a == true && r6 == .close(flushFirst: true))
        #expect(m.isClosing)
        // Bytes without a newline at the end are no request: close at once.
        var n = ClientConnectionStateMachine(maxInFlight: 8)
        _ = n.requestStarted(ids: [])
        let r7 = n.inputClosed(unterminatedBytes: true)
        #expect(r7 == .close(flushFirst: false))
    }

    @Test func quiescingStopsReadingAndClosesWhenIdle() {
        var m = ClientConnectionStateMachine(maxInFlight: 8)
        let a = m.requestStarted(ids: [.number("1")])
        let r8 = m.quiesce()
        #expect(r8 == .none)
        let r9 = m.readRequested()
        #expect(!r9)
        let r10a = m.answerReady(a)
        let r10 = m.requestFinished()
        #expect(r10a == true && r10 == .close(flushFirst: true))
        var idle = ClientConnectionStateMachine(maxInFlight: 8)
        let r11 = idle.quiesce()
        #expect(r11 == .close(flushFirst: true))
        let r12 = idle.quiesce()
        #expect(r12 == .none)
    }

    @Test func theDrainDeadlineAnswersEveryRequestInFlightOnce() {
        var m = ClientConnectionStateMachine(maxInFlight: 8)
        let a = m.requestStarted(ids: [.number("1")])
        _ = m.requestStarted(ids: [.string("b1"), .string("b2")])  // a batch
        _ = m.requestStarted(ids: [])  // a notification
        let (ids, action) = m.drainDeadline()
        #expect(ids == [.number("1"), .string("b1"), .string("b2")])
        #expect(action == .close(flushFirst: true))
        // A request completing afterwards is not answered a second time.
        let r13a = m.answerReady(a)
        let r13 = m.requestFinished()
        #expect(r13a == false && r13 == .none)
        let r14 = m.drainDeadline()
        #expect(r14.unanswered.isEmpty)
    }

    @Test func aFatalErrorClosesOnce() {
        var m = ClientConnectionStateMachine(maxInFlight: 8)
        let r15 = m.fail(flushFirst: false)
        #expect(r15 == .close(flushFirst: false))
        let r16 = m.fail(flushFirst: true)
        #expect(r16 == .none)
        let r17 = m.readRequested()
        #expect(!r17)
        let r18 = m.inputClosed(unterminatedBytes: false)
        #expect(r18 == .none)
    }
}

/// The handler's flow control on an in-memory channel: requests that stay in flight are `get`s parked
/// behind another connection's lease (embedded store, no handler), answered when the holder `set`s.
@Suite("Client connection flow control (EmbeddedChannel)")
struct ClientConnectionFlowTests {
    /// Counts the reads that reach the channel (the handler holds them back under backpressure).
    final class ReadCounter: ChannelOutboundHandler {
        typealias OutboundIn = ByteBuffer
        var reads = 0
        func read(context: ChannelHandlerContext) {
            reads += 1
            context.read()
        }
    }

    struct Fixture {
        let loop = EmbeddedEventLoop()
        let dispatcher = RequestDispatcher(
            store: EmbeddedStore(maxBytes: 1 << 20), configuration: DaemonConfiguration(), logger: Logger(label: "test"))

        func channel(maxInFlight: Int = 256) throws -> (EmbeddedChannel, ReadCounter) {
            var limits = DaemonConfiguration.Limits()
            limits.maxInFlight = maxInFlight
            let counter = ReadCounter()
            let channel = EmbeddedChannel(loop: loop)
            try channel.pipeline.syncOperations.addHandlers([
                counter, ClientConnectionHandler(dispatcher: dispatcher, limits: limits, logger: Logger(label: "test")),
            ])
            try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
            return (channel, counter)
        }
    }

    static func get(_ id: Int) -> String {
        #"{"jsonrpc":"2.0","id":\#(id),"method":"get","params":{"key":"Student","identity":1}}"# + "\n"
    }

    func lines(_ channel: EmbeddedChannel) throws -> [String] { try channel.answerLines() }

    /// The holder takes the lease; returns its token.
    func takeLease(_ holder: EmbeddedChannel) throws -> String {
        try holder.writeInbound(ByteBuffer(string: Self.get(0)))
        let answer = try #require(try lines(holder).first)
        let token = try #require(answer.split(separator: "\"lease\":\"").last?.split(separator: "\"").first)
        return String(token)
    }

    func fill(_ holder: EmbeddedChannel, token: String) throws {
        try holder.writeInbound(ByteBuffer(string:
            #"{"jsonrpc":"2.0","id":99,"method":"set","params":{"key":"Student","identity":1,"value":"v","lease":"\#(token)"}}"# + "\n"))
    }

    @Test func readingStopsAtMaxInFlightAndResumesWhenAnswersGoOut() throws {
        let f = Fixture()
        let (holder, _) = try f.channel()
        let token = try takeLease(holder)
        let (waiter, reads) = try f.channel(maxInFlight: 2)
        try waiter.writeInbound(ByteBuffer(string: Self.get(1) + Self.get(2)))
        #expect(try lines(waiter).isEmpty)  // both parked behind the lease
        let before = reads.reads
        waiter.read()
        #expect(reads.reads == before, "at max_in_flight the read is held back")
        try fill(holder, token: token)
        let answers = try lines(waiter)
        #expect(answers.count == 2 && answers.allSatisfy { $0.contains("\"value\":\"v\"") })
        #expect(reads.reads == before + 1, "the held-back read goes on once answers went out")
        waiter.read()
        #expect(reads.reads == before + 2)
    }

    @Test func aHalfClosedConnectionIsAnsweredThenClosed() throws {
        let f = Fixture()
        let (holder, _) = try f.channel()
        let token = try takeLease(holder)
        let (waiter, _) = try f.channel()
        try waiter.writeInbound(ByteBuffer(string: Self.get(1)))
        waiter.pipeline.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        f.loop.run()
        #expect(waiter.isActive, "still open: a request is in flight")
        try fill(holder, token: token)
        #expect(try lines(waiter).count == 1)
        #expect(!waiter.isActive)
    }

    @Test func quiescingStopsReadingAndClosesOnceIdle() throws {
        let f = Fixture()
        let (holder, _) = try f.channel()
        let token = try takeLease(holder)
        let (waiter, reads) = try f.channel()
        try waiter.writeInbound(ByteBuffer(string: Self.get(1)))
        waiter.pipeline.fireUserInboundEventTriggered(ChannelShouldQuiesceEvent())
        f.loop.run()
        let before = reads.reads
        waiter.read()
        #expect(reads.reads == before, "a quiescing connection reads nothing more")
        #expect(waiter.isActive)
        try fill(holder, token: token)
        #expect(try lines(waiter).count == 1)
        #expect(!waiter.isActive)
    }

    @Test func theDrainDeadlineAnswersWhatIsStillRunningAndCloses() throws {
        let f = Fixture()
        let (holder, _) = try f.channel()
        _ = try takeLease(holder)
        let (waiter, _) = try f.channel()
        try waiter.writeInbound(ByteBuffer(string: Self.get(1) + "[" + Self.get(2).dropLast() + "]\n"))
        #expect(try lines(waiter).isEmpty)
        waiter.pipeline.fireUserInboundEventTriggered(DrainDeadlineEvent())
        let answers = try lines(waiter)
        #expect(answers.count == 2)
        #expect(answers.allSatisfy { $0.contains("-32007") })
        #expect(!waiter.isActive)
    }
}

extension EmbeddedChannel {
    /// Runs what is scheduled, then every line written so far.
    func answerLines() throws -> [String] {
        embeddedEventLoop.run()
        var out: [String] = []
        while let b = try readOutbound(as: ByteBuffer.self) {
            out += String(buffer: b).split(separator: "\n").map(String.init)
        }
        return out
    }
}
