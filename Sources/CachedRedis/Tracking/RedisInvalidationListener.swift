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

    /// The subscribed connection and its client id.
    final class Subscription: Sendable {
        let channel: any Channel
        let clientID: Int64
        init(channel: any Channel, clientID: Int64) {
            self.channel = channel
            self.clientID = clientID
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
                    onEvent(.connected(subscription.clientID))
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
    /// (from then on the connection only receives pushes) and subscribe.
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
            return sync.removeHandler(handler).flatMapThrowing {
                try channel.pipeline.syncOperations.addHandler(RedisSubscriptionHandler(onEvent: onEvent))
            }.flatMap {
                channel.writeAndFlush(RedisCommand("SUBSCRIBE", "__redis__:invalidate").encoded)
            }.map { Subscription(channel: channel, clientID: id) }.flatMapErrorThrowing { error in
                channel.close(promise: nil)
                throw error
            }
        }
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
