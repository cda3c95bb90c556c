import CachedProtocol
import CachedRedis
import NIOCore

/// Where entries live: Redis in production, or the embedded in-process store.
///
/// Futures fail with ``CachedError`` (store unavailable, timeout, store error).
public protocol CacheStore: Sendable {
    /// The entry's bytes, or nil on a miss. One round trip (the local copy is not consulted: callers ask
    /// ``cachedValue(_:)`` first).
    func get(_ address: EntryAddress, on eventLoop: any EventLoop) -> EventLoopFuture<ByteBuffer?>
    /// Stores the entry; `ttl` zero = no expiry (ignored for hash fields, which cannot expire).
    func set(_ address: EntryAddress, value: ByteBuffer, ttl: Duration, on eventLoop: any EventLoop) -> EventLoopFuture<Void>
    /// Stores the entry only if it is absent (`SET ... NX`, `HSETNX`): true if stored. Fills use it, so a
    /// value written by anyone since the fill's miss is never replaced by the fill's older one.
    func fill(_ address: EntryAddress, value: ByteBuffer, ttl: Duration, on eventLoop: any EventLoop) -> EventLoopFuture<Bool>
    /// Deletes the entry; the number deleted (0 or 1).
    func delete(_ address: EntryAddress, on eventLoop: any EventLoop) -> EventLoopFuture<Int>
    /// Deletes a whole hash; the number deleted (0 or 1).
    func deleteHash(_ hash: HashAddress, on eventLoop: any EventLoop) -> EventLoopFuture<Int>
    /// The entry with its age (for keys with `policy`: stale-while-revalidate, grace, early refresh), or
    /// nil on a miss. One round trip. A local copy made from it carries the age.
    func readAged(_ address: EntryAddress, policy: DaemonConfiguration.AgingPolicy, on eventLoop: any EventLoop) -> EventLoopFuture<StoredEntry?>
    /// A mark of the store's change reports so far, for ``unchanged(_:since:)``.
    func changeMark() -> UInt64
    /// False when a change of the entry was reported since `mark` (an invalidation, a flush); true only
    /// when none was. No default: answering true for a store that learns of changes from elsewhere would
    /// let a fill overwrite a newer value.
    func unchanged(_ address: EntryAddress, since mark: UInt64) -> Bool
    /// The fleet's fill locks, when the store is shared by several daemons (Redis); nil otherwise.
    var fleet: (any FleetLocks)? { get }
    /// The entry's bytes if they are in this process's memory right now (no I/O); nil otherwise.
    func cachedValue(_ address: EntryAddress) -> EncodedValue?
    /// A short description of the store's state for `stats`.
    func status() -> StoreStatus
    /// Starts the store (connects); returns when the first attempt has ended.
    func start() async
    /// Stops the store (closes connections).
    func shutdown() async
    /// Calls `observer` with every change the store learns of other than the writes made through it.
    func observeChanges(_ observer: @escaping @Sendable (StoreChange) -> Void)
    /// The staleness bound's sweep, on every beat of the proof publisher: drops what in this process's
    /// memory lost its proof, and answers the instant before which every change of an entry held in memory
    /// has been applied and reported to the change observer (`now` when nothing held needs proof). No
    /// default: a store that keeps copies of another's data must answer it truthfully.
    func proveFreshness(now: NIODeadline) -> NIODeadline
}

/// The state of the store, reported by `stats` and in systemd's `STATUS=`.
public struct StoreStatus: Sendable, Hashable {
    public var kind: String
    public var available: Bool
    public var detail: [String: JSONValue]
    /// A short phrase for systemd's `STATUS=` (for Redis: the master, its connections, Sentinels).
    public var summary: String?
    /// The Redis nodes with what they measured (for the metrics; empty for the embedded store).
    public var nodes: [RedisTopologyStatus.Node] = []

    public init(kind: String, available: Bool, detail: [String: JSONValue], summary: String? = nil) {
        self.kind = kind
        self.available = available
        self.detail = detail
        self.summary = summary
    }
}

/// What changed in a store, as client tracking needs it.
public enum StoreChange: Sendable {
    /// These Redis keys changed (an invalidation from Redis).
    case keys([String])
    /// Anything may have changed (the invalidation source went down or came back, a flush, a node left).
    case all
}

extension CacheStore {
    /// None by default: a store that changes only through this daemon (the embedded one).
    public func observeChanges(_ observer: @escaping @Sendable (StoreChange) -> Void) {}

    public func cachedValue(_ address: EntryAddress) -> EncodedValue? { nil }
    public func readAged(_ address: EntryAddress, policy: DaemonConfiguration.AgingPolicy, on eventLoop: any EventLoop) -> EventLoopFuture<StoredEntry?> {
        get(address, on: eventLoop).map { $0.map { StoredEntry(value: $0, age: nil) } }
    }
    public var fleet: (any FleetLocks)? { nil }
    public func start() async {}
    public func shutdown() async {}
}
