import CachedProtocol
import NIOCore

/// The fill locks that make one fill per entry across every daemon sharing a Redis store, and the fenced
/// stores that end them (the stale-set protection of memcache leases, across hosts).
///
/// A daemon that finds an entry missing takes the entry's lock before it calls the handler or hands out
/// a lease; the others wait for the entry to appear (``watch(_:_:)``, with a bounded poll) and answer their
/// waiters from it. The holder's value is stored only while it still holds the lock (``store(_:token:value:ttl:mode:delta:on:)``),
/// so a holder that stalled past its lock never overwrites what was written since. See docs/architecture.md.
public protocol FleetLocks: Sendable {
    /// Whether `location` can have a lock (its metadata key lands in the entry's cluster slot).
    func supports(_ location: StoreLocation) -> Bool

    /// Takes the entry's lock for `lease`, or renews it when `token` already holds it. With
    /// `requireAbsent`, an entry that is present is answered instead (and read, so its changes are tracked).
    func acquire(
        _ location: StoreLocation, token: String, lease: Duration, requireAbsent: Bool, on eventLoop: any EventLoop
    ) -> EventLoopFuture<FleetAcquire>

    /// Stores (or, with a nil `value`, deletes) the entry if `token` still holds its lock (nil: no lock is
    /// checked) and `mode` allows it, ending the lock; `delta` (the fill's duration) is kept beside it for
    /// other daemons' early refresh.
    func store(
        _ location: StoreLocation, token: String?, value: ByteBuffer?, ttl: Duration, mode: FleetStoreMode, delta: Duration?,
        on eventLoop: any EventLoop
    ) -> EventLoopFuture<FleetStoreOutcome>

    /// Ends the lock if `token` still holds it (a handler error, a released lease); true if it did.
    func release(_ location: StoreLocation, token: String, on eventLoop: any EventLoop) -> EventLoopFuture<Bool>

    /// Calls `wake` when Redis reports that the entry or its lock changed (or that anything may have
    /// changed); the watches stay until ``unwatch(_:)``.
    func watch(_ location: StoreLocation, _ wake: @escaping @Sendable () -> Void) -> [KeyWatchers.Watch]

    func unwatch(_ watches: [KeyWatchers.Watch])
}

/// What taking a fill lock found.
public enum FleetAcquire: Sendable {
    /// The caller holds the lock now.
    case won
    /// Another daemon (another token) holds it.
    case held
    /// The entry is present (only with `requireAbsent`).
    case present(ByteBuffer)
    /// Redis did not run the lock's script (a cluster slot migrating under the two-key script): nothing
    /// changed; a waiter looks again at its next poll, a fill goes on without the lock.
    case notRun
}

/// When a fenced store may write.
public enum FleetStoreMode: Sendable {
    /// A fill after a miss: only if the entry is still absent.
    case fill
    /// A refresh of `expected`: only if the entry still holds those bytes.
    case refresh(expected: ByteBuffer)
    /// Whatever is stored (`set` without value).
    case overwrite
}

/// What a fenced store did.
public enum FleetStoreOutcome: Sendable, Equatable {
    case stored
    /// The token no longer holds the lock (it expired and may be another daemon's now, or a write ended it).
    case lockLost
    /// The entry was written or deleted meanwhile (`mode` refused it).
    case writtenMeanwhile
    /// Not run: its cluster slot kept migrating under the two-key script (nothing was stored).
    case notRun
}

/// An entry read together with its age (see ``EntryAge``).
public struct StoredEntry: Sendable {
    public var value: ByteBuffer
    /// Nil when the entry has no expiry, or the key has no aging.
    public var age: EntryAge?

    public init(value: ByteBuffer, age: EntryAge?) {
        self.value = value
        self.age = age
    }
}
