import CachedProtocol
import NIOCore

// MARK: - Messages between the client and its channel

/// What one request is answered with: the `result`, or the daemon's error object.
typealias DaemonAnswer = Result<JSONValue, CachedError>

/// One line to write, and the requests in it that await an answer.
struct OutgoingLine: Sendable {
    var line: ByteBuffer
    var waiters: [(id: Int, promise: EventLoopPromise<DaemonAnswer>)]
}

// MARK: - The multiplexing handler

/// Matches answer lines to pending requests by id, in whatever order they come.
///
/// Writes are not flushed one by one: the first write of an event-loop tick schedules one flush at
/// the end of the tick, so concurrent callers are pipelined into few `writev` calls. When the
/// connection ends, every pending request fails with ``CachedClientError``.
final class AnswerHandler: ChannelDuplexHandler, TickFlushing {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = OutgoingLine
    typealias OutboundOut = ByteBuffer

    private var pending: [Int: EventLoopPromise<DaemonAnswer>] = [:]
    var flushScheduled = false
    /// Set once the connection is unusable; later writes fail at once.
    private var failure: CachedClientError?
    private let maximumDepth: Int

    init(maximumDepth: Int = 512) {
        self.maximumDepth = maximumDepth
    }

    // MARK: Outbound

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let outgoing = unwrapOutboundIn(data)
        if let failure {
            for waiter in outgoing.waiters { waiter.promise.fail(failure) }
            promise?.fail(failure)
            return
        }
        for waiter in outgoing.waiters { pending[waiter.id] = waiter.promise }
        let written = promise ?? context.eventLoop.makePromise()
        let ids = outgoing.waiters.map(\.id)
        written.futureResult.assumeIsolated().whenFailure { [self] error in
            let failure = CachedClientError.connectionClosed("write failed: \(error)")
            for id in ids { pending.removeValue(forKey: id)?.fail(failure) }
        }
        context.write(wrapOutboundOut(outgoing.line), promise: written)
        scheduleFlush(context: context)
    }

    // MARK: Inbound

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let line = unwrapInboundIn(data)
        let parsed: JSONValue
        do {
            parsed = try line.withUnsafeReadableBytes { bytes throws(JSONParseError) in
                try JSONParser.parse(bytes, maxDepth: maximumDepth)
            }
        } catch {
            fatal(context: context, .protocolViolation("unparseable answer line: \(error)"))
            return
        }
        switch parsed {
        case .object:
            deliver(parsed, context: context)
        case .array(let answers):
            for answer in answers { deliver(answer, context: context) }
        default:
            fatal(context: context, .protocolViolation("answer line is a JSON \(parsed.typeName)"))
        }
    }

    private func deliver(_ answer: JSONValue, context: ChannelHandlerContext) {
        guard case .object(let members) = answer else {
            fatal(context: context, .protocolViolation("answer is a JSON \(answer.typeName)"))
            return
        }
        let outcome: DaemonAnswer
        if let result = members["result"] {
            outcome = .success(result)
        } else if case .object(let error)? = members["error"] {
            guard case .number(let rawCode)? = error["code"], let code = Int(rawCode) else {
                fatal(context: context, .protocolViolation("error answer without an integer code"))
                return
            }
            let message = error["message"]?.stringValue ?? "error \(code)"
            outcome = .failure(CachedError(.init(rawValue: code), message, data: error["data"]))
        } else {
            fatal(context: context, .protocolViolation("answer has neither result nor error"))
            return
        }
        if case .failure(let error) = outcome, Self.daemonCloses(after: error) {
            // The daemon closes the connection right after this answer: close our side first, before any
            // caller sees the error, so that the next call reconnects instead of racing the daemon's close
            // (and failing with `.connectionClosed`).
            var recipients: [EventLoopPromise<DaemonAnswer>] = []
            if case .number(let raw)? = members["id"], let id = Int(raw) {
                if let promise = pending.removeValue(forKey: id) { recipients = [promise] }
            } else {
                recipients = Array(pending.values)
                pending.removeAll()
            }
            fatal(context: context, .connectionClosed("the daemon closed the connection after: \(error)"))
            for promise in recipients { promise.succeed(outcome) }
            return
        }
        switch members["id"] {
        case .number(let raw)? where Int(raw) != nil:
            // An unknown id is a late answer to a request already failed: drop it.
            pending.removeValue(forKey: Int(raw)!)?.succeed(outcome)
        case .null?, nil:
            // The daemon could not read the id (a line it could not parse, over a limit...). It can
            // only be ours if one request is pending; otherwise every pending request gets the
            // error, so that the one it was meant for never waits forever.
            guard case .failure = outcome else {
                fatal(context: context, .protocolViolation("result answer without an id"))
                return
            }
            let waiting = pending
            pending.removeAll()
            for (_, promise) in waiting { promise.succeed(outcome) }
        default:
            fatal(context: context, .protocolViolation("answer id \(members["id"]!) was never sent"))
        }
    }

    /// Error answers after which the daemon closes the connection (docs/protocol.md, "Errors"): -32001 for a
    /// line over `max_line_bytes` or a connection over `max_connections`, and -32008 access denied.
    static func daemonCloses(after error: CachedError) -> Bool {
        switch error.code {
        case .accessDenied:
            return true
        case .limitExceeded:
            guard case .object(let data)? = error.data, case .string(let limit)? = data["limit"] else { return false }
            return limit == "max_line_bytes" || limit == "max_connections"
        default:
            return false
        }
    }

    // MARK: Failure

    func channelInactive(context: ChannelHandlerContext) {
        failAll(.connectionClosed("the daemon closed the connection"))
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        if error is ByteToMessageDecoderError.PayloadTooLargeError {
            fatal(context: context, .protocolViolation("answer line larger than the client's limit"))
        } else {
            fatal(context: context, .connectionClosed("connection error: \(error)"))
        }
    }

    private func fatal(context: ChannelHandlerContext, _ error: CachedClientError) {
        failAll(error)
        context.close(promise: nil)
    }

    private func failAll(_ error: CachedClientError) {
        if failure == nil { failure = error }
        let waiting = pending
        pending.removeAll()
        for (_, promise) in waiting { promise.fail(error) }
    }
}
