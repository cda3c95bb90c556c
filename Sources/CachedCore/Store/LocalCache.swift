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
///
/// Every rule above but the hit's proof check is decided by ``LocalCacheCoherence``, a pure state machine kept
/// behind the control lock; this class is its shell: the shards are plain storage, and the machine's actions
/// are applied to them before that lock is released (control, then shard), so an insert's decision and its
/// store are one step with respect to every invalidation.
public final class LocalCache: Sendable {
    /// The coherence rules, over the daemon's proofs.
    typealias Coherence = LocalCacheCoherence<EntryProof>
    /// Why the local copy (or a node's part of it) was dropped.
    typealias FlushReason = LocalCacheFlushReason

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

    /// The coherence rules' state: inserts, invalidations and drops decide under this lock (then take a
    /// shard's); a hit never takes it.
    private let control: NIOLockedValueBox<Coherence>
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
        self.control = NIOLockedValueBox(Coherence(maxStalenessNanos: maxStalenessNanos))
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
        // Closed or untracked: nothing could vouch for the value (the machine would refuse a closed one).
        guard connection.isActive, let tracking = connection.currentTracking else { return }
        let now = NIODeadline.now()
        var encoded = EncodedValue(value)
        let session = connection.id
        encoded.tag = session
        if maxStalenessNanos > 0 { encoded.proof = tracking.proof }
        encoded.age = age
        // Kept no longer than Redis keeps it.
        let expiry = min(age?.expiresAt ?? .distantFuture, expiresAt, now + maxAge)
        encoded.expiresAt = expiry
        let read = Coherence.Read(key: address.storeKey, session: session, node: route.node.id, epoch: epoch, redirect: tracking.redirect)
        let shard = shard(address.storeKey)
        let watch: Bool = control.withLockedValue { machine in
            // Still on the connection's event loop: its close, which is seen there, cannot have come since.
            guard case .store(let watch) = machine.insert(read, proof: tracking.proof, sessionOpen: connection.isActive) else { return false }
            tracking.proof.connection.isVouching = true  // its idle connection beats from now on
            // Under the control lock: no invalidation or drop can come between the decision and the store.
            shard.withLockedValue { $0.entries.set(address.storeKey, field: address.storeField, value: encoded, expiry: expiry, now: now) }
            return watch
        }
        if watch {
            // Runs on this event loop, after every reply already read from the connection.
            connection.channel.closeFuture.whenComplete { [weak self] _ in self?.sessionEnded(session) }
        }
    }

    /// Whether nothing reported a change of `storeKey` (an invalidation, a flush of any node) since
    /// `epoch` (from ``beginRead()``).
    func unchanged(_ storeKey: String, since epoch: UInt64) -> Bool {
        control.withLockedValue { $0.unchanged(storeKey, since: epoch) }
    }

    /// A data connection closed: Redis no longer tracks what it read, so nothing it read may be served.
    func sessionEnded(_ session: UInt64) {
        run { $0.sessionEnded(session) }
    }

    /// Applies what a node reports (see ``RedisNodeEvent``).
    public func handle(_ event: RedisNodeEvent) {
        switch event {
        case .invalidate(_, let keys): keys.forEach(invalidate)
        case .invalidateAll(let node): run { $0.invalidateAll(node: node) }
        case .trackingUp(let node, let listener): run { $0.listenerUp(node: node, listener: listener) }
        case .trackingDown(let node): run { $0.listenerDown(node: node) }
        case .removed(let node): run { $0.nodeRemoved(node) }
        case .connectionLost, .connectFailed: return  // the connection's close future already dropped what it read
        }
    }

    /// Drops the entries of every session whose proof is older than the bound (the observer is told), and
    /// answers the proof that the remaining ones share, for the near caches: every invalidation Redis sent for
    /// an entry held here before that instant has been applied and told (`now` when no entry needs proof).
    /// Called on every beat of the proof publisher.
    func sweep(now: NIODeadline) -> NIODeadline {
        run { $0.sweep(now: now.uptimeNanoseconds) }
        return NIODeadline.uptimeNanoseconds(control.withLockedValue { $0.freshness(now: now.uptimeNanoseconds) })
    }

    /// A key changed: drop it (and every field, for a hash). Keys are dropped whatever node reported them:
    /// a key lives on one node, so this never drops less than needed.
    func invalidate(_ storeKey: String) {
        run { $0.invalidate(storeKey) }
    }

    /// Everything may have changed.
    func invalidateAll() {
        run { $0.invalidateAll() }
    }

    // MARK: The shell

    /// Feeds an event to the machine and applies its actions to the shards under the control lock, then,
    /// after releasing it, tells the drop observer of a drop.
    private func run(_ event: (inout Coherence) -> [Coherence.Action]) {
        let drop: UInt64? = control.withLockedValue { machine in
            var drop: UInt64?
            for action in event(&machine) {
                switch action {
                case .dropKey(let key):
                    shard(key).withLockedValue { _ = $0.entries.delete(key, field: nil, now: .now()) }
                case .dropAll:
                    for shard in shards {
                        shard.withLockedValue {
                            $0.evictionsBefore += $0.entries.evictions
                            $0.entries = LRUStore(maxBytes: $0.entries.maxBytes)
                        }
                    }
                case .dropNode(_, let sessions, _):
                    for shard in shards {
                        shard.withLockedValue { _ = $0.entries.removeAll { sessions.contains($0.tag) } }
                    }
                case .dropSessions(let sessions, let cause):
                    var dropped = 0
                    for shard in shards {
                        dropped += shard.withLockedValue { $0.entries.removeAll { sessions.contains($0.tag) } }
                    }
                    machine.entriesDropped(dropped, cause)
                case .notifyDropObserver(let epoch):
                    drop = epoch
                }
            }
            return drop
        }
        if let drop { told(drop) }
    }

    /// Tells the observer of the drop made at epoch `drop`, then the machine: the sessions it emptied stop
    /// holding back the proof, and their connections stop beating for it.
    private func told(_ drop: UInt64) {
        dropObserver.withLockedValue { $0 }?()
        control.withLockedValue { machine in
            for proof in machine.dropTold(drop) { proof.connection.isVouching = false }
        }
    }

    var status: JSONValue {
        control.withLockedValue { machine in
            let c = machine.counters
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
                "enabled": .bool(machine.hasListener), "keys": number(keys),
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

extension EntryProof: LocalCacheProof {}
