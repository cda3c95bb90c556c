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

    public init(configuration: RedisConfiguration, group: any EventLoopGroup, logger: Logger) {
        self.configuration = configuration
        self.logger = logger
        var slots: [Slot] = []
        var iterator = group.makeIterator()
        for index in 0..<max(1, configuration.poolSize) {
            let loop = iterator.next() ?? group.next()
            slots.append(Slot(index: index, eventLoop: loop, configuration: configuration, logger: logger))
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

    /// How many connections are up.
    public var connectedCount: Int {
        slots.reduce(0) { $0 + ($1.current != nil ? 1 : 0) }
    }

    /// Sends a command on a connection that is up, preferring one on `eventLoop` (no thread hop).
    public func send(_ command: RedisCommand, preferring eventLoop: (any EventLoop)? = nil) -> EventLoopFuture<RedisReply> {
        if let eventLoop {
            for slot in slots where slot.eventLoop === eventLoop {
                if let connection = slot.current { return connection.send(command) }
            }
        }
        let start = next.loadThenWrappingIncrement(ordering: .relaxed)
        for offset in 0..<slots.count {
            let slot = slots[(start &+ offset) % slots.count]
            if let connection = slot.current { return connection.send(command) }
        }
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
        private let state: NIOLockedValueBox<State>

        struct State {
            var connection: RedisConnection?
            var failures = 0
            var stopped = false
            var reconnect: Scheduled<Void>?
            var firstAttempt: EventLoopPromise<Void>?
        }

        init(index: Int, eventLoop: any EventLoop, configuration: RedisConfiguration, logger: Logger) {
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
            RedisConnection.connect(configuration: configuration, eventLoop: eventLoop).whenComplete { result in
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
