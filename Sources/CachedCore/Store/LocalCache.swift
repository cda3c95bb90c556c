import CachedProtocol
import CachedRedis
import NIOConcurrencyHelpers
import NIOCore

/// The daemon's in-process copy of entries read from Redis, kept coherent by Redis's client-side
/// caching: every read is tracked by Redis, and any change to a tracked key (a write by anyone,
/// a delete, an expiry or an eviction) arrives as an invalidation that removes the key here.
///
/// A value read from Redis is only cached when (1) the connection that read it redirects its tracking
/// to the invalidation listener that is up now, (2) that connection is still open, and (3) no
/// invalidation of that key (or of everything) was processed after the read was sent: an invalidation
/// can overtake the read's reply, since the two come on different connections.
///
/// Redis forgets the keys a client read when that client's connection closes, even when its tracking
/// redirects to a live listener (redis/redis#11767): after that no invalidation would ever come for
/// them. So every entry is tied to the connection that read it (its *session*), and when that
/// connection closes, for any reason, the entries it read are dropped before the daemon serves
/// anything else from that event loop. Entries also expire after `maxAge` as a last line of defence.
public final class LocalCache: Sendable {
    struct State {
        var entries: LRUStore
        var epoch: UInt64 = 0
        var invalidatedAt: [String: UInt64] = [:]
        var flushedAt: UInt64 = 0
        var listener: Int64?
        /// Data connections whose reads are cached here; an entry's tag names one of them.
        var sessions: Set<UInt64> = []
        var hits = 0
        var misses = 0
        var invalidations = 0
        var flushes = 0
        var sessionsEnded = 0
        var droppedWithSession = 0
    }

    private let state: NIOLockedValueBox<State>
    private let maxAge: TimeAmount
    public let maxBytes: Int

    public init(maxBytes: Int, maxAge: TimeAmount) {
        self.maxBytes = maxBytes
        self.maxAge = maxAge
        self.state = NIOLockedValueBox(State(entries: LRUStore(maxBytes: maxBytes)))
    }

    /// A cached value, or nil.
    func get(_ address: EntryAddress) -> EncodedValue? {
        let now = NIODeadline.now()
        return state.withLockedValue { state in
            guard state.listener != nil else { return nil }
            let value = state.entries.get(address.storeKey, field: address.storeField, now: now)
            if value != nil { state.hits += 1 } else { state.misses += 1 }
            return value
        }
    }

    /// Marks the start of a read from Redis; pass the result to ``insert(_:value:readAt:trackedBy:)``.
    func beginRead() -> UInt64 {
        state.withLockedValue { $0.epoch }
    }

    /// Caches a value read from Redis on `connection`, unless it may be stale (see the type's
    /// documentation). Call it on the connection's event loop, where the reply was read: the connection's
    /// close is then seen after it, and drops the entry.
    func insert(_ address: EntryAddress, value: ByteBuffer, readAt epoch: UInt64, on connection: RedisConnection) {
        connection.eventLoop.preconditionInEventLoop()
        guard connection.isActive, let redirect = connection.trackingRedirect else { return }
        let now = NIODeadline.now()
        var encoded = EncodedValue(value)
        let session = connection.id
        encoded.tag = session
        let watch: Bool = state.withLockedValue { state in
            guard let listener = state.listener, redirect == listener, state.flushedAt <= epoch,
                (state.invalidatedAt[address.storeKey] ?? 0) <= epoch
            else { return false }
            let (inserted, _) = state.sessions.insert(session)
            state.entries.set(address.storeKey, field: address.storeField, value: encoded, expiry: now + maxAge, now: now)
            return inserted
        }
        if watch {
            // Runs on this event loop, after every reply already read from the connection.
            connection.channel.closeFuture.whenComplete { [weak self] _ in self?.sessionEnded(session) }
        }
    }

    /// A data connection closed: Redis no longer tracks what it read, so nothing it read may be served.
    func sessionEnded(_ session: UInt64) {
        state.withLockedValue { state in
            guard state.sessions.remove(session) != nil else { return }
            state.epoch += 1
            state.sessionsEnded += 1
            state.droppedWithSession += state.entries.removeAll { $0.tag == session }
        }
    }

    /// A key changed: drop it (and every field, for a hash).
    func invalidate(_ storeKey: String) {
        state.withLockedValue { state in
            state.epoch += 1
            state.invalidations += 1
            _ = state.entries.delete(storeKey, field: nil, now: .now())
            state.invalidatedAt[storeKey] = state.epoch
            if state.invalidatedAt.count > 100_000 { Self.flush(&state) }
        }
    }

    /// Everything may have changed.
    func invalidateAll() {
        state.withLockedValue { Self.flush(&$0) }
    }

    /// The invalidation listener that is up (values may be cached only while there is one).
    func setListener(_ id: Int64?) {
        state.withLockedValue { state in
            state.listener = id
            Self.flush(&state)
        }
    }

    private static func flush(_ state: inout State) {
        state.epoch += 1
        state.flushedAt = state.epoch
        state.invalidatedAt.removeAll()
        state.entries = LRUStore(maxBytes: state.entries.maxBytes)
        state.flushes += 1
    }

    var status: JSONValue {
        state.withLockedValue { s in
            .object([
                "enabled": .bool(s.listener != nil), "keys": .number(String(s.entries.count)),
                "bytes": .number(String(s.entries.usedBytes)), "maxBytes": .number(String(maxBytes)),
                "hits": .number(String(s.hits)), "misses": .number(String(s.misses)),
                "invalidations": .number(String(s.invalidations)), "flushes": .number(String(s.flushes)),
                "connectionsLost": .number(String(s.sessionsEnded)), "droppedWithConnection": .number(String(s.droppedWithSession)),
            ])
        }
    }
}
