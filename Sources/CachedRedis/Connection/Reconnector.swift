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
    /// Confined to ``eventLoop``: every step (start, attempts, losses, retries, shutdown) runs there.
    private let state: NIOLoopBoundBox<State>
    /// The connection that is up, for readers on any thread (requests pick a connection from their own loop);
    /// written only on ``eventLoop``.
    private let published = NIOLockedValueBox<Connection?>(nil)

    struct State {
        var machine: ReconnectStateMachine
        var connection: Connection? = nil
        var retry: Scheduled<Void>? = nil
        var firstAttempt: EventLoopPromise<Void>? = nil
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
        self.state = NIOLoopBoundBox.makeBoxSendingValue(State(machine: ReconnectStateMachine(backoff: backoff)), eventLoop: eventLoop)
    }

    /// The connection that is up, if any.
    package var current: Connection? {
        published.withLockedValue { $0 }
    }

    /// Sets the connection in use (on ``eventLoop``).
    private func use(_ connection: Connection?) {
        state.value.connection = connection
        published.withLockedValue { $0 = connection }
    }

    /// Starts connecting; returns once the first attempt has ended (up or not).
    package func start() async {
        let promise = eventLoop.makePromise(of: Void.self)
        eventLoop.execute {
            self.state.value.firstAttempt = promise
            if self.state.value.machine.start() == .connect {
                self.attempt()
            } else {
                self.state.value.firstAttempt = nil
                promise.succeed()
            }
        }
        try? await promise.futureResult.get()
    }

    /// Stops reconnecting and closes the connection.
    package func shutdown() async {
        let closing: EventLoopFuture<Void> = eventLoop.flatSubmit {
            let action = self.state.value.machine.stop()
            let (connection, retry, first) = (self.state.value.connection, self.state.value.retry, self.state.value.firstAttempt)
            self.use(nil)
            self.state.value.retry = nil
            self.state.value.firstAttempt = nil
            first?.succeed()
            guard action == .shutDown else { return self.eventLoop.makeSucceededVoidFuture() }
            retry?.cancel()
            guard let connection else { return self.eventLoop.makeSucceededVoidFuture() }
            return self.close(connection)
        }
        try? await closing.get()
    }

    /// Ends the wait of ``start()`` (the first attempt is over, whatever its outcome).
    private func endFirstAttempt() {
        let first = state.value.firstAttempt
        state.value.firstAttempt = nil
        first?.succeed()
    }

    private func attempt() {
        connect().hop(to: eventLoop).whenComplete { result in
            switch result {
            case .success(let connection):
                let failures = self.state.value.machine.failures
                let action = self.state.value.machine.attemptSucceeded()
                guard action == .use else {
                    self.endFirstAttempt()
                    _ = self.close(connection)
                    return
                }
                // Published before `start()` returns: a caller may send at once.
                self.use(connection)
                self.endFirstAttempt()
                self.closeFuture(connection).hop(to: self.eventLoop).whenComplete { _ in self.lost(connection) }
                self.onEvent(.up(connection, afterFailures: failures))
            case .failure(let error):
                let action = self.state.value.machine.attemptFailed(random: Double.random(in: 0...1))
                if case .retry(let delay, let failures) = action {
                    self.onEvent(.failed(error, failures: failures, retry: delay))
                }
                self.run(action)
            }
        }
    }

    private func lost(_ connection: Connection) {
        guard state.value.connection === connection else { return }
        use(nil)
        let action = state.value.machine.connectionLost(random: Double.random(in: 0...1))
        guard action != .none else { return }
        onEvent(.lost(connection))
        run(action)
    }

    private func run(_ action: ReconnectStateMachine.Action) {
        endFirstAttempt()
        guard case .retry(let delay, _) = action, !state.value.machine.isStopped else { return }
        state.value.retry = eventLoop.scheduleTask(in: delay) {
            self.state.value.retry = nil
            if self.state.value.machine.retryDue() == .connect { self.attempt() }
        }
    }
}
