/// What vouches for the entries one data connection read: the instant up to which every invalidation of
/// them has arrived (``EntryProof`` in the daemon, a settable number in the tests).
protocol LocalCacheProof {
    /// `CLOCK_MONOTONIC` nanoseconds; 0: nothing proved yet.
    var provenAt: UInt64 { get }
}

/// Why the local copy (or a node's part of it) was dropped.
enum LocalCacheFlushReason: String, CaseIterable, Sendable {
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

/// The local copy's coherence rules as a pure state machine: events in, decisions and actions out.
///
/// No locks, no clocks, no I/O: ``LocalCache`` keeps it behind its control lock, keeps the entries in
/// shards as plain storage, and applies the actions to them while it still holds that lock (the lock order
/// is control, then shard). Only ``Action/notifyDropObserver(epoch:)`` runs after the lock is released: the
/// shell tells the drop observer, then reports ``dropTold(_:)``. A hit never asks the machine.
///
/// The rules:
/// - An **epoch** counts every change report. A read takes the epoch when it is sent (``epoch``); its value
///   may be kept only if no invalidation of its key, no drop of everything and no drop of its node's part
///   came after that epoch, its data connection (its *session*) is still open, and the session's tracking
///   redirects to the listener its node has up now (``insert(_:proof:sessionOpen:)``).
/// - A session whose read is kept is remembered with its node until it ends (``sessionEnded(_:)``), which
///   drops what it read: Redis forgets what a connection read when it closes.
/// - A node's listener going down or (back) up, an invalidate-all of a node, and the node's removal drop
///   what that node's sessions read (everything, when no other node has a session here).
/// - Each session that vouches for entries has a *prover* (its ``LocalCacheProof``). With a staleness bound,
///   ``sweep(now:)`` drops the sessions whose proof lapsed. Every drop marks the provers it emptied as
///   *leaving* by its epoch; they still hold back ``freshness(now:)`` until ``dropTold(_:)`` says the
///   clients heard of the drop, so a near cache never trusts a proof past a drop it was not told of.
/// - More than `maxInvalidatedKeys` invalidations remembered one by one: everything is dropped instead.
///
/// The bookkeeping per session lives only while the session vouches for entries or a drop of it is untold.
struct LocalCacheCoherence<Proof: LocalCacheProof> {
    typealias FlushReason = LocalCacheFlushReason

    /// A value read from Redis, offered to the local copy.
    struct Read: Equatable {
        /// The entry's store key.
        var key: String
        /// The data connection that read it (unique in the process, never reused).
        var session: UInt64
        /// The node that connection belongs to.
        var node: UInt64
        /// ``epoch`` when the read was sent.
        var epoch: UInt64
        /// The listener the session's tracking redirects to.
        var redirect: Int64
    }

    /// Why an insert was refused.
    enum Refusal: Equatable {
        /// The session's connection is closed: Redis no longer tracks what it read.
        case sessionClosed
        /// The node has no listener up.
        case noListener
        /// The session's tracking redirects to another listener than the one its node has up.
        case otherListener
        /// Everything was dropped after the read was sent.
        case flushed
        /// The node's part was dropped after the read was sent.
        case nodeFlushed
        /// The key was invalidated after the read was sent (the invalidation overtook the reply).
        case invalidated
    }

    /// What ``insert(_:proof:sessionOpen:)`` decided.
    enum Insert: Equatable {
        /// Store the entry, in the same step (under the same lock) as this decision. With `watch`, the session
        /// is new: report its end (``sessionEnded(_:)``) when its connection closes.
        case store(watch: Bool)
        case refused(Refusal)
    }

    /// Whose drop of a session's entries a count reported with ``entriesDropped(_:_:)`` belongs to.
    enum SessionDrop: Equatable {
        /// The session's connection closed.
        case ended
        /// The session's proof lapsed.
        case lapsed
    }

    /// What the shell must do with the entries, in order. An event produces at most one
    /// ``notifyDropObserver(epoch:)``.
    enum Action: Equatable {
        /// Drop this key (every field of it).
        case dropKey(String)
        /// Drop every entry.
        case dropAll(FlushReason)
        /// Drop the entries read by these sessions, the node's.
        case dropNode(UInt64, sessions: Set<UInt64>, FlushReason)
        /// Drop the entries read by these sessions, then report how many with ``entriesDropped(_:_:)``.
        case dropSessions(Set<UInt64>, SessionDrop)
        /// After releasing the lock: tell the drop observer, then report ``dropTold(_:)`` with this epoch.
        case notifyDropObserver(epoch: UInt64)
    }

