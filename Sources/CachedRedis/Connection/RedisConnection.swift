import Atomics
import CachedProtocol
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL

/// One multiplexed, pipelined connection to Redis.
public final class RedisConnection: Sendable {
    public let channel: any Channel
    /// Unique in this process (never reused), so state tied to a connection can name it.
    public let id: UInt64
    /// Advanced by every reply (see ``ProofClock``).
    public let proof: ProofClock
    private let tracking = NIOLockedValueBox<Tracking?>(nil)
    private static let ids = ManagedAtomic<UInt64>(0)

    /// Where this connection's reads are tracked, and what vouches for them.
    public struct Tracking: Sendable {
        /// The invalidation listener's client id (`CLIENT TRACKING on REDIRECT <id>`).
        public var redirect: Int64
        /// This connection's proof with the listener's.
        public var proof: EntryProof
    }

    init(channel: any Channel, id: UInt64, proof: ProofClock) {
        self.channel = channel
        self.id = id
        self.proof = proof
    }

    static func nextID() -> UInt64 { ids.wrappingIncrementThenLoad(ordering: .relaxed) }

    /// The invalidation listener this connection's reads are tracked for (`CLIENT TRACKING on REDIRECT`), if any.
    public var trackingRedirect: Int64? { tracking.withLockedValue { $0?.redirect } }

    /// Where this connection's reads are tracked, if they are.
    public var currentTracking: Tracking? { tracking.withLockedValue { $0 } }

    /// Turns on client-side-caching tracking of this connection's reads, redirected to `listener`, whose
    /// heartbeats advance `listenerProof`.
    public func enableTracking(redirectTo listener: Int64, listenerProof: ProofClock) -> EventLoopFuture<Void> {
        send(RedisCommand("CLIENT", "TRACKING", "on", "REDIRECT", .string(String(listener)))).flatMapThrowing { reply in
            guard case .status = reply else { throw RedisClientError(.errorReply, "CLIENT TRACKING: \(reply)") }
            let proof = EntryProof(connection: self.proof, listener: listenerProof)
            self.tracking.withLockedValue { $0 = Tracking(redirect: listener, proof: proof) }
        }
    }

    public var eventLoop: any EventLoop { channel.eventLoop }
    public var isActive: Bool { channel.isActive }

    /// Sends a command; the future completes with Redis's reply (an error reply is a *successful* future
    /// holding `.error`), or fails with a ``RedisClientError``.
    public func send(_ command: RedisCommand) -> EventLoopFuture<RedisReply> {
        let promise = channel.eventLoop.makePromise(of: RedisReply.self)
        let request = RedisRequest(command: command, promise: promise)
        if channel.eventLoop.inEventLoop {
            channel.pipeline.syncOperations.write(NIOAny(request)).whenFailure { _ in
                promise.fail(RedisClientError(.unavailable, "the connection to Redis closed before the command was sent"))
            }
        } else {
            let channel = self.channel
            channel.eventLoop.execute {
                channel.pipeline.syncOperations.write(NIOAny(request)).whenFailure { _ in
                    promise.fail(RedisClientError(.unavailable, "the connection to Redis closed before the command was sent"))
                }
            }
        }
        return promise.futureResult
    }

    /// Sends `ASKING` then `command`, adjacent on this connection (an `ASK` redirect); the future holds
    /// the command's reply.
    public func sendAsking(_ command: RedisCommand) -> EventLoopFuture<RedisReply> {
        let asking = channel.eventLoop.makePromise(of: RedisReply.self)
        let promise = channel.eventLoop.makePromise(of: RedisReply.self)
        let channel = self.channel
        let write: @Sendable () -> Void = {
            let failed: @Sendable (any Error) -> Void = { _ in
                let error = RedisClientError(.unavailable, "the connection to Redis closed before the command was sent")
                asking.fail(error)
                promise.fail(error)
            }
            channel.pipeline.syncOperations.write(NIOAny(RedisRequest(command: RedisCommand("ASKING"), promise: asking))).whenFailure(failed)
            channel.pipeline.syncOperations.write(NIOAny(RedisRequest(command: command, promise: promise))).whenFailure(failed)
        }
        if channel.eventLoop.inEventLoop { write() } else { channel.eventLoop.execute(write) }
        return asking.futureResult.flatMap { _ in promise.futureResult }
    }

    public func close() -> EventLoopFuture<Void> {
        channel.close()
    }

