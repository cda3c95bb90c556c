import CachedProtocol
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
        /// The listener is up with this client id; data connections must redirect to it. Its heartbeats
        /// advance `proof`.
        case connected(Int64, proof: ProofClock)
        /// The listener is down: nothing is tracked.
        case disconnected
    }

    /// The subscribed connection and its client id.
    final class Subscription: Sendable {
        let channel: any Channel
        let clientID: Int64
        let proof: ProofClock
        init(channel: any Channel, clientID: Int64, proof: ProofClock) {
            self.channel = channel
            self.clientID = clientID
            self.proof = proof
        }
    }

    private let reconnector: Reconnector<Subscription>

    public init(configuration: RedisConfiguration, eventLoop: any EventLoop, logger: Logger, onEvent: @escaping @Sendable (Event) -> Void) {
        reconnector = Reconnector(
            eventLoop: eventLoop, backoff: configuration.reconnectBackoff,
            connect: { Self.subscribe(configuration: configuration, eventLoop: eventLoop, onEvent: onEvent) },
            closeFuture: { $0.channel.closeFuture },
            close: { $0.channel.close() },
            onEvent: { event in
                switch event {
                case .up(let subscription, _):
                    logger.info("tracking Redis invalidations", metadata: ["client_id": "\(subscription.clientID)"])
                    onEvent(.invalidateAll)
                    onEvent(.connected(subscription.clientID, proof: subscription.proof))
                case .lost:
                    onEvent(.disconnected)
                    onEvent(.invalidateAll)
                    logger.warning("invalidation connection to Redis lost; local cache disabled until it is back")
                case .failed(let error, let failures, _):
                    if failures <= 2 || failures.isMultiple(of: 50) {
                        logger.warning("cannot connect the invalidation listener; retrying", metadata: ["error": "\(error)"])
                    }
                }
            })
    }

    /// The client id data connections must redirect their tracking to, while the listener is up.
    public var currentID: Int64? { reconnector.current?.clientID }

    /// Connects; returns once the first attempt has ended.
    public func start() async {
        await reconnector.start()
    }

    public func shutdown() async {
        await reconnector.shutdown()
    }

    /// One attempt: connect, learn the client id, swap the command handler for a subscription handler
    /// (from then on the connection only receives pushes and the replies to its heartbeats) and subscribe.
    private static func subscribe(
        configuration: RedisConfiguration, eventLoop: any EventLoop, onEvent: @escaping @Sendable (Event) -> Void
    ) -> EventLoopFuture<Subscription> {
        RedisConnection.connect(configuration: configuration, eventLoop: eventLoop).flatMap { connection in
            connection.send(RedisCommand("CLIENT", "ID")).flatMapThrowing { reply -> (RedisConnection, Int64) in
                guard case .integer(let id) = reply else { throw RedisClientError(.protocolError, "CLIENT ID: \(reply)") }
                return (connection, id)
            }
        }.flatMap { (connection, id) -> EventLoopFuture<Subscription> in
            let channel = connection.channel
            let sync = channel.pipeline.syncOperations
            let handler: RedisCommandHandler
            do {
                handler = try sync.handler(type: RedisCommandHandler.self)
            } catch {
                channel.close(promise: nil)
                return channel.eventLoop.makeFailedFuture(error)
            }
            let proof = ProofClock()
            let subscribed = channel.eventLoop.makePromise(of: Void.self)
            return sync.removeHandler(handler).flatMapThrowing {
                try channel.pipeline.syncOperations.addHandler(
                    RedisSubscriptionHandler(
                        proof: proof, heartbeat: configuration.heartbeatInterval, timeout: configuration.commandTimeout,
                        subscribed: subscribed, onEvent: onEvent))
            }.flatMap {
                // Announced (and redirected to) only once Redis confirmed the subscription: until Redis has run
                // the SUBSCRIBE, it drops every invalidation for a RESP2 redirect target that is not in Pub/Sub
                // mode (tracking.c, sendTrackingMessage), sending nothing, while this connection's heartbeats
                // would go on proving it.
                subscribed.futureResult
            }.map { Subscription(channel: channel, clientID: id, proof: proof) }.flatMapErrorThrowing { error in
                subscribed.fail(error)  // the handler may never have been added
                channel.close(promise: nil)
                throw error
            }
        }
    }
}