    /// What vouches for one session's entries.
    struct Prover {
        var proof: Proof
        var node: UInt64
        /// The epoch of the drop that emptied it, until its clients were told.
        var leaving: UInt64?
    }

    /// What the local copy's status reports.
    struct Counters: Equatable {
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

    /// The staleness bound in nanoseconds; 0: none (``sweep(now:)`` drops nothing).
    let maxStalenessNanos: UInt64
    /// Invalidated keys remembered one by one, at most; one more drops everything.
    let maxInvalidatedKeys: Int

    /// Counts every change report; a read is stamped with it when sent.
    private(set) var epoch: UInt64 = 0
    /// The epoch of each key's latest invalidation since the last drop of everything.
    private(set) var invalidatedAt: [String: UInt64] = [:]
    /// The epoch of the latest drop of everything.
    private(set) var flushedAt: UInt64 = 0
    /// The listener that is up, per node: a node's reads may be kept only while it has one.
    private(set) var listeners: [UInt64: Int64] = [:]
    /// When each node's entries were last dropped (an insert read before that is refused).
    private(set) var nodeFlushedAt: [UInt64: UInt64] = [:]
    /// Data connections whose reads are kept here (an entry's tag names one), and their node.
    private(set) var sessions: [UInt64: UInt64] = [:]
    /// What vouches for each session's entries. A session whose entries were dropped stays here, marked
    /// `leaving` by the epoch of that drop, until the clients were told: only then may the proof leave it out.
    private(set) var provers: [UInt64: Prover] = [:]
    private(set) var counters = Counters()

    /// `maxStalenessNanos` 0: no bound.
    init(maxStalenessNanos: UInt64 = 0, maxInvalidatedKeys: Int = 100_000) {
        self.maxStalenessNanos = maxStalenessNanos
        self.maxInvalidatedKeys = maxInvalidatedKeys
    }

    /// Whether some node has its listener up (the local copy is in use).
    var hasListener: Bool { !listeners.isEmpty }

    // MARK: Reads

    /// Whether `read` may be kept; if so, its session now vouches for entries with `proof`. `sessionOpen`:
    /// whether the session's connection is still open, seen where its close is reported after this call.
    mutating func insert(_ read: Read, proof: Proof, sessionOpen: Bool) -> Insert {
        guard sessionOpen else { return .refused(.sessionClosed) }
        guard let listener = listeners[read.node] else { return .refused(.noListener) }
        guard read.redirect == listener else { return .refused(.otherListener) }
        guard flushedAt <= read.epoch else { return .refused(.flushed) }
        guard (nodeFlushedAt[read.node] ?? 0) <= read.epoch else { return .refused(.nodeFlushed) }
        guard (invalidatedAt[read.key] ?? 0) <= read.epoch else { return .refused(.invalidated) }
        let watch = sessions.updateValue(read.node, forKey: read.session) == nil
        provers[read.session] = Prover(proof: proof, node: read.node, leaving: nil)
        return .store(watch: watch)
    }

    /// Whether nothing reported a change of `key` (an invalidation, a drop of everything or of any node's
    /// part) since `epoch`.
    func unchanged(_ key: String, since epoch: UInt64) -> Bool {
        flushedAt <= epoch && (invalidatedAt[key] ?? 0) <= epoch && nodeFlushedAt.values.allSatisfy { $0 <= epoch }
    }

    // MARK: Changes

    /// A key changed: drop it. Past `maxInvalidatedKeys` remembered keys, everything is dropped.
    mutating func invalidate(_ key: String) -> [Action] {
        epoch += 1
        counters.invalidations += 1
        invalidatedAt[key] = epoch
        guard invalidatedAt.count > maxInvalidatedKeys else { return [.dropKey(key)] }
        return [.dropKey(key)] + dropAll(.overflow)
    }

    /// Everything may have changed.
    mutating func invalidateAll() -> [Action] {
        dropAll(.invalidateAll)
    }

    /// Everything on `node` may have changed.
    mutating func invalidateAll(node: UInt64) -> [Action] {
        drop(node: node, .invalidateAll)
    }

