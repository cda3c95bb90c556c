import Atomics
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
    private let trackingRedirect = NIOLockedValueBox<Int64?>(nil)

    public init(configuration: RedisConfiguration, group: any EventLoopGroup, logger: Logger) {
        self.configuration = configuration
        self.logger = logger
        var slots: [Slot] = []
        var iterator = group.makeIterator()
        for index in 0..<max(1, configuration.poolSize) {
            let loop = iterator.next() ?? group.next()
            slots.append(Slot(index: index, eventLoop: loop, configuration: configuration, logger: logger, trackingRedirect: trackingRedirect))
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
    public func setTrackingRedirect(_ listener: Int64?) -> EventLoopFuture<Void> {
        trackingRedirect.withLockedValue { $0 = listener }
        let loop = slots[0].eventLoop
        guard let listener else { return loop.makeSucceededVoidFuture() }
        let futures = slots.compactMap { $0.current }.map { $0.enableTracking(redirectTo: listener).recover { _ in } }
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

extension RedisConnectionPool {
    /// One connection's lifecycle: connect, serve, reconnect with backoff when it drops.
    final class Slot: Sendable {
        let index: Int
        let eventLoop: any EventLoop
        let configuration: RedisConfiguration
        let logger: Logger
        let trackingRedirect: NIOLockedValueBox<Int64?>
        private let state: NIOLockedValueBox<State>

        struct State {
            var connection: RedisConnection?
            var failures = 0
            var stopped = false
            var reconnect: Scheduled<Void>?
            var firstAttempt: EventLoopPromise<Void>?
        }

        init(index: Int, eventLoop: any EventLoop, configuration: RedisConfiguration, logger: Logger, trackingRedirect: NIOLockedValueBox<Int64?>) {
            self.trackingRedirect = trackingRedirect
            self.index = index
            self.eventLoop = eventLoop
            self.configuration = configuration
            self.logger = logger
            self.state = NIOLockedValueBox(State())
        }

        var current: RedisConnection? {
            state.withLockedValue { $0.connection }
        }

        func start() async {
            let promise = eventLoop.makePromise(of: Void.self)
            state.withLockedValue { $0.firstAttempt = promise }
            eventLoop.execute { self.connect() }
            try? await promise.futureResult.get()
        }

        func shutdown() async {
            let (connection, reconnect, first) = state.withLockedValue { state in
                state.stopped = true
                let result = (state.connection, state.reconnect, state.firstAttempt)
                state.connection = nil
                state.reconnect = nil
                state.firstAttempt = nil
                return result
            }
            reconnect?.cancel()
            first?.succeed()
            try? await connection?.close().get()
        }

        private func connect() {
            guard !state.withLockedValue({ $0.stopped }) else { return }
            let redirect = trackingRedirect.withLockedValue { $0 }
            RedisConnection.connect(configuration: configuration, eventLoop: eventLoop).flatMap { connection in
                // Reads on this connection are tracked for the local cache (when an invalidation listener is up).
                guard let redirect else { return connection.eventLoop.makeSucceededFuture(connection) }
                return connection.enableTracking(redirectTo: redirect).map { connection }.recover { _ in connection }
            }.whenComplete { result in
                switch result {
                case .success(let connection):
                    let (stopped, failures, first) = self.state.withLockedValue { state in
                        let f = state.failures
                        if !state.stopped {
                            state.connection = connection
                            state.failures = 0
                        }
                        let first = state.firstAttempt
                        state.firstAttempt = nil
                        return (state.stopped, f, first)
                    }
                    first?.succeed()
                    if stopped {
                        connection.close(promise: nil)
                        return
                    }
                    self.logger.info(
                        "connected to Redis",
                        metadata: ["slot": "\(self.index)", "redis": "\(self.configuration.redactedDescription)", "after_failures": "\(failures)"])
                    connection.channel.closeFuture.whenComplete { _ in
                        self.connectionClosed(connection)
                    }
                case .failure(let error):
                    self.scheduleReconnect(after: error)
                }
            }
        }

        private func connectionClosed(_ connection: RedisConnection) {
            let stopped = state.withLockedValue { state in
                if state.connection === connection { state.connection = nil }
                return state.stopped
            }
            guard !stopped else { return }
            logger.warning("connection to Redis lost", metadata: ["slot": "\(index)"])
            scheduleReconnect(after: nil)
        }

        private func scheduleReconnect(after error: (any Error)?) {
            let (failures, first) = state.withLockedValue { state in
                state.failures += 1
                let first = state.firstAttempt
                state.firstAttempt = nil
                return (state.failures, first)
            }
            first?.succeed()
            let base = configuration.minimumReconnectDelay.nanoseconds
            let cap = configuration.maximumReconnectDelay.nanoseconds
            let exponent = min(failures - 1, 20)
            let delay = min(cap, base << exponent)
            let jittered = TimeAmount.nanoseconds(Int64(Double(delay) * Double.random(in: 0.8...1.2)))
            if let error, failures <= 2 || failures.isMultiple(of: 50) {
                logger.warning(
                    "cannot connect to Redis; retrying with backoff",
                    metadata: ["slot": "\(index)", "error": "\(error)", "failures": "\(failures)"])
            }
            let task = eventLoop.scheduleTask(in: jittered) { self.connect() }
            let stopped = state.withLockedValue { state in
                if !state.stopped { state.reconnect = task }
                return state.stopped
            }
            if stopped { task.cancel() }
        }
    }
}

extension RedisConnection {
    func close(promise: EventLoopPromise<Void>?) {
        channel.close(promise: promise)
    }
}
