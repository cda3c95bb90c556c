import NIOCore

/// The pure logic of one pipelined Redis connection: a FIFO of commands waiting for their reply.
///
/// It performs no I/O: each event returns an action for the channel handler to carry out, so every
/// transition is unit-tested without a socket. Generic over the promise type for those tests.
public struct RedisCommandStateMachine<Promise> {
    struct Pending {
        var promise: Promise
        var deadline: NIODeadline
    }

    enum State {
        case active(CircularBuffer<Pending>)
        case closed(RedisClientError)
    }

    private var state: State = .active(CircularBuffer(initialCapacity: 16))

    public init() {}

    /// The deadline of the oldest command waiting for a reply (the next one that can time out).
    public var oldestDeadline: NIODeadline? {
        if case .active(let pending) = state { return pending.first?.deadline }
        return nil
    }

    /// The number of commands waiting for a reply.
    public var pendingCount: Int {
        if case .active(let pending) = state { return pending.count }
        return 0
    }

    // MARK: Events

    public enum SendAction {
        /// Write the command's bytes.
        case write
        /// The connection is closed: fail the promise with this error, write nothing.
        case fail(RedisClientError)
    }

    /// A command is about to be written.
    public mutating func send(_ promise: Promise, deadline: NIODeadline) -> SendAction {
        switch state {
        case .active(var pending):
            pending.append(Pending(promise: promise, deadline: deadline))
            state = .active(pending)
            return .write
        case .closed(let error):
            return .fail(error)
        }
    }

    public enum ReceiveAction {
        /// Complete this promise with the reply; `deadline` is the one the command was sent with.
        case succeed(Promise, deadline: NIODeadline)
        /// A reply nobody asked for: fail these promises and close the connection.
        case failAllAndClose([Promise], RedisClientError)
        /// Already closed: drop the reply.
        case ignore
    }

    /// A reply arrived.
    public mutating func receive() -> ReceiveAction {
        switch state {
        case .active(var pending):
            guard let first = pending.popFirst() else {
                let error = RedisClientError(.protocolError, "unexpected reply from Redis")
                state = .closed(error)
                return .failAllAndClose([], error)
            }
            state = .active(pending)
            return .succeed(first.promise, deadline: first.deadline)
        case .closed:
            return .ignore
        }
    }

    public enum TimeoutAction {
        case none
        /// The oldest command is past its deadline: fail everything in flight and close the connection
        /// (the stream can no longer be matched to its commands).
        case failAllAndClose([Promise], RedisClientError)
    }

    /// Checks the oldest command's deadline.
    public mutating func checkTimeouts(now: NIODeadline) -> TimeoutAction {
        guard case .active(let pending) = state, let first = pending.first, first.deadline <= now else {
            return .none
        }
        let error = RedisClientError(.timeout, "Redis did not answer within the command timeout")
        state = .closed(error)
        return .failAllAndClose(pending.map(\.promise), error)
    }

    /// The connection closed or failed: returns the promises to fail, and the error to fail them with.
    public mutating func close(_ error: RedisClientError) -> ([Promise], RedisClientError) {
        switch state {
        case .active(let pending):
            state = .closed(error)
            return (pending.map(\.promise), error)
        case .closed(let existing):
            return ([], existing)
        }
    }
}
