import CachedRedis
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle

/// The whole daemon: event loops, the store, the server; run until SIGTERM/SIGINT.
public struct Daemon: Sendable {
    public var configuration: DaemonConfiguration
    public var logger: Logger

    public init(configuration: DaemonConfiguration, logger: Logger) {
        self.configuration = configuration
        self.logger = logger
    }

    /// Builds the store the configuration asks for.
    static func makeStore(_ configuration: DaemonConfiguration, group: any EventLoopGroup, logger: Logger) throws -> any CacheStore {
        guard let url = configuration.redisURL else {
            return EmbeddedStore(maxBytes: configuration.embedded.maxBytes)
        }
        var redis = try RedisConfiguration(url: url)
        redis.poolSize = configuration.redis.poolSize
        redis.connectTimeout = .nanoseconds(Int64(configuration.redis.connectTimeout * 1e9))
        redis.commandTimeout = .nanoseconds(Int64(configuration.redis.commandTimeout * 1e9))
        redis.maximumReconnectDelay = .nanoseconds(Int64(configuration.redis.reconnectMaxDelay * 1e9))
        return RedisCacheStore(pool: RedisConnectionPool(configuration: redis, group: group, logger: logger))
    }

    /// Runs until a graceful shutdown signal, then drains and stops.
    public func run() async throws {
        let threads = configuration.threads > 0 ? configuration.threads : System.coreCount
        let group = MultiThreadedEventLoopGroup(numberOfThreads: threads)
        let store = try Self.makeStore(configuration, group: group, logger: logger)
        let dispatcher = RequestDispatcher(store: store, configuration: configuration, logger: logger)
        let server = CacheServer(
            listener: .path(configuration.socketPath), configuration: configuration, dispatcher: dispatcher,
            group: group, logger: logger)
        let storeService = StoreService(store: store)
        let serviceGroup = ServiceGroup(
            configuration: .init(
                services: [
                    .init(service: storeService),
                    .init(service: server),
                ],
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger))
        logger.info(
            "starting cached",
            metadata: ["store": "\(configuration.redisURL == nil ? "embedded" : "redis")", "threads": "\(threads)"])
        do {
            try await serviceGroup.run()
        } catch {
            try? await group.shutdownGracefully()
            throw error
        }
        try await group.shutdownGracefully()
        logger.info("stopped")
    }
}

/// Connects the store at start, closes it at shutdown (after the server has drained: services stop in reverse order).
struct StoreService: Service {
    let store: any CacheStore

    func run() async throws {
        await store.start()
        try? await gracefulShutdown()
        await store.shutdown()
    }
}
