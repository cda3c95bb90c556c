import CachedProtocol
import NIOCore

/// Taking an entry's fleet fill lock before a fill, once for every kind of fill: a handler flight's and a
/// lease's. The daemon that takes the lock fills; one that finds it held waits for the holder's value.
///
/// This is the one place where the lock's answers (won, held, present, failed) and the wait's (value, won,
/// gave up, failed) become what the fill does next, and where they are counted.
enum FleetLockStep {
    /// What a fill does after asking for the lock.
    enum Outcome: Sendable {
        /// This daemon holds the lock: it fills, and stores with a fenced store.
        case won
        /// The entry was already stored (the lock's look found it).
        case present(ByteBuffer)
        /// Another daemon filled it while this one waited.
        case filledElsewhere(ByteBuffer)
        /// Fill without the lock (stored only if the entry is still absent): Redis failed the lock or the
        /// look (`gaveUp` false), or the lock never came free in time (`gaveUp` true).
        case alone(gaveUp: Bool)
        /// The asker's deadline ended the wait first.
        case deadlinePassed
    }

    /// Asks for the lock `token` of `entry` (held for `lease`); when another daemon holds it, waits for its
    /// value, the lock, or `2 x lease + 1 s` (no longer than `deadline`).
    static func take(
        _ locks: any FleetLocks, _ entry: StoreLocation, token: String, lease: Duration, deadline: RequestDeadline?,
        stats: FleetStats, on eventLoop: any EventLoop
    ) -> EventLoopFuture<Outcome> {
        locks.acquire(entry, token: token, lease: lease, requireAbsent: true, on: eventLoop)
            .map { Optional($0) }
            .recover { _ in nil }  // Redis failed the lock: fill as one daemon would
            .flatMap { acquired -> EventLoopFuture<Outcome> in
                switch acquired {
                case .won?:
                    stats.count { $0.locksWon += 1 }
                    return eventLoop.makeSucceededFuture(.won)
                case .present(let value)?:
                    return eventLoop.makeSucceededFuture(.present(value))
                case nil, .notRun?:
                    return eventLoop.makeSucceededFuture(.alone(gaveUp: false))
                case .held?:
                    stats.count {
                        $0.locksLost += 1
                        $0.waits += 1
                    }
                    let longest = waitTimeout(lease)
                    let timeout = deadline.map { max(.zero, min(longest, Duration($0.instant - .now()))) } ?? longest
                    return FleetWaiter.wait(locks, entry, token: token, lease: lease, timeout: timeout, on: eventLoop).map { waited in
                        switch waited {
                        case .value(let value): return .filledElsewhere(value)
                        case .won:
                            stats.count { $0.locksWon += 1 }
                            return .won
                        case .failed: return .alone(gaveUp: false)
                        case .gaveUp where deadline?.hasPassed() == true: return .deadlinePassed
                        case .gaveUp:
                            stats.count { $0.waitsGaveUp += 1 }
                            return .alone(gaveUp: true)
                        }
                    }
                }
            }
    }

    /// How long a daemon waits for another's fill before it fills without the lock: past two lock
    /// lifetimes, a holder that died has lost its lock long ago.
    static func waitTimeout(_ lease: Duration) -> Duration {
        lease * 2 + .seconds(1)
    }
}
