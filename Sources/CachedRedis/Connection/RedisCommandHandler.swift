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

    public init(commandTimeout: TimeAmount, metrics: RedisNodeMetrics? = nil) {
        self.commandTimeout = commandTimeout
        self.metrics = metrics
    }

    // MARK: Lifecycle

    public func channelInactive(context: ChannelHandlerContext) {
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
        let request = unwrapOutboundIn(data)
        // The reply promise now belongs to the state machine; the write promise only says "taken".
        promise?.succeed()
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
