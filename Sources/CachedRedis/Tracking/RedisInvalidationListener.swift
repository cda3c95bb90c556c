import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// Receives Redis's client-side-caching invalidations (RESP2: a connection subscribed to
/// `__redis__:invalidate`, to which data connections redirect with `CLIENT TRACKING on REDIRECT <id>`).
///
/// It reconnects by itself with backoff. While it is down, ``currentID`` is nil, and nothing read from
/// Redis may be cached locally.
public final class RedisInvalidationListener: Sendable {
    /// What the listener reports.
    public enum Event: Sendable {
        /// These keys changed (written, deleted, expired or evicted).
        case invalidate([String])
        /// Everything may have changed (FLUSHALL/FLUSHDB, or the listener reconnected).
        case invalidateAll
        /// The listener is up with this client id; data connections must redirect to it.
        case connected(Int64)
        /// The listener is down: nothing is tracked.
        case disconnected
    }

    private let configuration: RedisConfiguration
    private let eventLoop: any EventLoop
    private let logger: Logger
    private let onEvent: @Sendable (Event) -> Void
    private let state = NIOLockedValueBox(State())

    struct State {
        var id: Int64?
        var channel: (any Channel)?
        var stopped = false
        var failures = 0
        var reconnect: Scheduled<Void>?
        var firstAttempt: EventLoopPromise<Void>?
    }

    public init(configuration: RedisConfiguration, eventLoop: any EventLoop, logger: Logger, onEvent: @escaping @Sendable (Event) -> Void) {
        self.configuration = configuration
        self.eventLoop = eventLoop
        self.logger = logger
        self.onEvent = onEvent
    }

    /// The client id data connections must redirect their tracking to, while the listener is up.
    public var currentID: Int64? { state.withLockedValue { $0.id } }

    /// Connects; returns once the first attempt has ended.
    public func start() async {
        let promise = eventLoop.makePromise(of: Void.self)
        state.withLockedValue { $0.firstAttempt = promise }
        eventLoop.execute { self.connect() }
        try? await promise.futureResult.get()
    }

    public func shutdown() async {
        let (channel, reconnect, first) = state.withLockedValue { state in
            state.stopped = true
            defer {
                state.channel = nil
                state.reconnect = nil
                state.firstAttempt = nil
            }
            return (state.channel, state.reconnect, state.firstAttempt)
        }
        reconnect?.cancel()
        first?.succeed()
        try? await channel?.close()
    }

    private func connect() {
        guard !state.withLockedValue({ $0.stopped }) else { return }
        RedisConnection.connect(configuration: configuration, eventLoop: eventLoop).flatMap { connection in
            connection.send(RedisCommand("CLIENT", "ID")).flatMapThrowing { reply -> (RedisConnection, Int64) in
                guard case .integer(let id) = reply else { throw RedisClientError(.protocolError, "CLIENT ID: \(reply)") }
                return (connection, id)
            }
        }.flatMap { (connection, id) -> EventLoopFuture<(any Channel, Int64)> in
            // From here on the connection only receives pushes: swap the command handler for a subscription handler.
            let channel = connection.channel
            let onEvent = self.onEvent
            let sync = channel.pipeline.syncOperations
            let handler: RedisCommandHandler
            do {
                handler = try sync.handler(type: RedisCommandHandler.self)
            } catch {
                return channel.eventLoop.makeFailedFuture(error)
            }
            return sync.removeHandler(handler).flatMapThrowing {
                try channel.pipeline.syncOperations.addHandler(RedisSubscriptionHandler(onEvent: onEvent))
            }.flatMap {
                channel.writeAndFlush(RedisCommand("SUBSCRIBE", "__redis__:invalidate").encoded)
            }.map { (channel, id) }
        }.whenComplete { result in
            switch result {
            case .success(let (channel, id)):
                let first = self.state.withLockedValue { state in
                    state.id = id
                    state.channel = channel
                    state.failures = 0
                    defer { state.firstAttempt = nil }
                    return state.firstAttempt
                }
                self.logger.info("tracking Redis invalidations", metadata: ["client_id": "\(id)"])
                self.onEvent(.invalidateAll)
                self.onEvent(.connected(id))
                first?.succeed()
                channel.closeFuture.whenComplete { _ in self.lost() }
            case .failure(let error):
                self.retry(after: error)
            }
        }
    }

    private func lost() {
        let stopped = state.withLockedValue { state in
            state.id = nil
            state.channel = nil
            return state.stopped
        }
        onEvent(.disconnected)
        onEvent(.invalidateAll)
        guard !stopped else { return }
        logger.warning("invalidation connection to Redis lost; local cache disabled until it is back")
        retry(after: nil)
    }

    private func retry(after error: (any Error)?) {
        let (failures, first) = state.withLockedValue { state in
            state.failures += 1
            defer { state.firstAttempt = nil }
            return (state.failures, state.firstAttempt)
        }
        first?.succeed()
        if let error, failures <= 2 {
            logger.warning("cannot connect the invalidation listener; retrying", metadata: ["error": "\(error)"])
        }
        let base = configuration.minimumReconnectDelay.nanoseconds
        let delay = min(configuration.maximumReconnectDelay.nanoseconds, base << min(failures - 1, 20))
        let task = eventLoop.scheduleTask(in: .nanoseconds(delay)) { self.connect() }
        let stopped = state.withLockedValue { state in
            if !state.stopped { state.reconnect = task }
            return state.stopped
        }
        if stopped { task.cancel() }
    }
}

/// Turns `message` pushes on `__redis__:invalidate` into events.
final class RedisSubscriptionHandler: ChannelInboundHandler {
    typealias InboundIn = RedisReply
    let onEvent: @Sendable (RedisInvalidationListener.Event) -> Void

    init(onEvent: @escaping @Sendable (RedisInvalidationListener.Event) -> Void) {
        self.onEvent = onEvent
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard case .array(let parts) = unwrapInboundIn(data), parts.count == 3, case .bulk(let kind) = parts[0],
            String(buffer: kind) == "message"
        else { return }  // the subscribe confirmation
        switch parts[2] {
        case .null:
            onEvent(.invalidateAll)
        case .array(let keys):
            onEvent(.invalidate(keys.compactMap { if case .bulk(let k) = $0 { String(buffer: k) } else { nil } }))
        case .bulk(let key):
            onEvent(.invalidate([String(buffer: key)]))
        default:
            onEvent(.invalidateAll)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}