/// Subscribes to `__redis__:invalidate` when added, turns `message` pushes into events, and keeps the
/// listener's ``ProofClock``: the `SUBSCRIBE` and every heartbeat `PING` are answered in order after every
/// push Redis wrote before them, so each answer proves that every invalidation sent before its command
/// has arrived. A heartbeat is sent on every beat; one left unanswered past `timeout` closes the
/// connection (the listener then reconnects, and the local copy drops the node's entries).
final class RedisSubscriptionHandler: ChannelInboundHandler {
    typealias InboundIn = RedisReply
    typealias OutboundOut = ByteBuffer
    let onEvent: @Sendable (RedisInvalidationListener.Event) -> Void
    private let proof: ProofClock
    private let heartbeat: TimeAmount?
    private let timeout: TimeAmount
    /// Send instants of the commands (`SUBSCRIBE`, then `PING`s) whose answers are still to come.
    private var unanswered = CircularBuffer<NIODeadline>(initialCapacity: 8)
    private var heartbeatTask: RepeatedTask?
    /// Succeeded by Redis's confirmation of the `SUBSCRIBE`; failed if the connection ends (or `timeout`
    /// passes) first.
    private var subscribed: EventLoopPromise<Void>?
    private var subscribeTimeout: Scheduled<Void>?

    init(
        proof: ProofClock, heartbeat: TimeAmount?, timeout: TimeAmount, subscribed: EventLoopPromise<Void>? = nil,
        onEvent: @escaping @Sendable (RedisInvalidationListener.Event) -> Void
    ) {
        self.proof = proof
        self.heartbeat = heartbeat
        self.timeout = timeout
        self.subscribed = subscribed
        self.onEvent = onEvent
    }

    func handlerAdded(context: ChannelHandlerContext) {
        unanswered.append(.now())
        context.writeAndFlush(wrapOutboundOut(RedisCommand("SUBSCRIBE", "__redis__:invalidate").encoded), promise: nil)
        if subscribed != nil {
            let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            subscribeTimeout = context.eventLoop.scheduleTask(in: timeout) {
                let (handler, context) = loopBound.value
                handler.endSubscribing(RedisClientError(.timeout, "SUBSCRIBE to invalidations unanswered after \(handler.timeout)"))
                context.close(promise: nil)
            }
        }
        guard let heartbeat else { return }
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        heartbeatTask = context.eventLoop.scheduleRepeatedTask(initialDelay: heartbeat, delay: heartbeat) { _ in
            let (handler, context) = loopBound.value
            handler.beat(context: context)
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        heartbeatTask?.cancel()
        heartbeatTask = nil
        endSubscribing(RedisClientError(.unavailable, "the invalidation connection closed before its SUBSCRIBE was answered"))
    }

    func channelInactive(context: ChannelHandlerContext) {
        heartbeatTask?.cancel()
        heartbeatTask = nil
        endSubscribing(RedisClientError(.unavailable, "the invalidation connection closed before its SUBSCRIBE was answered"))
        context.fireChannelInactive()
    }

    /// Completes the wait for the subscription: with success once Redis confirmed it, else with `error`.
    private func endSubscribing(_ error: RedisClientError?) {
        subscribeTimeout?.cancel()
        subscribeTimeout = nil
        guard let promise = subscribed else { return }
        subscribed = nil
        if let error { promise.fail(error) } else { promise.succeed() }
    }

    private static let ping: ByteBuffer = RedisCommand("PING").encoded

    private func beat(context: ChannelHandlerContext) {
        guard context.channel.isActive else { return }
        let now = NIODeadline.now()
        if let oldest = unanswered.first, now - oldest >= timeout {
            // Silence is not health: a listener that cannot answer a PING may be missing invalidations.
            heartbeatTask?.cancel()
            heartbeatTask = nil
            context.close(promise: nil)
            return
        }
        unanswered.append(now)
        context.writeAndFlush(wrapOutboundOut(Self.ping), promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard case .array(let parts) = unwrapInboundIn(data), parts.count >= 2, case .bulk(let kind) = parts[0] else { return }
        guard parts.count == 3, kind.readableBytes == 7, String(buffer: kind) == "message" else {
            // `subscribe` (the confirmation) or `pong` (RESP2 answers PING in subscribed mode with
            // ["pong", ""]): the answer to the oldest command still unanswered.
            if let sentAt = unanswered.popFirst() { proof.prove(sentAt: sentAt) }
            if subscribed != nil, kind.readableBytes == 9, String(buffer: kind) == "subscribe" { endSubscribing(nil) }
            return
        }
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
