import NIOCore

/// A channel handler whose writes within one event-loop tick share one flush.
///
/// Used by the Redis command handler (auto-pipelining), the daemon's client connections (answers
/// completed in the same tick) and the Swift client's connection (requests from concurrent callers);
/// `package` so that it stays out of the public API.
package protocol TickFlushing: AnyObject {
    /// Whether a flush is already scheduled for the end of this tick.
    var flushScheduled: Bool { get set }
}

extension TickFlushing {
    /// Schedules one flush after the work of this tick; later calls in the same tick join it.
    package func scheduleFlush(context: ChannelHandlerContext) {
        guard !flushScheduled else { return }
        flushScheduled = true
        let handler: any TickFlushing = self  // an existential: the closure then captures no generic metatype
        let loopBound = NIOLoopBound((handler, context), eventLoop: context.eventLoop)
        context.eventLoop.execute {
            let (handler, context) = loopBound.value
            handler.flushScheduled = false
            context.flush()
        }
    }
}
