import Atomics
import CachedProtocol
import CachedRedis
import Logging
import NIOCore

/// Serves one client connection: one JSON-RPC message per line in, one answer per line out.
///
/// Requests run concurrently and are answered as they complete (clients match answers by id). When a
/// connection has `maxInFlight` unanswered requests, reading stops until some are answered, so a
/// pipelining client is throttled by TCP-style backpressure instead of buffered without bound. Those
/// decisions, and when the connection closes, are ``ClientConnectionStateMachine``'s; this type does the I/O.
final class ClientConnectionHandler: ChannelDuplexHandler, TickFlushing {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let dispatcher: RequestDispatcher
    private let limits: DaemonConfiguration.Limits
    private let logger: Logger
    /// `[limits] request_timeout` in seconds (0: no deadline for a request that names none).
    private let defaultTimeout: Double

    // The handler is confined to its event loop and never hands these fields out `inout` across a call
    // that could reach them again, so their accesses need no run-time exclusivity checks (callgrind
    // showed the checks at about a sixth of the instructions of a get hit).
    @exclusivity(unchecked) private var machine: ClientConnectionStateMachine
    package var flushScheduled = false
    /// Between channelRead and channelReadComplete: answers written then go into `batchOutput`.
    @exclusivity(unchecked) private var reading = false
    /// The answers of one read batch, sent as one write and one flush at channelReadComplete.
    @exclusivity(unchecked) private var batchOutput: ByteBuffer?
    private let connectionID: ConnectionID
    /// This connection's event loop's counters (set when the handler is added).
    private var stats: Stats.Shard
    /// When the current read batch began: every request read in it is timed from there.
    @exclusivity(unchecked) private var batchStart = NIODeadline.uptimeNanoseconds(0)
    /// Gets of this read batch answered from memory, timed together when the batch is sent.
    @exclusivity(unchecked) private var memoryAnswers = 0
    /// Splits the received bytes into request lines.
    @exclusivity(unchecked) private var framer: RequestLineFramer

    private static let nextConnectionID = ManagedAtomic<UInt64>(1)

    /// Where this loop's answer buffer comes from (nil: the connection keeps its own).
    private let answerBuffers: LoopAnswerBuffers?
    /// The buffer a read batch's answers are written into, shared with the loop's other connections.
    private var answerBuffer: LoopAnswerBuffer?
    /// What the daemon's client tracking needs of this connection (set when the handler is added).
    private var control: ConnectionControl?

    /// The peer, from `SO_PEERCRED` at accept (nil: unknown).
    private let peer: PeerCredentials?

    init(
        dispatcher: RequestDispatcher, limits: DaemonConfiguration.Limits, logger: Logger, answerBuffers: LoopAnswerBuffers? = nil,
        peer: PeerCredentials? = nil
    ) {
        self.dispatcher = dispatcher
        self.peer = peer
        self.answerBuffers = answerBuffers
        self.limits = limits
        self.logger = logger
        self.connectionID = ConnectionID(Self.nextConnectionID.loadThenWrappingIncrement(ordering: .relaxed))
        self.framer = RequestLineFramer(maxLineBytes: limits.maxLineBytes)
        self.machine = ClientConnectionStateMachine(maxInFlight: limits.maxInFlight)
        self.stats = dispatcher.stats.common
        self.defaultTimeout = Double(limits.requestTimeout.components.seconds) + Double(limits.requestTimeout.components.attoseconds) / 1e18
    }

    func handlerAdded(context: ChannelHandlerContext) {
        stats = dispatcher.stats.shard(for: context.eventLoop)
        answerBuffer = answerBuffers?.of(context.eventLoop) ?? LoopAnswerBuffer(eventLoop: context.eventLoop)
        control = ConnectionControl(
            id: connectionID, channel: context.channel,
            access: ConnectionAccess(peer: peer, control: dispatcher.access, eventLoop: context.eventLoop))
    }

