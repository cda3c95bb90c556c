import CachedProtocol
import NIOCore

/// A command on its way to Redis, with the promise its reply completes.
public struct RedisRequest: Sendable {
    public var command: RedisCommand
    public var promise: EventLoopPromise<RedisReply>
    public init(command: RedisCommand, promise: EventLoopPromise<RedisReply>) {
        self.command = command
        self.promise = promise
    }
}

/// Matches replies to commands in FIFO order, flushes once per event-loop tick, and enforces the
/// command timeout. All decisions are made by ``RedisCommandStateMachine``.
///
/// Every reply advances the connection's ``ProofClock`` to its command's send instant. With a heartbeat,
/// a `PING` is sent on every beat that finds nothing sent since the previous one, so the proof is never
/// older than two beats and a round trip on a healthy connection; a beat left unanswered past the command
/// timeout closes the connection like any other command would.
public final class RedisCommandHandler: ChannelDuplexHandler, RemovableChannelHandler, TickFlushing {
    public typealias InboundIn = RedisReply
    public typealias OutboundIn = RedisRequest
    public typealias OutboundOut = ByteBuffer

    private var stateMachine = RedisCommandStateMachine<EventLoopPromise<RedisReply>>()
    private let commandTimeout: TimeAmount
    /// Round trips, error replies and timeouts of the node this connection belongs to.
    private let metrics: RedisNodeMetrics?
    package var flushScheduled = false
    /// Set for the oldest command's deadline while commands wait; a timer that finds the oldest command
    /// answered is set again for the next one (no polling).
    private var timeoutTask: Scheduled<Void>?
    /// Advanced by each reply to its command's send instant.
    private let proof: ProofClock?
    private let heartbeat: TimeAmount?
    private var heartbeatTask: RepeatedTask?
    /// Whether a command was written since the last beat.
    private var sentSinceBeat = false
    /// Beats since the last `PING` of a connection that vouches for nothing.
    private var quietBeats = 0
    /// A connection that vouches for no entry beats only this often, to keep middleboxes from forgetting its
    /// flow (an AWS NLB forgets one after 350 s idle, GCP after 600 s).
    static let keepAliveInterval = TimeAmount.seconds(30)

    public init(commandTimeout: TimeAmount, metrics: RedisNodeMetrics? = nil, proof: ProofClock? = nil, heartbeat: TimeAmount? = nil) {
        self.commandTimeout = commandTimeout
        self.metrics = metrics
        self.proof = proof
        self.heartbeat = heartbeat
    }

    // MARK: Lifecycle

    public func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { startHeartbeat(context: context) }
    }

    public func channelActive(context: ChannelHandlerContext) {
        startHeartbeat(context: context)
        context.fireChannelActive()
    }

    public func handlerRemoved(context: ChannelHandlerContext) {
        heartbeatTask?.cancel()
        heartbeatTask = nil
    }

    private func startHeartbeat(context: ChannelHandlerContext) {
        guard let heartbeat, heartbeatTask == nil else { return }
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        heartbeatTask = context.eventLoop.scheduleRepeatedTask(initialDelay: heartbeat, delay: heartbeat) { _ in
            let (handler, context) = loopBound.value
            handler.beat(context: context)
        }
    }

    /// A beat: a `PING` unless something else was sent since the last one (and, on a connection that
    /// vouches for no entry, only every ``keepAliveInterval``).
    private func beat(context: ChannelHandlerContext) {
        guard context.channel.isActive, let heartbeat else { return }
        if sentSinceBeat {
            sentSinceBeat = false
            quietBeats = 0
            return
        }
        if let proof, !proof.isVouching {
            quietBeats += 1
            guard quietBeats >= max(1, Int(Self.keepAliveInterval.nanoseconds / max(1, heartbeat.nanoseconds))) else { return }
        }
        quietBeats = 0
        let promise = context.eventLoop.makePromise(of: RedisReply.self)
        promise.futureResult.whenFailure { _ in }  // a lost beat closes the connection; nothing else to do
        send(RedisRequest(command: RedisCommand("PING"), promise: promise), context: context)
        sentSinceBeat = false
    }

    public func channelInactive(context: ChannelHandlerContext) {
        heartbeatTask?.cancel()
        heartbeatTask = nil
        timeoutTask?.cancel()
        timeoutTask = nil
        let (promises, error) = stateMachine.close(RedisClientError(.connectionClosed, "the connection to Redis closed before it answered; the outcome is unknown"))
        for promise in promises { promise.fail(error) }
        context.fireChannelInactive()
    }

    public func errorCaught(context: ChannelHandlerContext, error: any Error) {
        let clientError = (error as? RedisClientError) ?? RedisClientError(.connectionClosed, "connection to Redis failed: \(error)")
        let (promises, failure) = stateMachine.close(clientError)
        for promise in promises { promise.fail(failure) }
        context.close(promise: nil)
    }

    private func armTimer(context: ChannelHandlerContext) {
        guard timeoutTask == nil, let deadline = stateMachine.oldestDeadline else { return }
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        timeoutTask = context.eventLoop.scheduleTask(deadline: deadline) {
            let (handler, context) = loopBound.value
            handler.timeoutTask = nil
            handler.checkTimeouts(context: context)
        }
    }

    private func checkTimeouts(context: ChannelHandlerContext) {
        switch stateMachine.checkTimeouts(now: .now()) {
        case .none:
            armTimer(context: context)  // the oldest command was answered: wait for the next one's deadline
        case .failAllAndClose(let promises, let error):
            metrics?.timedOut(promises.count)
            for promise in promises { promise.fail(error) }
            context.close(promise: nil)
        }
    }

    // MARK: Outbound

    public func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        // The reply promise now belongs to the state machine; the write promise only says "taken".
        promise?.succeed()
        send(unwrapOutboundIn(data), context: context)
    }

    private func send(_ request: RedisRequest, context: ChannelHandlerContext) {
        sentSinceBeat = true
        switch stateMachine.send(request.promise, deadline: .now() + commandTimeout) {
        case .write:
            context.write(wrapOutboundOut(request.command.encoded), promise: nil)
            scheduleFlush(context: context)
            armTimer(context: context)
        case .fail(let error):
            request.promise.fail(error)
        }
    }

    // MARK: Inbound

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let reply = unwrapInboundIn(data)
        switch stateMachine.receive() {
        case .succeed(let promise, let deadline):
            // Sent at its deadline less the timeout (no clock read).
            proof?.prove(sentAt: deadline - commandTimeout)
            if let metrics {
                // Sent at its deadline less the timeout: one clock read per reply.
                let isError: Bool
                if case .error = reply { isError = true } else { isError = false }
                metrics.reply(roundTrip: NIODeadline.now() - (deadline - commandTimeout), isError: isError)
            }
            promise.succeed(reply)
        case .failAllAndClose(let promises, let error):
            for promise in promises { promise.fail(error) }
            context.close(promise: nil)
        case .ignore:
            break
        }
    }
}
