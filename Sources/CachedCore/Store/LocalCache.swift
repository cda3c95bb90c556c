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
        /// The listener that is up, per node: a node's reads may be kept only while it has one.
        var listeners: [UInt64: Int64] = [:]
        /// When each node's entries were last dropped (an insert read before that is refused).
        var nodeFlushedAt: [UInt64: UInt64] = [:]
        /// Data connections whose reads are kept here (an entry's tag names one), and their node.
        var sessions: [UInt64: UInt64] = [:]
        var hits = 0
        var misses = 0
        var invalidations = 0
        var flushes = 0
        var sessionsEnded = 0
        var droppedWithSession = 0
        var nodesRemoved = 0
    }

    private let state: NIOLockedValueBox<State>
    private let maxAge: TimeAmount
    public let maxBytes: Int

    public init(maxBytes: Int, maxAge: TimeAmount) {
        self.maxBytes = maxBytes
        self.maxAge = maxAge
        self.state = NIOLockedValueBox(State(entries: LRUStore(maxBytes: maxBytes)))
    }

    /// A cached value, or nil. Every entry held is vouched for by a listener that is up: entries are
    /// dropped as soon as their node's listener or connection goes.
    func get(_ address: EntryAddress) -> EncodedValue? {
        let now = NIODeadline.now()
        return state.withLockedValue { state in
            let value = state.entries.get(address.storeKey, field: address.storeField, now: now)
            if value != nil { state.hits += 1 } else { state.misses += 1 }
            return value
        }
    }

    /// Marks the start of a read from Redis; pass the result to ``insert(_:value:readAt:route:)``.
    func beginRead() -> UInt64 {
        state.withLockedValue { $0.epoch }
    }

    /// Caches a value read from Redis through `route`, unless it may be stale (see the type's
    /// documentation). Call it on the connection's event loop, where the reply was read: the connection's
    /// close is then seen after it, and drops the entry.
    func insert(
        _ address: EntryAddress, value: ByteBuffer, readAt epoch: UInt64, route: RedisRoute, age: EntryAge? = nil,
        expiresAt: NIODeadline = .distantFuture
    ) {
        let connection = route.connection
        connection.eventLoop.preconditionInEventLoop()
        guard connection.isActive, let redirect = connection.trackingRedirect else { return }
        let now = NIODeadline.now()
        var encoded = EncodedValue(value)
        let session = connection.id
        let node = route.node.id
        encoded.tag = session
        encoded.age = age
        // Kept no longer than Redis keeps it.
        let expiry = min(age?.expiresAt ?? .distantFuture, expiresAt, now + maxAge)
        let watch: Bool = state.withLockedValue { state in
            guard let listener = state.listeners[node], redirect == listener, state.flushedAt <= epoch,
                (state.nodeFlushedAt[node] ?? 0) <= epoch, (state.invalidatedAt[address.storeKey] ?? 0) <= epoch
            else { return false }
            let inserted = state.sessions.updateValue(node, forKey: session) == nil
            state.entries.set(address.storeKey, field: address.storeField, value: encoded, expiry: expiry, now: now)
            return inserted
        }
        if watch {
            // Runs on this event loop, after every reply already read from the connection.
            connection.channel.closeFuture.whenComplete { [weak self] _ in self?.sessionEnded(session) }
        }
    }

    /// Whether nothing reported a change of `storeKey` (an invalidation, a flush of any node) since
    /// `epoch` (from ``beginRead()``).
    func unchanged(_ storeKey: String, since epoch: UInt64) -> Bool {
        state.withLockedValue { state in
            state.flushedAt <= epoch && (state.invalidatedAt[storeKey] ?? 0) <= epoch
                && state.nodeFlushedAt.values.allSatisfy { $0 <= epoch }
        }
    }

    /// A data connection closed: Redis no longer tracks what it read, so nothing it read may be served.
    func sessionEnded(_ session: UInt64) {
        state.withLockedValue { state in
            guard state.sessions.removeValue(forKey: session) != nil else { return }
            state.epoch += 1
            state.sessionsEnded += 1
            state.droppedWithSession += state.entries.removeAll { $0.tag == session }
        }
    }

    /// Applies what a node reports (see ``RedisNodeEvent``).
    public func handle(_ event: RedisNodeEvent) {
        switch event {
        case .invalidate(_, let keys):
            keys.forEach(invalidate)
        case .invalidateAll(let node):
            state.withLockedValue { Self.flush(node: node, &$0) }
        case .trackingUp(let node, let listener):
            state.withLockedValue { state in
                state.listeners[node] = listener
                Self.flush(node: node, &state)
            }
        case .trackingDown(let node):
            state.withLockedValue { state in
                state.listeners[node] = nil
                Self.flush(node: node, &state)
            }
        case .removed(let node):
            state.withLockedValue { state in
                state.listeners[node] = nil
                state.nodesRemoved += 1
                Self.flush(node: node, &state)
                state.nodeFlushedAt[node] = nil  // ids are never reused: no insert can name it again
            }
        case .connectionLost, .connectFailed:
            break  // the connection's close future already dropped what it read
        }
    }

    /// A key changed: drop it (and every field, for a hash). Keys are dropped whatever node reported them:
    /// a key lives on one node, so this never drops less than needed.
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

    /// Drops what `node`'s connections read. When no other node has entries here, everything is dropped
    /// at once (a new store, no scan).
    private static func flush(node: UInt64, _ state: inout State) {
        if state.sessions.values.allSatisfy({ $0 == node }) {
            flush(&state)
            return
        }
        state.epoch += 1
        state.nodeFlushedAt[node] = state.epoch
        // Sessions stay until their connection closes (their close callback is registered once).
        let sessions = state.sessions
        _ = state.entries.removeAll { sessions[$0.tag] == node }
        state.flushes += 1
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
                "enabled": .bool(!s.listeners.isEmpty), "keys": .number(String(s.entries.count)),
                "bytes": .number(String(s.entries.usedBytes)), "maxBytes": .number(String(maxBytes)),
                "hits": .number(String(s.hits)), "misses": .number(String(s.misses)),
                "invalidations": .number(String(s.invalidations)), "flushes": .number(String(s.flushes)),
                "connectionsLost": .number(String(s.sessionsEnded)), "droppedWithConnection": .number(String(s.droppedWithSession)),
                "nodesRemoved": .number(String(s.nodesRemoved)),
            ])
        }
    }
}
