import CachedRedis
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import ServiceLifecycle
import UnixSignals

#if canImport(Glibc)
import Glibc
#endif

/// The whole daemon: event loops, the store, the sync handlers, the server; run until SIGTERM/SIGINT.
public struct Daemon: Sendable {
    public var configuration: DaemonConfiguration
    public var logger: Logger
    /// Re-reads the configuration on SIGHUP; nil disables reloading.
    public var reload: (@Sendable () throws -> DaemonConfiguration)?
    /// Builds a key's sync handler.
    public var handlerFactory: HandlerRegistry.Factory

    public init(
        configuration: DaemonConfiguration, logger: Logger,
        reload: (@Sendable () throws -> DaemonConfiguration)? = nil,
        handlerFactory: @escaping HandlerRegistry.Factory
    ) {
        self.configuration = configuration
        self.logger = logger
        self.reload = reload
        self.handlerFactory = handlerFactory
    }

    /// Builds the store the configuration asks for.
    static func makeStore(_ configuration: DaemonConfiguration, group: any EventLoopGroup, logger: Logger) throws -> any CacheStore {
        try configuration.validate()  // never plain when TLS was asked for
        let settings = configuration.startup
        let local = Self.localCache(settings.localCache)
        // Heartbeats keep the local copy's proof fresh (only with a local copy under a bound).
        let heartbeat = local != nil ? settings.localCache.heartbeatInterval : nil
        /// A Redis store over the topology `make` builds; its node events keep the local copy coherent.
        func redisStore(_ make: (_ tracking: Bool, _ onEvent: @escaping @Sendable (RedisNodeEvent) -> Void) -> any RedisTopology) -> RedisCacheStore {
            let events = NodeEvents()
            let store = RedisCacheStore(topology: make(local != nil) { event in events.deliver(event) }, localCache: local)
            events.connect(store)
            return store
        }
        switch settings.store {
        case .embedded:
            return EmbeddedStore(maxBytes: settings.embedded.maxBytes)
        case .redis(let url):
            let redis = try Self.redisConfiguration(try RedisConfiguration(url: url), settings.redis, heartbeat: heartbeat)
            return redisStore { SingleNodeTopology(configuration: redis, group: group, tracking: $0, logger: logger, onEvent: $1) }
        case .sentinel(let url):
            var sentinel = try SentinelConfiguration(url: url)
            sentinel.data = try Self.redisConfiguration(sentinel.data, settings.redis, heartbeat: heartbeat)
            sentinel.sentinelPassword = settings.redis.sentinelPassword
            sentinel.refreshInterval = TimeAmount(settings.redis.topologyRefreshInterval)
            return redisStore { SentinelTopology(configuration: sentinel, group: group, tracking: $0, logger: logger, onEvent: $1) }
        case .cluster(let url):
            var cluster = try ClusterConfiguration(url: url)
            cluster.data = try Self.redisConfiguration(cluster.data, settings.redis, heartbeat: heartbeat)
            cluster.refreshInterval = TimeAmount(settings.redis.topologyRefreshInterval)
            return redisStore { ClusterTopology(configuration: cluster, group: group, tracking: $0, logger: logger, onEvent: $1) }
        }
    }

    /// A node's settings: the URL's, with the `[redis_options]` pool, timeouts and TLS files.
    static func redisConfiguration(
        _ parsed: RedisConfiguration, _ options: DaemonConfiguration.RedisOptions,
        heartbeat: Duration? = nil
    ) throws -> RedisConfiguration {
        var redis = parsed
        redis.heartbeatInterval = heartbeat.map(TimeAmount.init)
        redis.poolSize = options.poolSize
        redis.connectTimeout = TimeAmount(options.connectTimeout)
        redis.commandTimeout = TimeAmount(options.commandTimeout)
        redis.maximumReconnectDelay = TimeAmount(options.reconnectMaxDelay)
        if redis.tls != nil {  // rediss://
            redis.tls = RedisConfiguration.TLS(
                caFile: options.tlsCAFile, certificateFile: options.tlsCertFile, keyFile: options.tlsKeyFile,
                serverName: options.tlsServerName)
        }
        return redis
    }

    /// The near caches' proof publisher, under a staleness bound (beats as often as the Redis heartbeats).
    static func proofPublisher(
        _ configuration: DaemonConfiguration, store: any CacheStore, dispatcher: RequestDispatcher, group: any EventLoopGroup,
        logger: Logger
    ) -> ProofPublisher? {
        let options = configuration.startup.localCache
        guard let interval = options.heartbeatInterval else { return nil }
        let publisher = ProofPublisher(
            path: options.proofFile ?? configuration.startup.socketPath + ".proof", maxStaleness: TimeAmount(options.maxStaleness),
            interval: TimeAmount(interval), store: store, tracking: dispatcher.tracking, group: group, logger: logger)
        dispatcher.proofPublisher.withLockedValue { $0 = publisher }
        return publisher
    }

