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
    /// What inserts, invalidations and flushes decide on; a hit never takes this lock.
    struct Control {
        var epoch: UInt64 = 0
        var invalidatedAt: [String: UInt64] = [:]
        var flushedAt: UInt64 = 0
        /// The listener that is up, per node: a node's reads may be kept only while it has one.
        var listeners: [UInt64: Int64] = [:]
        /// When each node's entries were last dropped (an insert read before that is refused).
        var nodeFlushedAt: [UInt64: UInt64] = [:]
        /// Data connections whose reads are kept here (an entry's tag names one), and their node.
        var sessions: [UInt64: UInt64] = [:]
        var invalidations = 0
        /// Times everything, or a node's part, was dropped, by reason.
        var flushes: [FlushReason: Int] = [:]
        var sessionsEnded = 0
        var droppedWithSession = 0
        var nodesRemoved = 0
    }

    /// Why the local copy (or a node's part of it) was dropped.
    enum FlushReason: String, CaseIterable {
        /// Redis said everything may have changed (a FLUSHALL, a restart, its tracking table overflowed).
        case invalidateAll = "invalidate_all"
        /// A node's invalidation listener went down.
        case trackingDown = "tracking_down"
        /// A node's invalidation listener came (back) up: what was read before is not vouched for.
        case trackingUp = "tracking_up"
        /// A node left the topology (failover, reshard, removal).
        case nodeRemoved = "node_removed"
        /// Too many keys were invalidated to remember them one by one.
        case overflow
    }

    /// A part of the entries, by a hash of the key: a hit locks one shard, nothing else.
    struct Shard {
        var entries: LRUStore
        var hits = 0
        var misses = 0
        /// Evictions of the stores a flush replaced.
        var evictionsBefore = 0
    }

    /// Shards; a power of two.
    static let shardCount = 16

    private let control = NIOLockedValueBox(Control())
    private let shards: [NIOLockedValueBox<Shard>]
    private let maxAge: TimeAmount
    public let maxBytes: Int

    /// Each shard keeps `maxBytes / shardCount`: eviction is per shard (keys spread evenly over them).
    public init(maxBytes: Int, maxAge: TimeAmount) {
        self.maxBytes = maxBytes
        self.maxAge = maxAge
        self.shards = (0..<Self.shardCount).map { _ in NIOLockedValueBox(Shard(entries: LRUStore(maxBytes: maxBytes / Self.shardCount))) }
    }

    /// The shard of a store key: FNV-1a over its bytes (cheaper than the dictionary's seeded hash it saves
    /// no work for, and the same in every process).
    @inline(__always)
    private func shard(_ storeKey: String) -> NIOLockedValueBox<Shard> {
        var key = storeKey
        let hash = key.withUTF8 { bytes in
            var h: UInt32 = 2_166_136_261
            for b in bytes { h = (h ^ UInt32(b)) &* 16_777_619 }
            return h
        }
        return shards[Int(hash ^ (hash >> 16)) & (Self.shardCount - 1)]
    }

    /// A cached value, or nil. Every entry held is vouched for by a listener that is up: entries are
    /// dropped as soon as their node's listener or connection goes.
    func get(_ address: EntryAddress) -> EncodedValue? {
        let now = NIODeadline.now()
        return shard(address.storeKey).withLockedValue { shard in
            let value = shard.entries.get(address.storeKey, field: address.storeField, now: now)
            if value != nil { shard.hits += 1 } else { shard.misses += 1 }
            return value
        }
    }

    /// Marks the start of a read from Redis; pass the result to ``insert(_:value:readAt:route:)``.
    func beginRead() -> UInt64 {
        control.withLockedValue { $0.epoch }
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
        encoded.expiresAt = expiry
        let shard = shard(address.storeKey)
        let watch: Bool = control.withLockedValue { control in
            guard let listener = control.listeners[node], redirect == listener, control.flushedAt <= epoch,
                (control.nodeFlushedAt[node] ?? 0) <= epoch, (control.invalidatedAt[address.storeKey] ?? 0) <= epoch
            else { return false }
            let inserted = control.sessions.updateValue(node, forKey: session) == nil
            // Under the control lock: no invalidation or flush can come between the checks and the store.
            shard.withLockedValue { $0.entries.set(address.storeKey, field: address.storeField, value: encoded, expiry: expiry, now: now) }
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
        control.withLockedValue { control in
            control.flushedAt <= epoch && (control.invalidatedAt[storeKey] ?? 0) <= epoch
                && control.nodeFlushedAt.values.allSatisfy { $0 <= epoch }
        }
    }

    /// A data connection closed: Redis no longer tracks what it read, so nothing it read may be served.
    func sessionEnded(_ session: UInt64) {
        control.withLockedValue { control in
            guard control.sessions.removeValue(forKey: session) != nil else { return }
            control.epoch += 1
            control.sessionsEnded += 1
            for shard in shards {
                control.droppedWithSession += shard.withLockedValue { $0.entries.removeAll { $0.tag == session } }
            }
        }
    }

    /// Applies what a node reports (see ``RedisNodeEvent``).
    public func handle(_ event: RedisNodeEvent) {
        switch event {
        case .invalidate(_, let keys):
            keys.forEach(invalidate)
        case .invalidateAll(let node):
            control.withLockedValue { flush(node: node, .invalidateAll, &$0) }
        case .trackingUp(let node, let listener):
            control.withLockedValue { control in
                control.listeners[node] = listener
                flush(node: node, .trackingUp, &control)
            }
        case .trackingDown(let node):
            control.withLockedValue { control in
                control.listeners[node] = nil
                flush(node: node, .trackingDown, &control)
            }
        case .removed(let node):
            control.withLockedValue { control in
                control.listeners[node] = nil
                control.nodesRemoved += 1
                flush(node: node, .nodeRemoved, &control)
                control.nodeFlushedAt[node] = nil  // ids are never reused: no insert can name it again
            }
        case .connectionLost, .connectFailed:
            break  // the connection's close future already dropped what it read
        }
    }

    /// A key changed: drop it (and every field, for a hash). Keys are dropped whatever node reported them:
    /// a key lives on one node, so this never drops less than needed.
    func invalidate(_ storeKey: String) {
        let shard = shard(storeKey)
        control.withLockedValue { control in
            control.epoch += 1
            control.invalidations += 1
            shard.withLockedValue { _ = $0.entries.delete(storeKey, field: nil, now: .now()) }
            control.invalidatedAt[storeKey] = control.epoch
            if control.invalidatedAt.count > 100_000 { flush(.overflow, &control) }
        }
    }

    /// Everything may have changed.
    func invalidateAll() {
        control.withLockedValue { flush(.invalidateAll, &$0) }
    }

    /// Drops what `node`'s connections read. When no other node has entries here, everything is dropped
    /// at once (new stores, no scan).
    private func flush(node: UInt64, _ reason: FlushReason, _ control: inout Control) {
        if control.sessions.values.allSatisfy({ $0 == node }) {
            flush(reason, &control)
            return
        }
        control.epoch += 1
        control.nodeFlushedAt[node] = control.epoch
        // Sessions stay until their connection closes (their close callback is registered once).
        let sessions = control.sessions
        for shard in shards {
            shard.withLockedValue { _ = $0.entries.removeAll { sessions[$0.tag] == node } }
        }
        control.flushes[reason, default: 0] += 1
    }

    private func flush(_ reason: FlushReason, _ control: inout Control) {
        control.epoch += 1
        control.flushedAt = control.epoch
        control.invalidatedAt.removeAll()
        for shard in shards {
            shard.withLockedValue {
                $0.evictionsBefore += $0.entries.evictions
                $0.entries = LRUStore(maxBytes: $0.entries.maxBytes)
            }
        }
        control.flushes[reason, default: 0] += 1
    }

    var status: JSONValue {
        control.withLockedValue { c in
            var keys = 0
            var bytes = 0
            var hits = 0
            var misses = 0
            var evictions = 0
            for shard in shards {
                shard.withLockedValue {
                    keys += $0.entries.count
                    bytes += $0.entries.usedBytes
                    evictions += $0.entries.evictions + $0.evictionsBefore
                    hits += $0.hits
                    misses += $0.misses
                }
            }
            func number(_ n: Int) -> JSONValue { .number(String(n)) }
            return .object([
                "enabled": .bool(!c.listeners.isEmpty), "keys": number(keys),
                "bytes": number(bytes), "maxBytes": number(maxBytes),
                "hits": number(hits), "misses": number(misses), "evictions": number(evictions),
                "invalidations": number(c.invalidations), "flushes": number(c.flushes.values.reduce(0, +)),
                "flushReasons": .object(Dictionary(uniqueKeysWithValues: FlushReason.allCases.map { ($0.rawValue, number(c.flushes[$0] ?? 0)) })),
                "connectionsLost": number(c.sessionsEnded), "droppedWithConnection": number(c.droppedWithSession),
                "nodesRemoved": number(c.nodesRemoved),
            ])
        }
    }
}
