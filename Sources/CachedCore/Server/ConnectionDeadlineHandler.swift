import CachedProtocol
import Logging
import NIOCore

/// Closes connections that hold the daemon's resources without using them:
/// - a request line that is not completed within `lineTimeout` of its first byte (a client trickling
///   bytes), answered with one -32001 line, then closed;
/// - a connection with nothing received and nothing in flight for `idleTimeout`, closed silently.
///
/// It sits before ``ClientConnectionHandler`` and sees the raw bytes.
final class ConnectionDeadlineHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let lineTimeout: TimeAmount?
    private let idleTimeout: TimeAmount?
    private let logger: Logger
    private var partialSince: NIODeadline?
    private var lastActivity = NIODeadline.now()
    /// One timer, set for the earliest deadline; reads and writes only move timestamps, and a timer
    /// that finds its deadline moved is set again for the new one (no polling).
    private var timer: Scheduled<Void>?
    private var timerDeadline: NIODeadline?
    private var done = false

    /// - Parameters:
    ///   - lineTimeout: how long a request line may take from its first byte to its newline.
    ///   - idleTimeout: how long a connection may go with nothing read or written.
    init(lineTimeout: TimeAmount?, idleTimeout: TimeAmount?, logger: Logger) {
        self.lineTimeout = lineTimeout
        self.idleTimeout = idleTimeout
        self.logger = logger
    }

    func handlerAdded(context: ChannelHandlerContext) {
        lastActivity = .now()
        arm(context: context)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        disarm()
    }

    func channelInactive(context: ChannelHandlerContext) {
        done = true
        disarm()
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let bytes = unwrapInboundIn(data)
        let now = NIODeadline.now()
        lastActivity = now
        if let last = bytes.readableBytesView.last {
            if last == UInt8(ascii: "\n") {
                partialSince = nil
            } else if partialSince == nil || bytes.readableBytesView.contains(UInt8(ascii: "\n")) {
                // A new line has started (any earlier one was completed in this chunk): its deadline may
                // come before the one the timer is set for.
                partialSince = now
                if let lineTimeout, let set = timerDeadline, now + lineTimeout < set {
                    disarm()
                    arm(context: context)
                }
            }
        }
        context.fireChannelRead(data)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        lastActivity = .now()
        context.write(data, promise: promise)
    }

    /// The earliest deadline: the line's (while one is incomplete) or the idle one.
    private var nextDeadline: NIODeadline? {
        var deadline: NIODeadline?
        if let lineTimeout, let since = partialSince { deadline = since + lineTimeout }
        if let idleTimeout {
            let idle = lastActivity + idleTimeout
            deadline = deadline.map { min($0, idle) } ?? idle
        }
        return deadline
    }

    private func arm(context: ChannelHandlerContext) {
        guard !done, timer == nil, let deadline = nextDeadline else { return }
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        timerDeadline = deadline
        timer = context.eventLoop.scheduleTask(deadline: deadline) {
            let (handler, context) = loopBound.value
            handler.timer = nil
            handler.timerDeadline = nil
            handler.check(context: context)
        }
    }

    private func disarm() {
        timer?.cancel()
        timer = nil
        timerDeadline = nil
    }

    private func check(context: ChannelHandlerContext) {
        guard !done else { return }
        let now = NIODeadline.now()
        if let lineTimeout, let since = partialSince, now - since >= lineTimeout {
            logger.notice("closing a connection whose request line was not completed in time", metadata: ["timeout": "\(lineTimeout)"])
            let seconds = Double(lineTimeout.nanoseconds) / 1e9
            var buffer = context.channel.allocator.buffer(capacity: 160)
            buffer.writeJSONRPCError(
                id: .null,
                .limitExceeded("Request line not completed within \(seconds) s", limit: "line_timeout", value: seconds))
            buffer.writeInteger(UInt8(ascii: "\n"))
            partialSince = nil
            done = true
            let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
            context.writeAndFlush(wrapOutboundOut(buffer)).whenComplete { _ in
                loopBound.value.close(promise: nil)
            }
            return
        }
        if let idleTimeout, now - lastActivity >= idleTimeout {
            // Idle means nothing read and nothing written; an answer still being computed keeps the
            // connection busy only until it is written, so a long fill is bounded by its own timeout.
            logger.debug("closing an idle connection", metadata: ["timeout": "\(idleTimeout)"])
            done = true
            context.close(promise: nil)
            return
        }
        arm(context: context)  // activity moved the deadline: wait for the new one
    }
}
