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

/// The Unix-socket JSON-RPC server: binds (or adopts systemd's socket), serves until a graceful
/// shutdown, then stops accepting, lets in-flight requests finish within the drain deadline, answers
/// the rest with -32007, and removes the socket file it created (never one systemd owns).
public final class CacheServer: Sendable {
    /// How the listening socket is obtained.
    public enum Listener: Sendable {
        /// Bind this path (removing a stale socket file, refusing if another server answers on it).
        case path(String)
        /// Serve a listening socket passed by systemd (socket activation).
        case adopted(CInt)
    }

    private let listener: Listener
    private let configuration: DaemonConfiguration
    private let dispatcher: RequestDispatcher
    private let group: any EventLoopGroup
    private let logger: Logger
    private let connections = ConnectionRegistry()
    private let answerBuffers = LoopAnswerBuffers()
    private let serverChannel = NIOLockedValueBox<(any Channel)?>(nil)

    public init(
        listener: Listener, configuration: DaemonConfiguration, dispatcher: RequestDispatcher,
        group: any EventLoopGroup, logger: Logger
    ) {
        self.listener = listener
        self.configuration = configuration
        self.dispatcher = dispatcher
        self.group = group
        self.logger = logger
    }

    /// Whether the listening socket is open.
    public var isServing: Bool { serverChannel.withLockedValue { $0?.isActive ?? false } }

    /// Open client connections.
    public var connectionCount: Int { connections.count }

    /// Binds, calls `onReady`, serves until graceful shutdown (or cancellation), calls `onStopping`, drains.
    public func run(onReady: @Sendable () -> Void = {}, onStopping: @Sendable () -> Void = {}) async throws {
        let quiesce = ServerQuiescingHelper(group: group)
        let channel = try await bind(quiesce: quiesce)
        serverChannel.withLockedValue { $0 = channel }
        onReady()
        try? await gracefulShutdown()
        onStopping()
        logger.info("stopping: no new connections; draining in-flight requests", metadata: ["connections": "\(connections.count)"])
        let drained = group.any().makePromise(of: Void.self)
        quiesce.initiateShutdown(promise: drained)
        // The drain deadline in force now: a reload may have changed it since the start.
        let deadline = group.any().scheduleTask(in: TimeAmount(dispatcher.currentConfiguration.live.shutdownTimeout)) {
            drained.fail(CachedError(.shuttingDown, "drain deadline passed"))
        }
        // A second signal cancels the service group: stop waiting at once.
        await withTaskCancellationHandler {
            do {
                try await drained.futureResult.get()
            } catch {
                logger.warning("drain deadline passed; answering what is left with -32007", metadata: ["connections": "\(connections.count)"])
                connections.forEach { $0.pipeline.fireUserInboundEventTriggered(DrainDeadlineEvent()) }
                // Give the answers a moment to be written, then close whatever is left.
                try? await Task.sleep(for: .milliseconds(200))
                connections.forEach { $0.close(promise: nil) }
            }
        } onCancel: {
            drained.fail(CachedError(.shuttingDown, "cancelled"))
        }
        deadline.cancel()
        if case .path(let path) = listener {
            unlink(path)
        }
    }