    /// `timeout`: the request's own (seconds), nil for `[limits] request_timeout`. The deadline counts from
    /// when the request's read batch began.
    @inline(__always)
    private func requestContext(_ context: ChannelHandlerContext, timeout: Double?) -> RequestContext {
        let seconds = timeout ?? defaultTimeout
        return RequestContext(
            eventLoop: context.eventLoop, connection: connectionID, stats: stats, control: control,
            deadline: seconds > 0 ? RequestDeadline(from: batchStart, seconds: seconds) : nil)
    }

    /// The `timeout` a request names; nil when it names none (or an invalid one: its params are refused).
    private func timeout(of request: JSONRPCRequest) -> Double? {
        try? RequestTimeout.read(request.params, method: request.method)
    }

    func channelInactive(context: ChannelHandlerContext) {
        dispatcher.connectionClosed(connectionID, on: context.eventLoop)
        context.fireChannelInactive()
    }

    // MARK: Inbound

    func channelReadComplete(context: ChannelHandlerContext) {
        reading = false
        if memoryAnswers > 0 {
            // One clock read per batch: each answer is timed from the batch's read to its write.
            stats.observe(method: "get", source: .memory, nanoseconds: (NIODeadline.now() - batchStart).nanoseconds, times: memoryAnswers)
            memoryAnswers = 0
        }
        sendBatch(context: context)
        context.fireChannelReadComplete()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !machine.isClosing else { return }
        if !reading {
            reading = true
            batchStart = .now()
        }
        framer.append(unwrapInboundIn(data))
        while !machine.isClosing {
            switch framer.next() {
            case .line(let line):
                handleLine(line, context: context)
            case .needMore:
                return
            case .tooLong:
                errorCaught(context: context, error: ByteToMessageDecoderError.PayloadTooLargeError())
                return
            }
        }
    }

    private func handleLine(_ line: ByteBuffer, context: ChannelHandlerContext) {
        // The hot path: a `get` in its common shape, read without a JSON tree (anything else returns nil).
        if let get = line.withUnsafeReadableBytes({ FastGetRequest.parse($0) }) {
            let requestContext = requestContext(context, timeout: get.timeout)
            let outcome = dispatcher.run(get.params, context: requestContext)
            answer(outcome, id: get.id, method: "get", context: context)
            return
        }
        let message = line.withUnsafeReadableBytes {
            JSONRPCMessage.parse($0, maxDepth: limits.maxDepth, maxBatch: limits.maxBatch)
        }
        switch message {
        case .unparseable(let error):
            stats.protocolError()
            writeLine(context: context) { $0.writeJSONRPCError(id: .null, error) }
        case .single(.invalid(let id, let error)):
            stats.protocolError()
            writeLine(context: context) { $0.writeJSONRPCError(id: id, error) }
        case .single(.request(let request)):
            run(request, context: context)
        case .batch(let entries):
            runBatch(entries, context: context)
        }
    }

    private func run(_ request: JSONRPCRequest, context: ChannelHandlerContext) {
        let outcome = dispatcher.run(request, context: requestContext(context, timeout: timeout(of: request)))
        answer(outcome, id: request.id, method: request.method, context: context)
    }

    /// Answers a request now, or when its future completes (`id` nil: a notification, never answered).
    private func answer(_ outcome: RequestDispatcher.Completion, id: JSONRPCID?, method: String, context: ChannelHandlerContext) {
        let future: EventLoopFuture<MethodResult>
        switch outcome {
        case .now(let result):
            memoryAnswers += 1
            if let id {
                writeLine(context: context) { $0.writeResponse(id: id, .success(result)) }
            }
            return
        case .later(let f):
            future = f
        }
        let seq = started(context: context, ids: id.map { [$0] } ?? [])
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        let start = batchStart
        future.hop(to: context.eventLoop).whenComplete { result in
            let (handler, context) = loopBound.value
            let result = result.mapCachedError()
            handler.stats.observe(method: method, source: Stats.Source(result), nanoseconds: (NIODeadline.now() - start).nanoseconds)
            handler.finished(context: context, seq: seq) { handler in
                if let id { handler.writeLine(context: context) { $0.writeResponse(id: id, result) } }
            }
        }
    }