    /// The coherent local copy, unless it is turned off (no memory or no age).
    static func localCache(_ options: DaemonConfiguration.LocalCacheOptions) -> LocalCache? {
        guard options.maxBytes > 0, options.maxAge > .zero else { return nil }
        return LocalCache(maxBytes: options.maxBytes, maxAge: TimeAmount(options.maxAge), maxStaleness: TimeAmount(options.maxStaleness))
    }

    /// Runs until a graceful shutdown signal, then drains and stops. A second signal stops at once.
    ///
    /// The process must ignore SIGPIPE (the `cached` executable does at start-up).
    public func run() async throws {
        // By default one event loop per two cores: cached shares its host with its clients and Redis.
        let threads = configuration.startup.threads > 0 ? configuration.startup.threads : max(1, System.coreCount / 2)
        let group = MultiThreadedEventLoopGroup(numberOfThreads: threads)
        // Adopt systemd's socket first: this also clears LISTEN_* so worker processes do not inherit them.
        let listener: CacheServer.Listener
        if let fd = try Systemd.adoptListeningSocket() {
            listener = .adopted(fd)
        } else {
            listener = .path(configuration.startup.socketPath)
        }
        let store = try Self.makeStore(configuration, group: group, logger: logger)
        let handlers = HandlerRegistry(factory: handlerFactory)
        let dispatcher = RequestDispatcher(store: store, configuration: configuration, handlers: handlers, logger: logger)
        let server = CacheServer(listener: listener, configuration: configuration, dispatcher: dispatcher, group: group, logger: logger)
        let publisher = Self.proofPublisher(configuration, store: store, dispatcher: dispatcher, group: group, logger: logger)
        let main = MainService(
            store: store, handlers: handlers, server: server, dispatcher: dispatcher, publisher: publisher, configuration: configuration,
            logger: logger)
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = [.init(service: main)]
        if let reload {
            services.append(.init(service: ReloadService(reload: reload, dispatcher: dispatcher, handlers: handlers, logger: logger)))
        }
        if let listen = configuration.startup.metrics.listen {
            services.append(.init(service: MetricsService(listen: listen, dispatcher: dispatcher, group: group, logger: logger)))
        }
        if Systemd.notificationsEnabled {
            services.append(
                .init(
                    service: NotifyService(server: server, dispatcher: dispatcher, group: group, logger: logger),
                    successTerminationBehavior: .ignore))
        }
        let serviceGroup = ServiceGroup(
            configuration: .init(
                services: services,
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger))
        // The first SIGTERM/SIGINT starts a graceful shutdown (the service group); a second ends at once.
        let socketToRemove: String? = if case .path(let p) = listener { p } else { nil }
        let logger = self.logger
        let secondSignal = Task {
            var seen = 0
            for await _ in await UnixSignalsSequence(trapping: .sigterm, .sigint) {
                seen += 1
                if seen >= 2 {
                    logger.warning("second stop signal: exiting now")
                    if let socketToRemove { unlink(socketToRemove) }
                    exit(1)
                }
            }
        }
        defer { secondSignal.cancel() }
        logger.info(
            "starting cached",
            metadata: ["store": "\(configuration.startup.store.name)", "threads": "\(threads)"])
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

// MARK: - Services

/// Starts the store, then the handlers, then serves; at shutdown stops in the reverse order.
struct MainService: Service {
    let store: any CacheStore
    let handlers: HandlerRegistry
    let server: CacheServer
    let dispatcher: RequestDispatcher
    let publisher: ProofPublisher?
    let configuration: DaemonConfiguration
    let logger: Logger

    func run() async throws {
        await store.start()
        publisher?.start()
        await handlers.apply(configuration)
        let store = self.store
        let dispatcher = self.dispatcher
        try await server.run(
            onReady: {
                let status = store.status()
                Systemd.notify("READY=1\nSTATUS=\(NotifyService.statusLine(dispatcher: dispatcher, connections: 0))")
                if !status.available {
                    self.logger.warning("started degraded: the store is unavailable; requests fail fast until it returns")
                }
            },
            onStopping: {
                Systemd.notify("STOPPING=1\nSTATUS=Stopping: draining in-flight requests")
            })
        await handlers.shutdown()
        await publisher?.stop()
        await store.shutdown()
    }
}

/// Serves `GET /metrics` (`[metrics] listen`) until the graceful shutdown.
struct MetricsService: Service {
    let listen: String
    let dispatcher: RequestDispatcher
    let group: any EventLoopGroup
    let logger: Logger

    func run() async throws {
        let dispatcher = self.dispatcher
        let server = try await MetricsServer.start(listen: listen, group: group, logger: logger) { dispatcher.metricsExposition() }
        try? await gracefulShutdown()
        await server.shutdown()
    }
}

/// Reloads the configuration on SIGHUP: key settings (TTLs, handlers, leases) and access lists change live.
struct ReloadService: Service {
    let reload: @Sendable () throws -> DaemonConfiguration
    let dispatcher: RequestDispatcher
    let handlers: HandlerRegistry
    let logger: Logger

    func run() async throws {
        let signals = await UnixSignalsSequence(trapping: .sighup)
        for await _ in signals.cancelOnGracefulShutdown() {
            Systemd.notify("RELOADING=1")
            do {
                let new = try reload()
                let old = dispatcher.currentConfiguration
                var applied = old
                applied.live = new.live  // the whole live group; the startup group waits for a restart
                let fixed = Self.notLive(old: old, new: new)
                dispatcher.updateConfiguration(applied)
                await handlers.apply(applied)
                logger.info("configuration reloaded", metadata: ["keys": "\(applied.live.keys.keys.sorted())"])
                if !fixed.isEmpty {
                    logger.warning("these settings changed but need a restart to take effect", metadata: ["settings": "\(fixed)"])
                }
            } catch {
                logger.error("configuration not reloaded; keeping the current one", metadata: ["error": "\(error)"])
            }
            Systemd.notify("READY=1")
        }
    }

    /// The startup settings a reload changed (they need a restart), by their names in the file.
    static func notLive(old: DaemonConfiguration, new: DaemonConfiguration) -> [String] {
        let (o, n) = (old.startup, new.startup)
        guard o != n else { return [] }
        var changed: [String] = []
        if o.socketPath != n.socketPath { changed.append("socket") }
        if o.socketMode != n.socketMode { changed.append("socket_mode") }
        if o.socketGroup != n.socketGroup { changed.append("socket_group") }
        if o.store != n.store { changed.append("redis") }
        if o.redis != n.redis { changed.append("redis_options") }
        if o.threads != n.threads { changed.append("threads") }
        if o.limits != n.limits { changed.append("limits") }
        if o.embedded != n.embedded { changed.append("embedded") }
        if o.localCache != n.localCache { changed.append("local_cache") }
        if o.logLevel != n.logLevel { changed.append("log_level") }
        // A setting added to `Startup` without a name here is still reported, never silently ignored.
        return changed.isEmpty ? ["(startup settings)"] : changed
    }
}

/// `STATUS=` lines with live figures, and `WATCHDOG=1` pings while the daemon provably serves.
struct NotifyService: Service {
    let server: CacheServer
    let dispatcher: RequestDispatcher
    let group: any EventLoopGroup
    let logger: Logger

    func run() async throws {
        let watchdog = Systemd.watchdogInterval
        // Ping at half the watchdog interval; report status every 5 s.
        let tick: Duration = watchdog.map { .nanoseconds(max($0.nanoseconds / 2, 10_000_000)) } ?? .seconds(5)
        var lastStatus = ContinuousClock.now
        var lastRequests = dispatcher.stats.totalRequests
        while !Task.isCancelled {
            do {
                try await cancelWhenGracefulShutdown { try await Task.sleep(for: tick) }
            } catch {
                return
            }
            if Task.isShuttingDownGracefully { return }
            if watchdog != nil, await servesNow() {
                Systemd.notify("WATCHDOG=1")
            }
            if ContinuousClock.now - lastStatus >= .seconds(5) {
                let requests = dispatcher.stats.totalRequests
                let elapsed = Double((ContinuousClock.now - lastStatus).components.seconds)
                let rate = elapsed > 0 ? Double(requests - lastRequests) / elapsed : 0
                Systemd.notify("STATUS=\(Self.statusLine(dispatcher: dispatcher, connections: server.connectionCount, rate: rate))")
                lastStatus = .now
                lastRequests = requests
            }
        }
    }

    /// The listener is open and every event loop runs work within a second.
    func servesNow() async -> Bool {
        guard server.isServing else { return false }
        var loops: [any EventLoop] = []
        for loop in group.makeIterator() { loops.append(loop) }
        let futures = loops.map { $0.submit { () } }
        let all = EventLoopFuture.andAllSucceed(futures, on: group.any())
        let timeout = group.any().scheduleTask(in: .seconds(1)) {}
        defer { timeout.cancel() }
        do {
            try await all.get()
            return true
        } catch {
            return false
        }
    }

    static func statusLine(dispatcher: RequestDispatcher, connections: Int, rate: Double = 0) -> String {
        let store = dispatcher.store.status()
        var line = "Serving \(connections) connections, \(dispatcher.stats.totalRequests) requests (\(Int(rate))/s); store \(store.kind) "
        line += store.available ? "up" : "DOWN"
        if let summary = store.summary {
            line += ": \(summary)"
        }
        return line
    }
}

/// Hands a topology's node events to the store built over it (the store is made after its topology).
final class NodeEvents: Sendable {
    private struct Target { weak var store: RedisCacheStore? }
    private let target = NIOLockedValueBox(Target())

    func connect(_ store: RedisCacheStore) {
        target.withLockedValue { $0.store = store }
    }

    func deliver(_ event: RedisNodeEvent) {
        target.withLockedValue { $0.store }?.handle(event)
    }
}
