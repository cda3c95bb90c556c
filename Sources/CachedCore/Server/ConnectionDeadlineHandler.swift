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
    private var timer: RepeatedTask?

    init(lineTimeout: TimeAmount?, idleTimeout: TimeAmount?, logger: Logger) {
        self.lineTimeout = lineTimeout
        self.idleTimeout = idleTimeout
        self.logger = logger
    }

    func handlerAdded(context: ChannelHandlerContext) {
        let shortest = [lineTimeout, idleTimeout].compactMap { $0 }.min()
        guard let shortest else { return }
        let interval = TimeAmount.nanoseconds(max(shortest.nanoseconds / 4, 50_000_000))
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        timer = context.eventLoop.scheduleRepeatedTask(initialDelay: interval, delay: interval) { _ in
            let (handler, context) = loopBound.value
            handler.check(context: context)
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        timer?.cancel()
        timer = nil
    }

    func channelInactive(context: ChannelHandlerContext) {
        timer?.cancel()
        timer = nil
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
                // A new line has started (any earlier one was completed in this chunk).
                partialSince = now
            }
        }
        context.fireChannelRead(data)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        lastActivity = .now()
        context.write(data, promise: promise)
    }

    private func check(context: ChannelHandlerContext) {
        let now = NIODeadline.now()
        if let lineTimeout, let since = partialSince, now - since > lineTimeout {
            logger.notice("closing a connection whose request line was not completed in time", metadata: ["timeout": "\(lineTimeout)"])
            let seconds = Double(lineTimeout.nanoseconds) / 1e9
            var buffer = context.channel.allocator.buffer(capacity: 160)
            buffer.writeJSONRPCError(
                id: .null,
                .limitExceeded("Request line not completed within \(seconds) s", limit: "line_timeout", value: seconds))
            buffer.writeInteger(UInt8(ascii: "\n"))
            partialSince = nil
            timer?.cancel()
            let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
            context.writeAndFlush(wrapOutboundOut(buffer)).whenComplete { _ in
                loopBound.value.close(promise: nil)
            }
            return
        }
        if let idleTimeout, now - lastActivity > idleTimeout {
            // Idle means nothing read and nothing written; an answer still being computed keeps the
            // connection busy only until it is written, so a long fill is bounded by its own timeout.
            logger.debug("closing an idle connection", metadata: ["timeout": "\(idleTimeout)"])
            timer?.cancel()
            context.close(promise: nil)
        }
    }
}