    /// `node`'s listener is up as `listener`: only reads tracked for it may be kept from now on, and what
    /// was read before is not vouched for.
    mutating func listenerUp(node: UInt64, listener: Int64) -> [Action] {
        listeners[node] = listener
        return drop(node: node, .trackingUp)
    }

    /// `node`'s listener is down: nothing its sessions read is tracked any longer.
    mutating func listenerDown(node: UInt64) -> [Action] {
        listeners[node] = nil
        return drop(node: node, .trackingDown)
    }

    /// `node` left the topology: nothing read from it may be served, and no insert can name it again (node
    /// ids are never reused), so nothing of it is kept.
    mutating func nodeRemoved(_ node: UInt64) -> [Action] {
        listeners[node] = nil
        counters.nodesRemoved += 1
        let actions = drop(node: node, .nodeRemoved)
        nodeFlushedAt[node] = nil
        return actions
    }

    /// A session's connection closed: Redis no longer tracks what it read, so nothing it read may be served.
    mutating func sessionEnded(_ session: UInt64) -> [Action] {
        guard sessions.removeValue(forKey: session) != nil else { return [] }
        epoch += 1
        counters.sessionsEnded += 1
        provers[session]?.leaving = epoch
        return [.dropSessions([session], .ended), .notifyDropObserver(epoch: epoch)]
    }

    /// The shell dropped `count` entries for a ``Action/dropSessions(_:_:)``.
    mutating func entriesDropped(_ count: Int, _ cause: SessionDrop) {
        switch cause {
        case .ended: counters.droppedWithSession += count
        case .lapsed: counters.droppedLapsed += count
        }
    }

    // MARK: Proof

    /// Drops the sessions whose proof is older than the bound at `now` (`CLOCK_MONOTONIC` nanoseconds). A
    /// session already leaving is not counted again.
    mutating func sweep(now: UInt64) -> [Action] {
        let bound = maxStalenessNanos
        guard bound > 0 else { return [] }
        let lapsed = provers.filter { $0.value.leaving == nil && $0.value.proof.provenAt &+ bound < now }.map(\.key)
        guard !lapsed.isEmpty else { return [] }
        epoch += 1
        for session in lapsed { provers[session]?.leaving = epoch }
        counters.proofLapses += lapsed.count
        return [.dropSessions(Set(lapsed), .lapsed), .notifyDropObserver(epoch: epoch)]
    }

    /// The clients were told of the drop made at `epoch`: the sessions it emptied stop holding back the proof
    /// (unless an insert since made them vouch for entries again). Answers their proofs, which vouch for
    /// nothing any longer.
    mutating func dropTold(_ epoch: UInt64) -> [Proof] {
        var released: [Proof] = []
        provers = provers.filter { _, prover in
            guard prover.leaving == epoch else { return true }
            released.append(prover.proof)
            return false
        }
        return released
    }

    /// The instant before which every invalidation Redis sent for an entry held (or dropped and not yet told)
    /// has been applied: the oldest proof of a prover, `now` when there is none.
    func freshness(now: UInt64) -> UInt64 {
        provers.values.reduce(now) { min($0, $1.proof.provenAt) }
    }

    // MARK: Drops

    /// Drops what `node`'s sessions read; everything at once when no other node has a session here.
    private mutating func drop(node: UInt64, _ reason: FlushReason) -> [Action] {
        if sessions.values.allSatisfy({ $0 == node }) { return dropAll(reason) }
        epoch += 1
        nodeFlushedAt[node] = epoch
        for (session, prover) in provers where prover.node == node { provers[session]?.leaving = epoch }
        counters.flushes[reason, default: 0] += 1
        // Sessions stay until their connection closes (their end is reported once).
        let of = Set(sessions.lazy.filter { $0.value == node }.map(\.key))
        return [.dropNode(node, sessions: of, reason), .notifyDropObserver(epoch: epoch)]
    }

    private mutating func dropAll(_ reason: FlushReason) -> [Action] {
        epoch += 1
        flushedAt = epoch
        invalidatedAt.removeAll()
        for session in provers.keys { provers[session]?.leaving = epoch }
        counters.flushes[reason, default: 0] += 1
        return [.dropAll(reason), .notifyDropObserver(epoch: epoch)]
    }
}

extension LocalCacheCoherence: Sendable where Proof: Sendable {}
extension LocalCacheCoherence.Prover: Sendable where Proof: Sendable {}
