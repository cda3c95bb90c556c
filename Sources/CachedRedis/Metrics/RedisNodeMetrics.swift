import NIOConcurrencyHelpers
import NIOCore

/// What one Redis node's connections measured: command round trips, error replies, timeouts, and when the
/// node last went up or down. Shared by the node's connections (one lock per node, taken once per reply:
/// the Redis path, never a hit from the daemon's memory).
public final class RedisNodeMetrics: Sendable {
    /// A snapshot.
    public struct Figures: Sendable, Hashable {
        /// From a command's write to its reply.
        public var roundTrip = LatencyHistogram()
        /// Replies that were Redis errors (`-ERR`, `MOVED`, `OOM`...).
        public var errorReplies = 0
        /// Commands past the command timeout (each closes its connection).
        public var timeouts = 0
        /// Whether a data connection is up, and when that last changed (seconds since the Unix epoch; nil
        /// before the first connection attempt ended).
        public var up = false
        public var lastChange: Double?

        /// No round trip yet, down.
        public init() {}
    }

    private struct State {
        var figures = Figures()
        /// Data connections up now.
        var connected = 0
    }

    private let state = NIOLockedValueBox(State())

    public init() {}

    public var figures: Figures { state.withLockedValue { $0.figures } }

    func reply(roundTrip: TimeAmount, isError: Bool) {
        state.withLockedValue {
            $0.figures.roundTrip.observe(roundTrip)
            if isError { $0.figures.errorReplies += 1 }
        }
    }

    func timedOut(_ commands: Int) {
        state.withLockedValue { $0.figures.timeouts += commands }
    }

    /// A data connection of the node came up (`true`) or went (`false`); a failed attempt counts as
    /// `false` with nothing to close. The node is up while any is.
    func connection(up: Bool, closing: Bool) {
        state.withLockedValue { state in
            if up { state.connected += 1 } else if closing { state.connected = max(0, state.connected - 1) }
            let isUp = state.connected > 0
            if state.figures.lastChange == nil || state.figures.up != isUp {
                state.figures.up = isUp
                state.figures.lastChange = wallClockSeconds()
            }
        }
    }
}
