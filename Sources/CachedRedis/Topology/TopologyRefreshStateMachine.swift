import NIOCore

/// What a Sentinel topology does next, as a pure state machine: at most one resolution of the master in
/// flight (a request during one is remembered and runs right after it), a switch when the confirmed
/// master is another node, backoff after failed resolutions. No I/O: ``SentinelTopology`` runs the actions.
package struct SentinelStateMachine: Sendable {
    package typealias Address = SentinelConfiguration.Address

    /// Why a resolution was asked for (kept for logs and tests).
    package enum Reason: Sendable, Hashable {
        case start, periodic, switchMessage, readOnly, connectionLost, retry, sentinelReconnected
    }

    package enum Action: Sendable, Hashable {
        /// Ask the Sentinels for the master and confirm it with `ROLE`; report with
        /// ``resolved(_:)`` or ``resolveFailed()``.
        case resolve
        /// Move the pool and the listener to `to`, drop what was read from `from`, then ``switchFinished(at:)``.
        case switchMaster(from: Address?, to: Address)
        /// Ask again after `delay` (as ``Reason/retry``).
        case retry(after: TimeAmount)
        case none
    }

    enum Phase: Sendable, Hashable {
        case idle
        /// A resolution (or the switch it led to) is running; `again`: another was asked for meanwhile.
        case resolving(again: Bool)
        case stopped
    }

    package private(set) var master: Address?
    private(set) var phase: Phase = .idle
    /// Resolutions that failed in a row.
    package private(set) var failures = 0
    package private(set) var switches = 0
    private let backoff: ReconnectStateMachine.Backoff

    package init(backoff: ReconnectStateMachine.Backoff) {
        self.backoff = backoff
    }

    package var isStopped: Bool { phase == .stopped }

    /// Something suggests the master may have changed (or it is time to check).
    package mutating func resolveRequested(_ reason: Reason) -> Action {
        switch phase {
        case .stopped: return .none
        case .resolving: phase = .resolving(again: true); return .none
        case .idle: phase = .resolving(again: false); return .resolve
        }
    }

    /// The Sentinels named `address` and it confirmed it is a master.
    package mutating func resolved(_ address: Address) -> Action {
        guard case .resolving = phase else { return .none }
        failures = 0
        if address != master {
            let from = master
            master = address
            switches += from == nil ? 0 : 1
            return .switchMaster(from: from, to: address)
        }
        return finish()
    }

    /// The switch asked for by ``resolved(_:)`` is done.
    package mutating func switchFinished() -> Action {
        guard case .resolving = phase else { return .none }
        return finish()
    }

    /// No Sentinel answered with a master that confirmed its role.
    package mutating func resolveFailed() -> Action {
        guard case .resolving = phase else { return .none }
        failures += 1
        phase = .idle
        return .retry(after: backoff.delay(afterFailures: failures))
    }

    package mutating func stop() {
        phase = .stopped
    }

    private mutating func finish() -> Action {
        if case .resolving(again: true) = phase {
            phase = .resolving(again: false)
            return .resolve
        }
        phase = .idle
        return .none
    }
}
