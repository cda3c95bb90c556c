import NIOCore

/// When a topology asks Redis what it looks like, as a pure state machine: at most one refresh in flight
/// (a request during one is remembered and runs right after it), an `apply` when the answer differs from
/// what is in use, backoff after failed refreshes. No I/O: the topology shells run the actions.
///
/// `Snapshot` is what a refresh finds: the master's address behind Sentinel, the slot map of a cluster.
package struct TopologyRefreshStateMachine<Snapshot: Hashable & Sendable>: Sendable {
    /// Why a refresh was asked for (kept for logs and tests).
    package enum Reason: Sendable, Hashable {
        case start, periodic, switchMessage, readOnly, connectionLost, retry, sentinelReconnected
        case moved, clusterDown, unreachableNode
    }

    package enum Action: Sendable, Hashable {
        /// Ask Redis; report with ``refreshed(_:)`` or ``refreshFailed()``.
        case refresh
        /// Move from `from` (nil the first time) to `to`, then report ``applied()``.
        case apply(from: Snapshot?, to: Snapshot)
        /// Ask again after `delay` (as ``Reason/retry``).
        case retry(after: TimeAmount)
        case none
    }

    enum Phase: Sendable, Hashable {
        case idle
        /// A refresh (or the change it led to) is running; `again`: another was asked for meanwhile.
        case refreshing(again: Bool)
        case stopped
    }

    package private(set) var current: Snapshot?
    private(set) var phase: Phase = .idle
    /// Refreshes that failed in a row.
    package private(set) var failures = 0
    /// Changes applied after the first.
    package private(set) var changes = 0
    /// Refreshes that ended (with an answer or not).
    package private(set) var refreshes = 0
    private let backoff: ReconnectStateMachine.Backoff

    package init(backoff: ReconnectStateMachine.Backoff) {
        self.backoff = backoff
    }

    package var isStopped: Bool { phase == .stopped }
    package var isRefreshing: Bool { if case .refreshing = phase { true } else { false } }

    /// Something suggests the topology may have changed (or it is time to check).
    package mutating func refreshRequested(_ reason: Reason) -> Action {
        switch phase {
        case .stopped: return .none
        case .refreshing: phase = .refreshing(again: true); return .none
        case .idle: phase = .refreshing(again: false); return .refresh
        }
    }

    /// The refresh found `snapshot`.
    package mutating func refreshed(_ snapshot: Snapshot) -> Action {
        guard case .refreshing = phase else { return .none }
        failures = 0
        refreshes += 1
        if snapshot != current {
            let from = current
            current = snapshot
            changes += from == nil ? 0 : 1
            return .apply(from: from, to: snapshot)
        }
        return finish()
    }

    /// The change asked for by ``refreshed(_:)`` is in place.
    package mutating func applied() -> Action {
        guard case .refreshing = phase else { return .none }
        return finish()
    }

    /// The refresh found no usable answer.
    package mutating func refreshFailed() -> Action {
        guard case .refreshing = phase else { return .none }
        failures += 1
        refreshes += 1
        phase = .idle
        return .retry(after: backoff.delay(afterFailures: failures))
    }

    package mutating func stop() {
        phase = .stopped
    }

    private mutating func finish() -> Action {
        if case .refreshing(again: true) = phase {
            phase = .refreshing(again: false)
            return .refresh
        }
        phase = .idle
        return .none
    }
}
