import Atomics
import CachedProtocol
import CachedRedis
import Logging
import NIOCore

/// Serves one client connection: one JSON-RPC message per line in, one answer per line out.
///
/// Requests run concurrently and are answered as they complete (clients match answers by id). When a
/// connection has `maxInFlight` unanswered requests, reading stops until some are answered, so a
/// pipelining client is throttled by TCP-style backpressure instead of buffered without bound.
final class ClientConnectionHandler: ChannelDuplexHandler, TickFlushing {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let dispatcher: RequestDispatcher
    private let limits: DaemonConfiguration.Limits
    private let logger: Logger

    // The handler is confined to its event loop and never hands these fields out `inout` across a call
    // that could reach them again, so their accesses need no run-time exclusivity checks (callgrind
    // showed the checks at about a sixth of the instructions of a get hit).
    @exclusivity(unchecked) private var inFlight = 0
    private var readSuppressed = false
    private var inputClosed = false
    private var quiescing = false
    @exclusivity(unchecked) private var closing = false
    package var flushScheduled = false
    /// Between channelRead and channelReadComplete: answers written then go into `batchOutput`.
    @exclusivity(unchecked) private var reading = false
    /// The answers of one read batch, sent as one write and one flush at channelReadComplete.
    @exclusivity(unchecked) private var batchOutput: ByteBuffer?
    private let connectionID: ConnectionID
    /// Splits the received bytes into request lines.
    @exclusivity(unchecked) private var framer: RequestLineFramer
    /// Ids of requests being run (by sequence number), to answer them -32007 if the drain deadline passes.
    private var pendingIDs: [UInt64: [JSONRPCID]] = [:]
    private var sequence: UInt64 = 0

    private static let nextConnectionID = ManagedAtomic<UInt64>(1)

    init(dispatcher: RequestDispatcher, limits: DaemonConfiguration.Limits, logger: Logger) {
        self.dispatcher = dispatcher
        self.limits = limits
        self.logger = logger
        self.connectionID = ConnectionID(Self.nextConnectionID.loadThenWrappingIncrement(ordering: .relaxed))
        self.framer = RequestLineFramer(maxLineBytes: limits.maxLineBytes)
    }

    func channelInactive(context: ChannelHandlerContext) {
        dispatcher.connectionClosed(connectionID)
        context.fireChannelInactive()
    }

    // MARK: Inbound

    func channelReadComplete(context: ChannelHandlerContext) {
        reading = false
        sendBatch(context: context)
        context.fireChannelReadComplete()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !closing else { return }
        reading = true
        framer.append(unwrapInboundIn(data))
        while !closing {
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
            let outcome = dispatcher.run(get.params, context: RequestContext(eventLoop: context.eventLoop, connection: connectionID))
            answer(outcome, id: get.id, context: context)
            return
        }
        let message = line.withUnsafeReadableBytes {
            JSONRPCMessage.parse($0, maxDepth: limits.maxDepth, maxBatch: limits.maxBatch)
        }
        switch message {
        case .unparseable(let error):
            dispatcher.stats.protocolError()
            writeLine(context: context) { $0.writeJSONRPCError(id: .null, error) }
        case .single(.invalid(let id, let error)):
            dispatcher.stats.protocolError()
            writeLine(context: context) { $0.writeJSONRPCError(id: id, error) }
        case .single(.request(let request)):
            run(request, context: context)
        case .batch(let entries):
            runBatch(entries, context: context)
        }
    }

    private func run(_ request: JSONRPCRequest, context: ChannelHandlerContext) {
        let outcome = dispatcher.run(request, context: RequestContext(eventLoop: context.eventLoop, connection: connectionID))
        answer(outcome, id: request.id, context: context)
    }

    /// Answers a request now, or when its future completes (`id` nil: a notification, never answered).
    private func answer(_ outcome: RequestDispatcher.Outcome, id: JSONRPCID?, context: ChannelHandlerContext) {
        let future: EventLoopFuture<MethodResult>
        switch outcome {
        case .now(let result):
            if let id {
                writeLine(context: context) { $0.writeResponse(id: id, .success(result)) }
            }
            return
        case .later(let f):
            future = f
        }
        let seq = started(context: context, ids: id.map { [$0] } ?? [])
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        future.hop(to: context.eventLoop).whenComplete { result in
            let (handler, context) = loopBound.value
            if let id, handler.pendingIDs[seq] != nil {
                handler.writeLine(context: context) { $0.writeResponse(id: id, result.mapCachedError()) }
            }
            handler.finished(context: context, seq: seq)
        }
    }

