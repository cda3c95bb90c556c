import Atomics
import CachedProtocol
import Logging
import NIOConcurrencyHelpers
import NIOCore

/// A fixed set of multiplexed Redis connections that reconnect by themselves with backoff.
///
/// Requests never wait for a connection: when none is up, they fail at once with
/// ``RedisClientError/Code/unavailable``, so an outage costs callers nothing but an error.
public final class RedisConnectionPool: Sendable {
    public let configuration: RedisConfiguration
    private let slots: [Slot]
    private let next = ManagedAtomic<Int>(0)
    private let logger: Logger

    /// The client id of the invalidation listener new connections redirect their tracking to (nil: no tracking).
    private let trackingRedirect = NIOLockedValueBox<TrackingTarget?>(nil)

    /// The listener new connections redirect their tracking to, and the clock its heartbeats advance.
    struct TrackingTarget: Sendable {
        var listener: Int64
        var proof: ProofClock
    }

    /// What the pool reports about its connections (beyond its own log lines).
    public enum ConnectionEvent: Sendable {
        /// A connection that was up closed.
        case lost
        /// An attempt to connect failed.
        case failed
    }

    /// - Parameter onConnectionEvent: told when a connection is lost or an attempt fails (a topology
    ///   re-resolves its nodes on it), on the connection's event loop.
    public init(
        configuration: RedisConfiguration, group: any EventLoopGroup, logger: Logger,
        metrics: RedisNodeMetrics = RedisNodeMetrics(),
        onConnectionEvent: @escaping @Sendable (ConnectionEvent) -> Void = { _ in }
    ) {
        self.configuration = configuration
        self.logger = logger
        var slots: [Slot] = []
        var iterator = group.makeIterator()
        for index in 0..<max(1, configuration.poolSize) {
            let loop = iterator.next() ?? group.next()
            slots.append(
                Slot(
                    index: index, eventLoop: loop, configuration: configuration, logger: logger,
                    trackingRedirect: trackingRedirect, metrics: metrics, onConnectionEvent: onConnectionEvent))
        }
        self.slots = slots
    }

    /// Starts connecting every slot; returns once each slot's first attempt ended (up or not).
    public func start() async {
        await withTaskGroup(of: Void.self) { group in
            for slot in slots {
                group.addTask { await slot.start() }
            }
        }
    }

    /// Closes every connection and stops reconnecting.
    public func shutdown() async {
        for slot in slots {
            await slot.shutdown()
        }
    }

    /// Redirects the tracking of every connection (current and future) to `listener`, or stops
    /// tracking new connections when nil. Returns when the current connections have switched.
    public func setTrackingRedirect(_ listener: Int64?, proof: ProofClock = ProofClock()) -> EventLoopFuture<Void> {
        trackingRedirect.withLockedValue { $0 = listener.map { TrackingTarget(listener: $0, proof: proof) } }
        let loop = slots[0].eventLoop
        guard let listener else { return loop.makeSucceededVoidFuture() }
        let futures = slots.compactMap { $0.current }.map { $0.enableTracking(redirectTo: listener, listenerProof: proof).recover { _ in } }
        return EventLoopFuture.andAllComplete(futures, on: loop)
    }

    /// The connection a request should use (the one on `eventLoop` when it is up), or nil if none is up.
    public func connection(preferring eventLoop: (any EventLoop)? = nil) -> RedisConnection? {
        if let eventLoop {
            for slot in slots where slot.eventLoop === eventLoop {
                if let connection = slot.current { return connection }
            }
        }
        let start = next.loadThenWrappingIncrement(ordering: .relaxed)
        for offset in 0..<slots.count {
            if let connection = slots[(start &+ offset) % slots.count].current { return connection }
        }
        return nil
    }

    /// How many connections are up.
    public var connectedCount: Int {
        slots.reduce(0) { $0 + ($1.current != nil ? 1 : 0) }
    }

    /// Sends a command on a connection that is up, preferring one on `eventLoop` (no thread hop).
    public func send(_ command: RedisCommand, preferring eventLoop: (any EventLoop)? = nil) -> EventLoopFuture<RedisReply> {
        if let connection = connection(preferring: eventLoop) { return connection.send(command) }
        let loop = eventLoop ?? slots[0].eventLoop
        return loop.makeFailedFuture(RedisClientError(.unavailable, "no connection to Redis is up"))
    }
}

// MARK: - Slot

extension RedisConfiguration {
    /// The backoff between attempts to (re)connect, for every connection to this Redis.
    var reconnectBackoff: ReconnectStateMachine.Backoff {
        ReconnectStateMachine.Backoff(base: minimumReconnectDelay, cap: maximumReconnectDelay)
    }
}

extension RedisConnectionPool {
    /// One connection of the pool, kept up by a ``Reconnector``; its reads are tracked for the local copy.
    final class Slot: Sendable {
        let index: Int
        let eventLoop: any EventLoop
        private let reconnector: Reconnector<RedisConnection>

        init(
            index: Int, eventLoop: any EventLoop, configuration: RedisConfiguration, logger: Logger,
            trackingRedirect: NIOLockedValueBox<TrackingTarget?>, metrics: RedisNodeMetrics,
            onConnectionEvent: @escaping @Sendable (ConnectionEvent) -> Void
        ) {
            self.index = index
            self.eventLoop = eventLoop
            let redacted = configuration.redactedDescription
            reconnector = Reconnector(
                eventLoop: eventLoop, backoff: configuration.reconnectBackoff,
                connect: {
                    let redirect = trackingRedirect.withLockedValue { $0 }
                    return RedisConnection.connect(configuration: configuration, eventLoop: eventLoop, metrics: metrics).flatMap { connection in
                        // Reads on this connection are tracked for the local cache (when an invalidation listener is up).
                        guard let redirect else { return connection.eventLoop.makeSucceededFuture(connection) }
                        return connection.enableTracking(redirectTo: redirect.listener, listenerProof: redirect.proof).map { connection }
                            .recover { _ in connection }
                    }
                },
                closeFuture: { $0.channel.closeFuture },
                close: { $0.close() },
                onEvent: { event in
                    switch event {
                    case .up(_, let failures):
                        metrics.connection(up: true, closing: false)
                        logger.info("connected to Redis", metadata: ["slot": "\(index)", "redis": "\(redacted)", "after_failures": "\(failures)"])
                    case .lost:
                        metrics.connection(up: false, closing: true)
                        logger.warning("connection to Redis lost", metadata: ["slot": "\(index)"])
                        onConnectionEvent(.lost)
                    case .failed(let error, let failures, _):
                        metrics.connection(up: false, closing: false)
                        onConnectionEvent(.failed)
                        if failures <= 2 || failures.isMultiple(of: 50) {
                            logger.warning(
                                "cannot connect to Redis; retrying with backoff",
                                metadata: ["slot": "\(index)", "error": "\(error)", "failures": "\(failures)"])
                        }
                    }
                })
        }

        var current: RedisConnection? { reconnector.current }

        func start() async { await reconnector.start() }

        func shutdown() async { await reconnector.shutdown() }
    }
}

extension RedisConnection {
    func close(promise: EventLoopPromise<Void>?) {
        channel.close(promise: promise)
    }
}
