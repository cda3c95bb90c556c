import Logging
import NIOCore

/// A subscription to one Sentinel's `+switch-master` channel, kept up with backoff.
final class SentinelWatcher: Sendable {
    enum Event: Sendable {
        /// The Sentinel announced that the watched master moved (the message as published).
        case switchMaster(String)
        /// The subscription is up (again).
        case up
        /// The subscription is down.
        case down
    }

    final class Subscription: Sendable {
        let channel: any Channel
        init(channel: any Channel) { self.channel = channel }
    }

    private let reconnector: Reconnector<Subscription>

    init(
        configuration: RedisConfiguration, masterName: String, eventLoop: any EventLoop, backoff: ReconnectStateMachine.Backoff,
        logger: Logger, onEvent: @escaping @Sendable (Event) -> Void
    ) {
        let sentinel = configuration.endpoint.description
        reconnector = Reconnector(
            eventLoop: eventLoop, backoff: backoff,
            connect: { Self.subscribe(configuration: configuration, masterName: masterName, eventLoop: eventLoop, onEvent: onEvent) },
            closeFuture: { $0.channel.closeFuture },
            close: { $0.channel.close() },
            onEvent: { event in
                switch event {
                case .up: onEvent(.up)
                case .lost:
                    logger.warning("Sentinel connection lost", metadata: ["sentinel": "\(sentinel)"])
                    onEvent(.down)
                case .failed(let error, let failures, _):
                    if failures == 1 { onEvent(.down) }
                    if failures <= 2 || failures.isMultiple(of: 50) {
                        logger.warning("cannot reach Sentinel; retrying", metadata: ["sentinel": "\(sentinel)", "error": "\(error)"])
                    }
                }
            })
    }

    func start() async { await reconnector.start() }

    func shutdown() async { await reconnector.shutdown() }

    private static func subscribe(
        configuration: RedisConfiguration, masterName: String, eventLoop: any EventLoop, onEvent: @escaping @Sendable (Event) -> Void
    ) -> EventLoopFuture<Subscription> {
        RedisConnection.connect(configuration: configuration, eventLoop: eventLoop).flatMap { connection in
            let channel = connection.channel
            let sync = channel.pipeline.syncOperations
            do {
                let handler = try sync.handler(type: RedisCommandHandler.self)
                return sync.removeHandler(handler).flatMapThrowing {
                    try channel.pipeline.syncOperations.addHandler(SwitchMasterHandler(masterName: masterName, onEvent: onEvent))
                }.flatMap {
                    channel.writeAndFlush(RedisCommand("SUBSCRIBE", "+switch-master").encoded)
                }.map { Subscription(channel: channel) }.flatMapErrorThrowing { error in
                    channel.close(promise: nil)
                    throw error
                }
            } catch {
                channel.close(promise: nil)
                return channel.eventLoop.makeFailedFuture(error)
            }
        }
    }
}

/// Turns `+switch-master` messages about one master (`<name> <old-ip> <old-port> <new-ip> <new-port>`) into events.
final class SwitchMasterHandler: ChannelInboundHandler {
    typealias InboundIn = RedisReply
    let masterName: String
    let onEvent: @Sendable (SentinelWatcher.Event) -> Void

    init(masterName: String, onEvent: @escaping @Sendable (SentinelWatcher.Event) -> Void) {
        self.masterName = masterName
        self.onEvent = onEvent
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard case .array(let parts) = unwrapInboundIn(data), parts.count == 3, case .bulk(let kind) = parts[0],
            String(buffer: kind) == "message", case .bulk(let payload) = parts[2]
        else { return }  // the subscribe confirmation
        let message = String(buffer: payload)
        if message.split(separator: " ").first.map(String.init) == masterName {
            onEvent(.switchMaster(message))
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}
