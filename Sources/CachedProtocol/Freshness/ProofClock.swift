import Atomics
import NIOCore

/// How far a connection to Redis has proved itself: the send instant of the newest command whose reply
/// arrived, in `CLOCK_MONOTONIC` nanoseconds (``NIODeadline/uptimeNanoseconds``; 0 before any reply).
///
/// Redis answers in order on a connection, so a reply to a command sent at instant *s* proves that
/// everything Redis wrote on that connection before it read the command, every invalidation among it, has
/// arrived; on a data connection it also proves that Redis still had the connection, and so still tracked
/// what it read, at *s*. Only the connection's own event loop advances it; anyone may read it.
public final class ProofClock: Sendable {
    private let nanoseconds = ManagedAtomic<UInt64>(0)
    private let vouches = ManagedAtomic<Bool>(false)

    public init() {}

    /// Whether entries held in memory rely on this clock (the local copy says so): an idle connection then
    /// beats on every heartbeat; one that vouches for nothing only now and then, to keep its flow alive.
    public var isVouching: Bool {
        get { vouches.load(ordering: .relaxed) }
        set { vouches.store(newValue, ordering: .relaxed) }
    }

    /// A reply arrived to a command sent at `sentAt`.
    @inline(__always)
    public func prove(sentAt: NIODeadline) {
        let value = sentAt.uptimeNanoseconds
        // One writer (the connection's event loop): a load and a store, no read-modify-write.
        if value > nanoseconds.load(ordering: .relaxed) { nanoseconds.store(value, ordering: .releasing) }
    }

    /// The instant proved so far (0: nothing yet).
    @inline(__always)
    public var provenAt: UInt64 { nanoseconds.load(ordering: .acquiring) }
}

/// What vouches for an entry of the daemon's local copy: the data connection that read it (Redis still
/// tracks what it read) and the invalidation listener its tracking redirects to (every invalidation sent
/// has arrived). The entry is as fresh as the older of the two proofs.
public final class EntryProof: Sendable {
    public let connection: ProofClock
    public let listener: ProofClock

    public init(connection: ProofClock, listener: ProofClock) {
        self.connection = connection
        self.listener = listener
    }

    /// The instant up to which every invalidation of the entry has arrived (0: none proved).
    @inline(__always)
    public var provenAt: UInt64 { min(connection.provenAt, listener.provenAt) }
}