    private func bind(quiesce: ServerQuiescingHelper) async throws -> any Channel {
        let dispatcher = self.dispatcher
        let answerBuffers = self.answerBuffers
        let limits = configuration.startup.limits
        let logger = self.logger
        let connections = self.connections
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 4096)
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
                let count = connections.add(channel)
                dispatcher.stats.connectionOpened()
                channel.closeFuture.whenComplete { _ in
                    connections.remove(channel)
                    dispatcher.stats.connectionClosed()
                }
                if count > limits.maxConnections {
                    dispatcher.stats.connectionRefused()
                    logger.warning("connection refused: limit reached", metadata: ["limit": "\(limits.maxConnections)"])
                    return Self.refuse(
                        channel,
                        .limitExceeded("Too many connections (limit \(limits.maxConnections))", limit: "max_connections", value: limits.maxConnections))
                }
                let policy = ConnectionGate(configuration: dispatcher.currentConfiguration)
                let serve: @Sendable (PeerCredentials?) -> EventLoopFuture<Void> = { peer in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandlers([
                            ConnectionDeadlineHandler(
                                lineTimeout: limits.lineTimeout > .zero ? TimeAmount(limits.lineTimeout) : nil,
                                idleTimeout: limits.idleTimeout > .zero ? TimeAmount(limits.idleTimeout) : nil,
                                logger: logger),
                            ClientConnectionHandler(
                                dispatcher: dispatcher, limits: limits, logger: logger, answerBuffers: answerBuffers, peer: peer),
                        ])
                    }
                }
                // The peer is read at accept: the connection gate, and the per-key access rules (`[[access]]`, which a
                // reload can add, so always) go by it.
                guard policy.isRestricted else {
                    return PeerCredentials.of(channel).map(Optional.some).recover { _ in nil }.flatMap(serve)
                }
                return PeerCredentials.of(channel).flatMap { peer in
                    if policy.allows(peer) { return serve(peer) }
                    dispatcher.stats.connectionRefused()
                    logger.warning("connection refused: peer not allowed", metadata: ["pid": "\(peer.pid)", "uid": "\(peer.uid)", "gid": "\(peer.gid)"])
                    return Self.refuse(channel, CachedError(.accessDenied, "Access denied for uid \(peer.uid)"))
                }.flatMapError { error in
                    logger.warning("connection refused: no peer credentials", metadata: ["error": "\(error)"])
                    return Self.refuse(channel, CachedError(.accessDenied, "Access denied"))
                }
            }

        switch listener {
        case .path(let path):
            try await Self.removeStaleSocket(path, group: group)
            // Bound, given its mode and group, and only then listening: no client can connect while the
            // socket still has the mode the umask gave it.
            let fd = try Self.boundSocket(path)
            do {
                chmod(path, mode_t(configuration.startup.socketMode))
                if let groupName = configuration.startup.socketGroup {
                    guard let gid = ConnectionGate.groupID(groupName) else {
                        throw ConfigurationError("socket_group: no group named \(groupName)")
                    }
                    guard chown(path, uid_t.max, gid) == 0 else {
                        throw ConfigurationError("socket_group: cannot give \(path) to group \(groupName): \(String(cString: strerror(errno)))")
                    }
                }
                guard listen(fd, 4096) == 0 else {
                    throw ConfigurationError("cannot listen on \(path): \(String(cString: strerror(errno)))")
                }
            } catch {
                close(fd)
                throw error
            }
            let channel = try await bootstrap.withBoundSocket(fd).get()
            logger.info("serving", metadata: ["socket": "\(path)", "mode": "\(String(configuration.startup.socketMode, radix: 8))"])
            return channel
        case .adopted(let fd):
            let channel = try await bootstrap.withBoundSocket(fd).get()
            logger.info("serving the socket passed by systemd", metadata: ["fd": "\(fd)"])
            return channel
        }
    }

    private static func refuse(_ channel: any Channel, _ error: CachedError) -> EventLoopFuture<Void> {
        channel.eventLoop.makeCompletedFuture {
            try channel.pipeline.syncOperations.addHandler(RefuseConnectionHandler(error: error))
        }
    }

    /// Removes a socket file nobody serves; refuses to start if another server answers on it.
    /// A non-blocking Unix stream socket bound to `path`, not yet listening.
    static func boundSocket(_ path: String) throws -> CInt {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
            throw ConfigurationError("socket path too long (at most \(MemoryLayout.size(ofValue: address.sun_path) - 1) bytes): \(path)")
        }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw ConfigurationError("cannot create a socket for \(path): \(String(cString: strerror(errno)))") }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard bound == 0 else {
            let message = String(cString: strerror(errno))
            close(fd)
            throw ConfigurationError("cannot bind \(path): \(message)")
        }
        return fd
    }

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

/// The open client connections, to reach them at shutdown.
final class ConnectionRegistry: Sendable {
    private let channels = NIOLockedValueBox<[ObjectIdentifier: any Channel]>([:])

    /// Adds a connection; returns how many are open.
    func add(_ channel: any Channel) -> Int {
        channels.withLockedValue {
            $0[ObjectIdentifier(channel)] = channel
            return $0.count
        }
    }

    func remove(_ channel: any Channel) {
        _ = channels.withLockedValue { $0.removeValue(forKey: ObjectIdentifier(channel)) }
    }

    var count: Int { channels.withLockedValue { $0.count } }

    func forEach(_ body: (any Channel) -> Void) {
        let all = channels.withLockedValue { Array($0.values) }
        all.forEach(body)
    }
}
