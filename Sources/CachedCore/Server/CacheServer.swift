import CachedProtocol
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOExtras
import NIOPosix
import ServiceLifecycle

#if canImport(Glibc)
import Glibc
#endif

/// The Unix-socket JSON-RPC server, run as a ``Service``: binds, serves until graceful shutdown, then
/// stops accepting, lets in-flight requests finish, and removes the socket file it created.
public final class CacheServer: Service, Sendable {
    /// How the listening socket is obtained.
    public enum Listener: Sendable {
        /// Bind this path (removing a stale socket file, refusing if another server answers on it).
        case path(String)
    }

    private let listener: Listener
    private let configuration: DaemonConfiguration
    private let dispatcher: RequestDispatcher
    private let group: any EventLoopGroup
    private let logger: Logger
    private let onReady: @Sendable () -> Void
    private let drainTimeout: TimeAmount

    public init(
        listener: Listener, configuration: DaemonConfiguration, dispatcher: RequestDispatcher,
        group: any EventLoopGroup, logger: Logger, drainTimeout: TimeAmount = .seconds(10),
        onReady: @escaping @Sendable () -> Void = {}
    ) {
        self.listener = listener
        self.configuration = configuration
        self.dispatcher = dispatcher
        self.group = group
        self.logger = logger
        self.onReady = onReady
        self.drainTimeout = drainTimeout
    }

    public func run() async throws {
        let quiesce = ServerQuiescingHelper(group: group)
        let channel = try await bind(quiesce: quiesce)
        onReady()
        // Serve until a graceful shutdown is requested (or the task is cancelled).
        try? await gracefulShutdown()
        logger.info("stopping: no new connections; draining in-flight requests")
        let drained = group.any().makePromise(of: Void.self)
        quiesce.initiateShutdown(promise: drained)
        let timeout = group.any().scheduleTask(in: drainTimeout) {
            drained.fail(CachedError(.shuttingDown, "drain deadline passed"))
        }
        do {
            try await drained.futureResult.get()
        } catch {
            logger.warning("drain deadline passed; closing remaining connections")
        }
        timeout.cancel()
        if case .path(let path) = listener {
            unlink(path)
        }
        _ = channel
    }

    private func bind(quiesce: ServerQuiescingHelper) async throws -> any Channel {
        let dispatcher = self.dispatcher
        let limits = configuration.limits
        let logger = self.logger
        let connections = ManagedCounter()
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 1024)
            .serverChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(quiesce.makeServerChannelHandler(channel: channel))
                }
            }
            .childChannelOption(.allowRemoteHalfClosure, value: true)
            .childChannelOption(
                .writeBufferWaterMark,
                value: .init(low: limits.maxOutputBytes / 2, high: limits.maxOutputBytes))
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let count = connections.increment()
                    channel.closeFuture.whenComplete { _ in
                        connections.decrement()
                        dispatcher.stats.connectionClosed()
                    }
                    dispatcher.stats.connectionOpened()
                    if count > limits.maxConnections {
                        dispatcher.stats.connectionRefused()
                        logger.warning("connection refused: limit reached", metadata: ["limit": "\(limits.maxConnections)"])
                        try channel.pipeline.syncOperations.addHandler(
                            RefuseConnectionHandler(
                                error: CachedError(
                                    .limitExceeded, "Too many connections (limit \(limits.maxConnections))",
                                    data: .object(["limit": .string("max_connections"), "value": .number(String(limits.maxConnections))]))))
                        return
                    }
                    try channel.pipeline.syncOperations.addHandlers([
                        ByteToMessageHandler(LineBasedFrameDecoder(), maximumBufferSize: limits.maxLineBytes),
                        ClientConnectionHandler(dispatcher: dispatcher, limits: limits, logger: logger),
                    ])
                }
            }

        switch listener {
        case .path(let path):
            try await Self.removeStaleSocket(path, group: group)
            let channel = try await bootstrap.bind(unixDomainSocketPath: path, cleanupExistingSocketFile: false).get()
            chmod(path, mode_t(configuration.socketMode))
            logger.info("serving", metadata: ["socket": "\(path)", "mode": "\(String(configuration.socketMode, radix: 8))"])
            return channel
        }
    }

    /// Removes a socket file nobody serves; refuses to start if another server answers on it.
    static func removeStaleSocket(_ path: String, group: any EventLoopGroup) async throws {
        var info = stat()
        guard lstat(path, &info) == 0 else { return }
        guard (info.st_mode & S_IFMT) == S_IFSOCK else {
            throw ConfigurationError("\(path) exists and is not a socket")
        }
        let probe = try? await ClientBootstrap(group: group).connectTimeout(.milliseconds(500))
            .connect(unixDomainSocketPath: path).get()
        if let probe {
            try? await probe.close()
            throw ConfigurationError("another server is already serving \(path)")
        }
        unlink(path)
    }
}

/// A thread-safe counter of open connections.
final class ManagedCounter: Sendable {
    private let value = NIOLockedValueBox(0)
    func increment() -> Int { value.withLockedValue { $0 += 1; return $0 } }
    func decrement() { value.withLockedValue { $0 -= 1 } }
}
