import CachedProtocol
import NIOCore

/// Deadlines: every request is answered at its deadline at the latest (-32009), whatever it waits for.
///
/// The deadline travels in the ``RequestContext`` to every wait of the get flow (re-reads stop, a lease
/// waiter leaves its queue, the lease asker's fleet wait ends), so the daemon stops working for a caller who
/// left; work that others still wait for (a handler flight, a lease held by another client) goes on for them.
/// ``bounded(_:_:method:late:)`` is the last word: whatever is still running at the deadline, the answer
/// goes out then.
extension RequestDispatcher {
    /// `future`, or the deadline error if the deadline comes first. `late` gets a result that came after
    /// the deadline was answered (a lease handed to a caller who left is given back through it).
    func bounded(
        _ future: EventLoopFuture<MethodResult>, _ context: RequestContext, method: String,
        late: (@Sendable (MethodResult) -> Void)? = nil
    ) -> EventLoopFuture<MethodResult> {
        guard let deadline = context.deadline else { return future }
        let eventLoop = context.eventLoop
        let answer = eventLoop.makePromise(of: MethodResult.self)
        let answered = NIOLoopBoundBox(false, eventLoop: eventLoop)
        let timer = eventLoop.scheduleTask(deadline: deadline.instant) {
            guard !answered.value else { return }
            answered.value = true
            answer.fail(deadline.error(method))
        }
        future.hop(to: eventLoop).whenComplete { result in
            guard !answered.value else {
                if case .success(let value) = result { late?(value) }
                return
            }
            answered.value = true
            timer.cancel()
            answer.completeWith(result)
        }
        return answer.futureResult
    }

    /// A get answered at its deadline: a lease that reaches it afterwards is given back at once, so the next
    /// waiter fills instead of waiting for the lease to expire.
    func bounded(_ future: EventLoopFuture<MethodResult>, get params: GetParams, _ context: RequestContext) -> EventLoopFuture<MethodResult> {
        let entry = params.address.location
        let eventLoop = context.eventLoop
        return bounded(future, context, method: "get") { late in
            guard case .fill(_, let token?, _) = late else { return }
            _ = self.coordinator.releaseLease(entry, token: token, on: eventLoop)
        }
    }

    /// Fails at once when the request's deadline has passed (before a re-read, or before another wait).
    func deadlinePassed(_ context: RequestContext, method: String) -> EventLoopFuture<MethodResult>? {
        guard let deadline = context.deadline, deadline.hasPassed() else { return nil }
        return context.eventLoop.makeFailedFuture(deadline.error(method))
    }
}
