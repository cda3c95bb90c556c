import Logging
import NIOCore

/// One Redis server (`redis://`, `rediss://`, `unix://`): every key goes to it.
public final class SingleNodeTopology: RedisTopology {
    public let node: RedisNode

    public init(
        configuration: RedisConfiguration, group: any EventLoopGroup, tracking: Bool, logger: Logger,
        onEvent: @escaping @Sendable (RedisNodeEvent) -> Void
    ) {
        node = RedisNode(configuration: configuration, group: group, tracking: tracking, logger: logger, onEvent: onEvent)
    }

    public func route(_ key: String, preferring eventLoop: any EventLoop) -> RedisRoute? {
        guard let connection = node.pool.connection(preferring: eventLoop) else { return nil }
        return RedisRoute(node: node, connection: connection)
    }

    public func errorReply(_ reply: RedisErrorReply, from node: RedisNode, attempt: Int, on eventLoop: any EventLoop) -> RedisRedirect? {
        nil
    }

    public func start() async { await node.start() }

    public func shutdown() async { await node.shutdown() }

    public var status: RedisTopologyStatus {
        .single(.init(url: node.configuration.redactedDescription, node: node.status(role: "master")))
    }
}