    private func runBatch(_ entries: [JSONRPCEntry], context: ChannelHandlerContext) {
        var futures: [EventLoopFuture<(JSONRPCID?, Result<MethodResult, CachedError>)>] = []
        futures.reserveCapacity(entries.count)
        for entry in entries {
            switch entry {
            case .invalid(let id, let error):
                stats.protocolError()
                futures.append(context.eventLoop.makeSucceededFuture((id, .failure(error))))
            case .request(let request):
                futures.append(
                    dispatcher.dispatch(request, context: requestContext(context, timeout: timeout(of: request))).hop(to: context.eventLoop)
                        .map { (request.id, .success($0)) }
                        .recover { (request.id, .failure(CachedError(failure: $0))) })
            }
        }
        let ids: [JSONRPCID] = entries.compactMap {
            switch $0 {
            case .invalid(let id, _): id
            case .request(let r): r.id
            }
        }
        let methods: [String?] = entries.map {
            if case .request(let r) = $0 { r.method } else { nil }
        }
        let seq = started(context: context, ids: ids)
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        let start = batchStart
        EventLoopFuture.whenAllSucceed(futures, on: context.eventLoop).whenSuccess { answers in
            let (handler, context) = loopBound.value
            let elapsed = (NIODeadline.now() - start).nanoseconds
            for (method, answer) in zip(methods, answers) {
                if let method { handler.stats.observe(method: method, source: Stats.Source(answer.1), nanoseconds: elapsed) }
            }
            let answered = answers.compactMap { answer in answer.0.map { ($0, answer.1) } }
            handler.finished(context: context, seq: seq) { handler in
                guard !answered.isEmpty else { return }  // a batch of notifications only gets no line at all
                handler.writeLine(context: context) { buffer in
                    buffer.writeInteger(UInt8(ascii: "["))
                    for (i, (id, result)) in answered.enumerated() {
                        if i > 0 { buffer.writeInteger(UInt8(ascii: ",")) }
                        buffer.writeResponse(id: id, result)
                    }
                    buffer.writeInteger(UInt8(ascii: "]"))
                }
            }
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed {
            // The client half-closed: answer what is in flight, then close; bytes left without a newline
            // are not a request: nothing to answer, the connection closes.
            reading = false
            sendBatch(context: context)
            if framer.unterminatedBytes > 0 {
                logger.debug("connection closed in the middle of a line", metadata: ["bytes": "\(framer.unterminatedBytes)"])
            }
            perform(machine.inputClosed(unterminatedBytes: framer.unterminatedBytes > 0), context: context)
            return
        }
        if event is ChannelShouldQuiesceEvent {
            perform(machine.quiesce(), context: context)
            return
        }
        if event is DrainDeadlineEvent {
            // Shutdown's drain deadline passed: answer what is still running, then close.
            let error = CachedError(.shuttingDown, "The daemon is shutting down; the request was not completed")
            let (ids, action) = machine.drainDeadline()
            if !ids.isEmpty, context.channel.isActive {
                var buffer = context.channel.allocator.buffer(capacity: 128 * ids.count)
                for id in ids {
                    buffer.writeJSONRPCError(id: id, error)
                    buffer.writeInteger(UInt8(ascii: "\n"))
                }
                context.write(wrapOutboundOut(buffer), promise: nil)
            }
            perform(action, context: context)  // closes after flushing these answers
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if error is ByteToMessageDecoderError.PayloadTooLargeError {
            stats.oversizedLine()
            logger.notice("closing a connection that sent a line over the limit", metadata: ["limit": "\(limits.maxLineBytes)"])
            let error = CachedError.lineTooLong(maxLineBytes: limits.maxLineBytes)
            writeLine(context: context) { $0.writeJSONRPCError(id: .null, error) }
            perform(machine.fail(flushFirst: true), context: context)
            return
        }
        // Connection reset, or bytes left without a newline at EOF: nothing to answer.
        logger.debug("connection error", metadata: ["error": "\(error)"])
        perform(machine.fail(flushFirst: false), context: context)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if !context.channel.isWritable && !machine.isClosing {
            // Past the high-water mark: a client that does not read its answers is dropped rather than buffered for.
            logger.notice("closing a connection whose unread answers passed the output limit", metadata: ["limit": "\(limits.maxOutputBytes)"])
            perform(machine.fail(flushFirst: false), context: context)
        }
        context.fireChannelWritabilityChanged()
    }

    // MARK: Outbound

    func read(context: ChannelHandlerContext) {
        if machine.readRequested() { context.read() }
    }

    // MARK: Flow control

    private func started(context: ChannelHandlerContext, ids: [JSONRPCID]) -> UInt64 {
        machine.requestStarted(ids: ids)
    }

    /// A request ended: `answer` writes its answer unless the drain deadline answered it already; then
    /// the state machine says whether reading resumes or the connection closes.
    private func finished(context: ChannelHandlerContext, seq: UInt64, answer: (ClientConnectionHandler) -> Void) {
        if machine.answerReady(seq) { answer(self) }
        perform(machine.requestFinished(), context: context)
    }

    private func perform(_ action: ClientConnectionStateMachine.Action, context: ChannelHandlerContext) {
        switch action {
        case .none: break
        case .read: context.read()
        case .close(let flushFirst): close(context: context, flushFirst: flushFirst)
        }
    }

    /// Closes the connection (the state machine is already closing: nothing more is written).
    private func close(context: ChannelHandlerContext, flushFirst: Bool) {
        if flushFirst, let batch = batchOutput {
            context.write(wrapOutboundOut(batch), promise: nil)
        }
        batchOutput = nil
        if flushFirst {
            let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
            context.writeAndFlush(wrapOutboundOut(context.channel.allocator.buffer(capacity: 0))).whenComplete { _ in
                loopBound.value.close(promise: nil)
            }
        } else {
            context.close(promise: nil)
        }
    }

    private func writeLine(context: ChannelHandlerContext, _ body: (inout ByteBuffer) -> Void) {
        guard !machine.isClosing else { return }
        if reading {
            // Appended to this read batch's answers: one buffer, one write and one flush for all of them
            // (`sendBatch` checks that the channel is still active).
            var batch = batchOutput.take() ?? answerBuffer?.take(context.channel.allocator) ?? context.channel.allocator.buffer(capacity: 4096)
            body(&batch)
            batch.writeInteger(UInt8(ascii: "\n"))
            batchOutput = batch
            return
        }
        guard context.channel.isActive else { return }
        var buffer = context.channel.allocator.buffer(capacity: 256)
        body(&buffer)
        buffer.writeInteger(UInt8(ascii: "\n"))
        if machine.inFlight <= 1 && !flushScheduled {
            // The connection's only request: no other answer can join this flush, so send it now (a fill
            // answering a thousand waiters then starts delivering at the first, not after the last).
            context.writeAndFlush(wrapOutboundOut(buffer), promise: nil)
            return
        }
        context.write(wrapOutboundOut(buffer), promise: nil)
        scheduleFlush(context: context)
    }

    /// Writes and flushes the answers gathered during a read batch.
    private func sendBatch(context: ChannelHandlerContext) {
        guard let batch = batchOutput else { return }
        batchOutput = nil
        guard context.channel.isActive, !machine.isClosing else { return }
        context.writeAndFlush(wrapOutboundOut(batch), promise: nil)
        answerBuffer?.giveBack(batch)
    }
}

extension Result where Success == MethodResult {
    func mapCachedError() -> Result<MethodResult, CachedError> {
        mapError { CachedError(failure: $0) }
    }
}
