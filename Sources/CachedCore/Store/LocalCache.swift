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
///
/// Silence is not health: a partition, a forgetful NAT or a stalled Redis closes nothing, and an invalidation
/// stuck in a retransmission backoff does not arrive. With a staleness bound (`maxStaleness`), an entry is
/// served only while its ``EntryProof`` (its data connection's and its listener's ``ProofClock``s, advanced by
/// replies and heartbeats) is at most that old: every invalidation Redis sent before `now - maxStaleness` has
/// then arrived. The proof is read under the entry's shard lock, so an invalidation applied before the proof
/// that covers it can never be missed. Entries whose proof lapsed are dropped (``sweep(now:)``, and a hit that
/// finds it lapsed), so a healed path never brings an old value back.
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
        /// What vouches for each session's entries, for the near caches' proof (``sweep(now:)``). A session
        /// whose entries were dropped stays here, marked `leaving` by the epoch of that drop, until the
        /// clients were told (the drop observer returned): only then may the proof leave it out.
        var provers: [UInt64: Prover] = [:]
        var invalidations = 0
        /// Sessions whose proof lapsed, and entries dropped with them.
        var proofLapses = 0
        var droppedLapsed = 0
        /// Times everything, or a node's part, was dropped, by reason.
        var flushes: [FlushReason: Int] = [:]
        var sessionsEnded = 0
        var droppedWithSession = 0
        var nodesRemoved = 0
    }

    struct Prover {
        var proof: EntryProof
        var node: UInt64
        /// The epoch of the drop that emptied it, until its clients were told.
        var leaving: UInt64?
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
        /// Hits refused (and the entry dropped) because its proof had lapsed.
        var lapsedHits = 0
    }

    /// Shards; a power of two.
    static let shardCount = 16

    private let control = NIOLockedValueBox(Control())
    private let shards: [NIOLockedValueBox<Shard>]
    private let maxAge: TimeAmount
    public let maxBytes: Int
    /// The staleness bound in nanoseconds; 0: none (entries are served without proof).
    let maxStalenessNanos: UInt64
    /// Told (outside any lock) after entries were dropped wholesale, before the drop stops holding back the
    /// near caches' proof: the clients must hear of it first.
    private let dropObserver = NIOLockedValueBox<(@Sendable () -> Void)?>(nil)

    /// Each shard keeps `maxBytes / shardCount`: eviction is per shard (keys spread evenly over them).
    /// `maxStaleness` nil or zero: no bound.
    public init(maxBytes: Int, maxAge: TimeAmount, maxStaleness: TimeAmount? = nil) {
        self.maxBytes = maxBytes
        self.maxAge = maxAge
        self.maxStalenessNanos = UInt64(max(0, maxStaleness?.nanoseconds ?? 0))
        self.shards = (0..<Self.shardCount).map { _ in NIOLockedValueBox(Shard(entries: LRUStore(maxBytes: maxBytes / Self.shardCount))) }
    }

    /// Whether entries are served only with fresh proof.
    public var isBounded: Bool { maxStalenessNanos > 0 }

    /// `observer` is told after every wholesale drop (a flush, a lost connection, a lapsed proof).
    func observeDrops(_ observer: @escaping @Sendable () -> Void) {
        dropObserver.withLockedValue { $0 = observer }
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
    ///
    /// With a bound, the entry's proof is read under the shard lock: an invalidation is removed under that
    /// lock before the reply that proves it arrived advances the clock, so a fresh proof read here never
    /// goes with an entry that the invalidation should have removed.
    func get(_ address: EntryAddress) -> EncodedValue? {
        let now = NIODeadline.now()
        let bound = maxStalenessNanos
        return shard(address.storeKey).withLockedValue { shard in
            guard let value = shard.entries.get(address.storeKey, field: address.storeField, now: now) else {
                shard.misses += 1
                return nil
            }
            if bound > 0, let proof = value.proof, proof.provenAt &+ bound < now.uptimeNanoseconds {
                _ = shard.entries.delete(address.storeKey, field: address.storeField, now: now)
                shard.lapsedHits += 1
                shard.misses += 1
                return nil
            }
            shard.hits += 1
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
        guard connection.isActive, let tracking = connection.currentTracking else { return }
        let redirect = tracking.redirect
        let now = NIODeadline.now()
        var encoded = EncodedValue(value)
        let session = connection.id
        let node = route.node.id
        encoded.tag = session
        if maxStalenessNanos > 0 { encoded.proof = tracking.proof }
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
            control.provers[session] = Prover(proof: tracking.proof, node: node, leaving: nil)
            tracking.proof.connection.isVouching = true  // its idle connection beats from now on
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
        let drop: UInt64? = control.withLockedValue { control in
            guard control.sessions.removeValue(forKey: session) != nil else { return nil }
            control.epoch += 1
            control.sessionsEnded += 1
            for shard in shards {
                control.droppedWithSession += shard.withLockedValue { $0.entries.removeAll { $0.tag == session } }
            }
            control.provers[session]?.leaving = control.epoch
            return control.epoch
        }
        if let drop { told(drop) }
    }

    /// The clients were told of the drop made at epoch `drop`: the sessions it emptied stop holding back
    /// the proof (unless an insert since made them vouch for entries again).
    private func told(_ drop: UInt64) {
        dropObserver.withLockedValue { $0 }?()
        control.withLockedValue { control in
            control.provers = control.provers.filter { session, prover in
                guard prover.leaving == drop else { return true }
                prover.proof.connection.isVouching = false
                return false
            }
        }
    }

    /// Applies what a node reports (see ``RedisNodeEvent``).
    public func handle(_ event: RedisNodeEvent) {
        let drop: UInt64?
        switch event {
        case .invalidate(_, let keys):
            keys.forEach(invalidate)
            return
        case .invalidateAll(let node):
            drop = control.withLockedValue { flush(node: node, .invalidateAll, &$0) }
        case .trackingUp(let node, let listener):
            drop = control.withLockedValue { control in
                control.listeners[node] = listener
                return flush(node: node, .trackingUp, &control)
            }
        case .trackingDown(let node):
            drop = control.withLockedValue { control in
                control.listeners[node] = nil
                return flush(node: node, .trackingDown, &control)
            }
        case .removed(let node):
            drop = control.withLockedValue { control in
                control.listeners[node] = nil
                control.nodesRemoved += 1
                let drop = flush(node: node, .nodeRemoved, &control)
                control.nodeFlushedAt[node] = nil  // ids are never reused: no insert can name it again
                return drop
            }
        case .connectionLost, .connectFailed:
            return  // the connection's close future already dropped what it read
        }
        if let drop { told(drop) }
    }

    /// Drops the entries of every session whose proof is older than the bound (the observer is told), and
    /// answers the proof that the remaining ones share, for the near caches: every invalidation Redis sent for
    /// an entry held here before that instant has been applied and told (`now` when no entry needs proof).
    /// Called on every beat of the proof publisher.
    func sweep(now: NIODeadline) -> NIODeadline {
        let bound = maxStalenessNanos
        let dropped: UInt64? = control.withLockedValue { control in
            guard bound > 0 else { return nil }
            let limit = now.uptimeNanoseconds
            let lapsed = control.provers.filter { $0.value.leaving == nil && $0.value.proof.provenAt &+ bound < limit }.map(\.key)
            guard !lapsed.isEmpty else { return nil }
            control.epoch += 1
            let sessions = Set(lapsed)
            for session in lapsed { control.provers[session]?.leaving = control.epoch }
            for shard in shards {
                control.droppedLapsed += shard.withLockedValue { $0.entries.removeAll { sessions.contains($0.tag) } }
            }
            control.proofLapses += lapsed.count
            return control.epoch
        }
        if let dropped { told(dropped) }
        let provenAt: UInt64 = control.withLockedValue { control in
            control.provers.values.reduce(now.uptimeNanoseconds) { min($0, $1.proof.provenAt) }
        }
        return NIODeadline.uptimeNanoseconds(provenAt)
    }

    /// A key changed: drop it (and every field, for a hash). Keys are dropped whatever node reported them:
    /// a key lives on one node, so this never drops less than needed.
    func invalidate(_ storeKey: String) {
        let shard = shard(storeKey)
        let overflow: UInt64? = control.withLockedValue { control in
            control.epoch += 1
            control.invalidations += 1
            shard.withLockedValue { _ = $0.entries.delete(storeKey, field: nil, now: .now()) }
            control.invalidatedAt[storeKey] = control.epoch
            guard control.invalidatedAt.count > 100_000 else { return nil }
            flush(.overflow, &control)
            return control.epoch
        }
        if let overflow { told(overflow) }
    }

    /// Everything may have changed.
    func invalidateAll() {
        let drop = control.withLockedValue { control in
            flush(.invalidateAll, &control)
            return control.epoch
        }
        told(drop)
    }

    /// Drops what `node`'s connections read. When no other node has entries here, everything is dropped
    /// at once (new stores, no scan).
    /// Returns the drop's epoch (see ``told(_:)``).
    private func flush(node: UInt64, _ reason: FlushReason, _ control: inout Control) -> UInt64 {
        if control.sessions.values.allSatisfy({ $0 == node }) {
            flush(reason, &control)
            return control.epoch
        }
        control.epoch += 1
        control.nodeFlushedAt[node] = control.epoch
        let epoch = control.epoch
        for (session, prover) in control.provers where prover.node == node { control.provers[session]?.leaving = epoch }
        // Sessions stay until their connection closes (their close callback is registered once).
        let sessions = control.sessions
        for shard in shards {
            shard.withLockedValue { _ = $0.entries.removeAll { sessions[$0.tag] == node } }
        }
        control.flushes[reason, default: 0] += 1
        return epoch
    }

    private func flush(_ reason: FlushReason, _ control: inout Control) {
        control.epoch += 1
        control.flushedAt = control.epoch
        control.invalidatedAt.removeAll()
        let epoch = control.epoch
        for session in control.provers.keys { control.provers[session]?.leaving = epoch }
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
            var lapsedHits = 0
            for shard in shards {
                shard.withLockedValue {
                    keys += $0.entries.count
                    bytes += $0.entries.usedBytes
                    evictions += $0.entries.evictions + $0.evictionsBefore
                    hits += $0.hits
                    misses += $0.misses
                    lapsedHits += $0.lapsedHits
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
                "maxStaleness": .number(String(Double(maxStalenessNanos) / 1e9)),
                "proofLapses": number(c.proofLapses), "droppedLapsed": number(c.droppedLapsed), "lapsedHits": number(lapsedHits),
            ])
        }
    }
}