    /// Connects, then authenticates and selects the database; `metrics` (the node's) counts its round trips.
    public static func connect(
        configuration: RedisConfiguration, eventLoop: any EventLoop, metrics: RedisNodeMetrics? = nil
    ) -> EventLoopFuture<RedisConnection> {
        let timeout = configuration.commandTimeout
        let heartbeat = configuration.heartbeatInterval
        let id = RedisConnection.nextID()
        let proof = ProofClock()
        // TLS (`rediss://`): a certificate problem fails this attempt with an error naming the file or the
        // verification failure; the pool logs it and retries with backoff (the daemon runs degraded).
        let tls: TLSSetup?
        do {
            tls = try Self.tlsSetup(configuration)
        } catch {
            return eventLoop.makeFailedFuture(error)
        }
        let bootstrap = ClientBootstrap(group: eventLoop)
            .connectTimeout(configuration.connectTimeout)
            .channelOption(.socketOption(.so_keepalive), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if let tls {
                        try channel.pipeline.syncOperations.addHandler(
                            NIOSSLClientHandler(context: tls.context, serverHostname: tls.serverHostname))
                    }
                    try channel.pipeline.syncOperations.addHandlers([
                        ByteToMessageHandler(RedisReplyDecoder()),
                        RedisCommandHandler(commandTimeout: timeout, metrics: metrics, proof: proof, heartbeat: heartbeat),
                    ])
                }
            }
        let connected: EventLoopFuture<any Channel>
        switch configuration.endpoint {
        case .tcp(let host, let port):
            connected = bootstrap.channelOption(.socketOption(.tcp_nodelay), value: 1).connect(host: host, port: port)
        case .unix(let path):
            connected = bootstrap.connect(unixDomainSocketPath: path)
        }
        return connected.flatMap { channel in
            let connection = RedisConnection(channel: channel, id: id, proof: proof)
            return connection.handshake(configuration).map { connection }.flatMapError { error in
                channel.close(promise: nil)
                return channel.eventLoop.makeFailedFuture(error)
            }
        }
    }

    /// What a TLS handler is made from.
    struct TLSSetup: Sendable {
        var context: NIOSSLContext
        /// SNI and the name verified (nil for an IP address, verified against the certificate's IP entries).
        var serverHostname: String?
    }

    /// The TLS context and server name for a `rediss://` endpoint (nil otherwise), with verification always on.
    static func tlsSetup(_ configuration: RedisConfiguration) throws -> TLSSetup? {
        guard let settings = configuration.tls, case .tcp(let host, _) = configuration.endpoint else { return nil }
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.certificateVerification = .fullVerification
        if let caFile = settings.caFile {
            tls.trustRoots = .certificates(try loadPEM(caFile, what: "tls_ca_file") { try NIOSSLCertificate.fromPEMFile($0) })
        }
        if let certificateFile = settings.certificateFile {
            let chain = try loadPEM(certificateFile, what: "tls_cert_file") { try NIOSSLCertificate.fromPEMFile($0) }
            tls.certificateChain = chain.map { .certificate($0) }
            guard let keyFile = settings.keyFile else {
                throw RedisClientError(.tlsConfiguration, "tls_cert_file is set but tls_key_file is not")
            }
            let key = try loadPEM(keyFile, what: "tls_key_file") { [try NIOSSLPrivateKey(file: $0, format: .pem)] }
            tls.privateKey = .privateKey(key[0])
        }
        let context: NIOSSLContext
        do {
            context = try NIOSSLContext(configuration: tls)
        } catch {
            throw RedisClientError(.tlsConfiguration, "cannot set up TLS: \(error)")
        }
        // SNI and the name to verify: the configured name, or the URL's host. An IP address is verified
        // against the certificate's IP entries and is not sent as SNI.
        let name = settings.serverName ?? host
        let isAddress = (try? SocketAddress(ipAddress: name, port: 0)) != nil
        let setup = TLSSetup(context: context, serverHostname: isAddress ? nil : name)
        do {
            _ = try NIOSSLClientHandler(context: context, serverHostname: setup.serverHostname)  // refuses a bad name here
        } catch {
            throw RedisClientError(.tlsConfiguration, "cannot set up TLS for \(name): \(error)")
        }
        return setup
    }

    private static func loadPEM<T>(_ path: String, what: String, _ load: (String) throws -> [T]) throws -> [T] {
        do {
            let items = try load(path)
            guard !items.isEmpty else { throw RedisClientError(.tlsConfiguration, "\(what) \(path) holds no PEM item") }
            return items
        } catch let error as RedisClientError {
            throw error
        } catch {
            throw RedisClientError(.tlsConfiguration, "\(what) \(path) cannot be read: \(error)")
        }
    }

    private func handshake(_ configuration: RedisConfiguration) -> EventLoopFuture<Void> {
        var steps: [RedisCommand] = []
        if let password = configuration.password {
            if let username = configuration.username {
                steps.append(RedisCommand("AUTH", .string(username), .string(password)))
            } else {
                steps.append(RedisCommand("AUTH", .string(password)))
            }
        }
        if configuration.database != 0 {
            steps.append(RedisCommand("SELECT", .string(String(configuration.database))))
        }
        // Proves the connection usable before it serves requests (a missing password shows up here as NOAUTH).
        steps.append(RedisCommand("PING"))
        let futures = steps.map { send($0) }
        return EventLoopFuture.whenAllSucceed(futures, on: eventLoop).flatMapThrowing { replies in
            for reply in replies {
                if case .error(let message) = reply {
                    throw RedisClientError(.errorReply, message)
                }
            }
        }
    }
}
