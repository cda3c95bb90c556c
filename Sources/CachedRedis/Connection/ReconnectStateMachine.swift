import NIOCore

/// One connection kept up for as long as it is wanted: connect, serve, and after a failed attempt or a
/// lost connection try again after a jittered exponential backoff, until stopped.
///
/// Pure: events in, actions out, no timers and no sockets (``Reconnector`` runs it). Every pool slot and
/// the invalidation listener use it, so both back off the same way.
package struct ReconnectStateMachine: Sendable {
    /// How long to wait before attempt *n* after *n - 1* failures in a row.
    package struct Backoff: Sendable, Hashable {
        /// The first delay.
        package var base: TimeAmount
        /// The longest delay.
        package var cap: TimeAmount
        /// Each delay is multiplied by a factor drawn from this range, so that many clients do not
        /// come back in step.
        package var jitter: ClosedRange<Double>

        package init(base: TimeAmount, cap: TimeAmount, jitter: ClosedRange<Double> = 0.8...1.2) {
            self.base = base
            self.cap = cap
            self.jitter = jitter
        }

        /// The delay after `failures` failures in a row (at least 1), before jitter: base, 2 base, 4 base ... cap.
        package func delay(afterFailures failures: Int) -> TimeAmount {
            let exponent = min(max(failures - 1, 0), 20)
            return .nanoseconds(min(cap.nanoseconds, base.nanoseconds << exponent))
        }
    }

    enum State: Hashable {
        /// Not started.
        case idle
        /// An attempt is under way.
        case connecting
        /// Up.
        case connected
        /// Waiting to try again.
        case waiting
        /// Stopped for good.
        case stopped
    }

    /// What the runner must do.
    package enum Action: Equatable, Sendable {
        /// Start a connection attempt.
        case connect
        /// Keep the new connection: it serves from now on.
        case use
        /// Close the connection that just came up (stopped meanwhile).
        case closeNew
        /// Try again after this delay (jitter applied). `failures` counts the failures in a row.
        case retry(after: TimeAmount, failures: Int)
        /// Cancel a scheduled retry, and close the current connection if there is one.
        case shutDown
        /// Nothing.
        case none
    }

    private(set) var state = State.idle
    /// Failures in a row since the last connection came up.
    package private(set) var failures = 0
    let backoff: Backoff

    package init(backoff: Backoff) {
        self.backoff = backoff
    }

    package var isConnected: Bool { state == .connected }
    package var isStopped: Bool { state == .stopped }

    /// The first attempt.
    package mutating func start() -> Action {
        guard state == .idle else { return .none }
        state = .connecting
        return .connect
    }

    /// The attempt succeeded.
    package mutating func attemptSucceeded() -> Action {
        guard state == .connecting else { return .closeNew }
        state = .connected
        failures = 0
        return .use
    }

    /// The attempt failed.
    package mutating func attemptFailed(random: Double) -> Action {
        guard state == .connecting else { return .none }
        return scheduleRetry(random: random)
    }

    /// The connection in use closed (Redis closed it, the network dropped, or the daemon recycled it).
    package mutating func connectionLost(random: Double) -> Action {
        guard state == .connected else { return .none }
        return scheduleRetry(random: random)
    }

    /// The retry delay passed.
    package mutating func retryDue() -> Action {
        guard state == .waiting else { return .none }
        state = .connecting
        return .connect
    }

    /// Stop for good: no more attempts; what is up is closed.
    package mutating func stop() -> Action {
        guard state != .stopped else { return .none }
        state = .stopped
        return .shutDown
    }

    /// - Parameter random: a number in 0...1 that picks the jitter factor.
    private mutating func scheduleRetry(random: Double) -> Action {
        failures += 1
        state = .waiting
        let delay = backoff.delay(afterFailures: failures)
        let span = backoff.jitter.upperBound - backoff.jitter.lowerBound
        let factor = backoff.jitter.lowerBound + min(max(random, 0), 1) * span
        return .retry(after: .nanoseconds(Int64(Double(delay.nanoseconds) * factor)), failures: failures)
    }
}
