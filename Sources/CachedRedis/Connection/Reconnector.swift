import NIOConcurrencyHelpers
import NIOCore

/// Keeps one connection up with ``ReconnectStateMachine``: runs its actions (attempts, retry timers,
/// closes) and reports what happened. Pool slots and the invalidation listener are thin users of it.
package final class Reconnector<Connection: AnyObject & Sendable>: Sendable {
    /// What happened, reported outside the lock, on the reconnector's event loop or the attempt's.
    package enum Event: Sendable {
        /// A connection came up after `failures` failed attempts in a row; it serves until `lost`.
        case up(Connection, afterFailures: Int)
        /// The connection in use closed.
        case lost(Connection)
        /// An attempt failed (`failures` in a row); the next one comes after `retry`.
        case failed(any Error, failures: Int, retry: TimeAmount)
    }

    package let eventLoop: any EventLoop
    private let connect: @Sendable () -> EventLoopFuture<Connection>
    private let closeFuture: @Sendable (Connection) -> EventLoopFuture<Void>
    private let close: @Sendable (Connection) -> EventLoopFuture<Void>
    private let onEvent: @Sendable (Event) -> Void
    private let state: NIOLockedValueBox<State>

    struct State {
        var machine: ReconnectStateMachine
        var connection: Connection?
        var retry: Scheduled<Void>?
        var firstAttempt: EventLoopPromise<Void>?
    }

    /// - Parameters:
    ///   - connect: one attempt (connect and prepare the connection).
    ///   - closeFuture: completes when the connection closes.
    ///   - close: closes the connection.
    ///   - onEvent: what happened.
    package init(
        eventLoop: any EventLoop, backoff: ReconnectStateMachine.Backoff,
        connect: @escaping @Sendable () -> EventLoopFuture<Connection>,
        closeFuture: @escaping @Sendable (Connection) -> EventLoopFuture<Void>,
        close: @escaping @Sendable (Connection) -> EventLoopFuture<Void>,
        onEvent: @escaping @Sendable (Event) -> Void
    ) {
        self.eventLoop = eventLoop
        self.connect = connect
        self.closeFuture = closeFuture
        self.close = close
        self.onEvent = onEvent
        self.state = NIOLockedValueBox(State(machine: ReconnectStateMachine(backoff: backoff)))
    }

    /// The connection that is up, if any.
    package var current: Connection? {
        state.withLockedValue { $0.connection }
    }

    /// Starts connecting; returns once the first attempt has ended (up or not).
    package func start() async {
        let promise = eventLoop.makePromise(of: Void.self)
        let action = state.withLockedValue { state -> ReconnectStateMachine.Action in
            state.firstAttempt = promise
            return state.machine.start()
        }
        if action == .connect {
            eventLoop.execute { self.attempt() }
        } else {
            promise.succeed()
        }
        try? await promise.futureResult.get()
    }

    /// Stops reconnecting and closes the connection.
    package func shutdown() async {
        let (action, connection, retry, first) = state.withLockedValue { state in
            let result = (state.machine.stop(), state.connection, state.retry, state.firstAttempt)
            state.connection = nil
            state.retry = nil
            state.firstAttempt = nil
            return result
        }
        first?.succeed()
        guard action == .shutDown else { return }
        retry?.cancel()
        if let connection { try? await close(connection).get() }
    }

    private func attempt() {
        connect().whenComplete { result in
            switch result {
            case .success(let connection):
                let (action, failures, first) = self.state.withLockedValue { state in
                    let failures = state.machine.failures
                    let action = state.machine.attemptSucceeded()
                    if action == .use { state.connection = connection }
                    defer { state.firstAttempt = nil }
                    return (action, failures, state.firstAttempt)
                }
                first?.succeed()
                guard action == .use else {
                    _ = self.close(connection)
                    return
                }
                self.closeFuture(connection).whenComplete { _ in self.lost(connection) }
                self.onEvent(.up(connection, afterFailures: failures))
            case .failure(let error):
                let action = self.state.withLockedValue { $0.machine.attemptFailed(random: Double.random(in: 0...1)) }
                if case .retry(let delay, let failures) = action {
                    self.onEvent(.failed(error, failures: failures, retry: delay))
                }
                self.run(action)
            }
        }
    }

    private func lost(_ connection: Connection) {
        let action = state.withLockedValue { state -> ReconnectStateMachine.Action in
            guard state.connection === connection else { return .none }
            state.connection = nil
            return state.machine.connectionLost(random: Double.random(in: 0...1))
        }
        guard action != .none else { return }
        onEvent(.lost(connection))
        run(action)
    }

    private func run(_ action: ReconnectStateMachine.Action) {
        let first = state.withLockedValue { state in
            defer { state.firstAttempt = nil }
            return state.firstAttempt
        }
        first?.succeed()
        guard case .retry(let delay, _) = action else { return }
        let task = eventLoop.scheduleTask(in: delay) {
            let next = self.state.withLockedValue { $0.machine.retryDue() }
            if next == .connect { self.attempt() }
        }
        let stopped = state.withLockedValue { state in
            if !state.machine.isStopped { state.retry = task }
            return state.machine.isStopped
        }
        if stopped { task.cancel() }
    }
}