    private func runBatch(_ entries: [JSONRPCEntry], context: ChannelHandlerContext) {
        var futures: [EventLoopFuture<(JSONRPCID?, Result<MethodResult, CachedError>)>] = []
        futures.reserveCapacity(entries.count)
        for entry in entries {
            switch entry {
            case .invalid(let id, let error):
                dispatcher.stats.protocolError()
                futures.append(context.eventLoop.makeSucceededFuture((id, .failure(error))))
            case .request(let request):
                futures.append(
                    dispatcher.dispatch(request, context: RequestContext(eventLoop: context.eventLoop, connection: connectionID)).hop(to: context.eventLoop)
                        .map { (request.id, .success($0)) }
                        .recover { (request.id, .failure(($0 as? CachedError) ?? CachedError(.internalError, "Internal error"))) })
            }
        }
        let ids: [JSONRPCID] = entries.compactMap {
            switch $0 {
            case .invalid(let id, _): id
            case .request(let r): r.id
            }
        }
        let seq = started(context: context, ids: ids)
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        EventLoopFuture.whenAllSucceed(futures, on: context.eventLoop).whenSuccess { answers in
            let (handler, context) = loopBound.value
            let answered = answers.compactMap { answer in answer.0.map { ($0, answer.1) } }
            if !answered.isEmpty, handler.pendingIDs[seq] != nil {  // a batch of notifications only gets no line at all
                handler.writeLine(context: context) { buffer in
                    buffer.writeInteger(UInt8(ascii: "["))
                    for (i, (id, result)) in answered.enumerated() {
                        if i > 0 { buffer.writeInteger(UInt8(ascii: ",")) }
                        buffer.writeResponse(id: id, result)
                    }
                    buffer.writeInteger(UInt8(ascii: "]"))
                }
            }
            handler.finished(context: context, seq: seq)
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
                closeNow(context: context, flushFirst: false)
                return
            }
            inputClosed = true
            closeIfIdle(context: context)
            return
        }
        if event is ChannelShouldQuiesceEvent {
            quiescing = true
            closeIfIdle(context: context)
            return
        }
        if event is DrainDeadlineEvent {
            // Shutdown's drain deadline passed: answer what is still running, then close.
            let error = CachedError(.shuttingDown, "The daemon is shutting down; the request was not completed")
            let ids = pendingIDs.values.flatMap { $0 }
            pendingIDs.removeAll()
            for id in ids {
                writeLine(context: context) { $0.writeJSONRPCError(id: id, error) }
            }
            closeNow(context: context, flushFirst: true)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if error is ByteToMessageDecoderError.PayloadTooLargeError {
            dispatcher.stats.oversizedLine()
            logger.notice("closing a connection that sent a line over the limit", metadata: ["limit": "\(limits.maxLineBytes)"])
            let error = CachedError(
                .limitExceeded, "Line longer than \(limits.maxLineBytes) bytes",
                data: .object(["limit": .string("max_line_bytes"), "value": .number(String(limits.maxLineBytes))]))
            writeLine(context: context) { $0.writeJSONRPCError(id: .null, error) }
            closeNow(context: context, flushFirst: true)
            return
        }
        // Connection reset, or bytes left without a newline at EOF: nothing to answer.
        logger.debug("connection error", metadata: ["error": "\(error)"])
        closeNow(context: context, flushFirst: false)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if !context.channel.isWritable && !closing {
            // Past the high-water mark: a client that does not read its answers is dropped rather than buffered for.
            logger.notice("closing a connection whose unread answers passed the output limit", metadata: ["limit": "\(limits.maxOutputBytes)"])
            closeNow(context: context, flushFirst: false)
        }
        context.fireChannelWritabilityChanged()
    }

    // MARK: Outbound

    func read(context: ChannelHandlerContext) {
        if inFlight >= limits.maxInFlight || quiescing || closing {
            readSuppressed = true
            return
        }
        context.read()
    }

    // MARK: Flow control

    private func started(context: ChannelHandlerContext, ids: [JSONRPCID]) -> UInt64 {
        inFlight += 1
        sequence &+= 1
        pendingIDs[sequence] = ids
        return sequence
    }

    private func finished(context: ChannelHandlerContext, seq: UInt64) {
        inFlight -= 1
        pendingIDs[seq] = nil
        if readSuppressed && inFlight < limits.maxInFlight && !quiescing && !closing {
            readSuppressed = false
            context.read()
        }
        closeIfIdle(context: context)
    }

    private func closeIfIdle(context: ChannelHandlerContext) {
        if (inputClosed || quiescing) && inFlight == 0 {
            closeNow(context: context, flushFirst: true)
        }
    }

    private func closeNow(context: ChannelHandlerContext, flushFirst: Bool) {
        guard !closing else { return }
        if flushFirst, let batch = batchOutput {
            context.write(wrapOutboundOut(batch), promise: nil)
        }
        batchOutput = nil
        closing = true
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
        guard !closing else { return }
        if reading {
            // Appended to this read batch's answers: one buffer, one write and one flush for all of them
            // (`sendBatch` checks that the channel is still active).
            var batch = batchOutput.take() ?? context.channel.allocator.buffer(capacity: 4096)
            body(&batch)
            batch.writeInteger(UInt8(ascii: "\n"))
            batchOutput = batch
            return
        }
        guard context.channel.isActive else { return }
        var buffer = context.channel.allocator.buffer(capacity: 256)
        body(&buffer)
        buffer.writeInteger(UInt8(ascii: "\n"))
        if inFlight <= 1 && !flushScheduled {
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
        guard context.channel.isActive, !closing else { return }
        context.writeAndFlush(wrapOutboundOut(batch), promise: nil)
    }
}

extension Result where Success == MethodResult {
    func mapCachedError() -> Result<MethodResult, CachedError> {
        mapError { ($0 as? CachedError) ?? CachedError(.internalError, "Internal error") }
    }
}

/// Sent to every connection when shutdown's drain deadline passes.
struct DrainDeadlineEvent: Sendable {}

/// Answers a connection over the limit with one error line, then closes it.
final class RefuseConnectionHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    let error: CachedError

    init(error: CachedError) { self.error = error }

    func channelActive(context: ChannelHandlerContext) {
        var buffer = context.channel.allocator.buffer(capacity: 128)
        buffer.writeJSONRPCError(id: .null, error)
        buffer.writeInteger(UInt8(ascii: "\n"))
        let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
        context.writeAndFlush(wrapOutboundOut(buffer)).whenComplete { _ in
            loopBound.value.close(promise: nil)
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {}
}
