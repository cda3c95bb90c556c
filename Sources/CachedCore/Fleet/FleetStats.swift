import CachedProtocol
import NIOConcurrencyHelpers

/// What the fleet's single flight and the stale window did, for `stats` (`fleet`).
public final class FleetStats: Sendable {
    public struct Counters: Sendable, Equatable {
        /// Fill locks taken by this daemon.
        public var locksWon = 0
        /// Fill locks found held by another daemon.
        public var locksLost = 0
        /// Fills that waited for another daemon's fill.
        public var waits = 0
        /// Waits that ended past their deadline (the daemon then filled without the lock).
        public var waitsGaveUp = 0
        /// Fenced stores refused because the lock had passed on (a fill that outlived its lock).
        public var fencedOut = 0
        /// Handler fills and lease values not stored because this daemon could not take the fleet lock
        /// (Redis failed it, or the wait gave up): such a store could not be fenced.
        public var unfencedFills = 0
        /// Gets answered at once with a stale entry (stale window).
        public var staleAnswers = 0
        /// Gets answered with the old value after a failed refresh (grace).
        public var graceAnswers = 0
        /// Background refreshes started (stale window, early refresh, grace).
        public var refreshes = 0
        /// Background refreshes that failed (handler error or store error).
        public var refreshesFailed = 0
        /// Background refreshes started by the XFetch rule.
        public var earlyRefreshes = 0
    }

    private let counters = NIOLockedValueBox(Counters())

    public init() {}

    func count(_ change: (inout Counters) -> Void) {
        counters.withLockedValue(change)
    }

    public var snapshot: Counters { counters.withLockedValue { $0 } }

    var json: JSONValue {
        let c = snapshot
        func n(_ v: Int) -> JSONValue { .number(String(v)) }
        return .object([
            "locksWon": n(c.locksWon), "locksLost": n(c.locksLost), "waits": n(c.waits), "waitsGaveUp": n(c.waitsGaveUp),
            "fencedOut": n(c.fencedOut), "unfencedFills": n(c.unfencedFills), "staleAnswers": n(c.staleAnswers), "graceAnswers": n(c.graceAnswers),
            "refreshes": n(c.refreshes), "refreshesFailed": n(c.refreshesFailed), "earlyRefreshes": n(c.earlyRefreshes),
        ])
    }
}
