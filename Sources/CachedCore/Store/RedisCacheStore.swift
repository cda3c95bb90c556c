import CachedProtocol
import CachedRedis
import Logging
import NIOConcurrencyHelpers
import NIOCore

/// Entries in Redis, in pyredis-cache's layout, with an optional coherent local copy (``LocalCache``).
///
/// Every command goes to the node the ``RedisTopology`` routes its key to; the topology's node events
/// keep the local copy coherent (wire them with ``LocalCache/handle(_:)``).
public final class RedisCacheStore: CacheStore {
    public let topology: any RedisTopology
    let localCache: LocalCache?
    /// Fills waiting for another daemon's (fed with the topology's invalidations: ``handle(_:)``).
    let watchers = KeyWatchers()

    public init(topology: any RedisTopology, localCache: LocalCache? = nil) {
        self.topology = topology
        self.localCache = localCache
        // The local copy says when it dropped entries wholesale, after the drop and before the near caches'
        // proof may leave the dropped entries out (docs/reliability.md, near caches).
        localCache?.observeDrops { [weak self] in self?.changeObserver.withLockedValue({ $0 })?(.all) }
    }

    /// Applies what a node reports: the local copy drops what changed, waiting fills look again.
    public func handle(_ event: RedisNodeEvent) {
        localCache?.handle(event)
        switch event {
        case .invalidate(_, let keys): watchers.changed(keys)
        case .invalidateAll, .trackingDown, .removed, .connectionLost: watchers.changedAll()
        case .trackingUp, .connectFailed: break
        }
        // After the local copy: a client told of a change reads the new value, not the dropped copy.
        guard let observer = changeObserver.withLockedValue({ $0 }) else { return }
        switch event {
        case .invalidate(_, let keys): observer(.keys(keys))
        // A listener that comes back up, or a data connection lost (Redis forgot what it read): nothing
        // told before can be vouched for. With a local copy, the copy tells (its drop observer), once the
        // entries are gone.
        case .invalidateAll, .trackingDown, .trackingUp, .removed, .connectionLost: if localCache == nil { observer(.all) }
        case .connectFailed: break
        }
    }

    private let changeObserver = NIOLockedValueBox<(@Sendable (StoreChange) -> Void)?>(nil)

    public func observeChanges(_ observer: @escaping @Sendable (StoreChange) -> Void) {
        changeObserver.withLockedValue { $0 = observer }
    }

    public func start() async {
        await topology.start()
    }

    public func shutdown() async {
        await topology.shutdown()
    }

    /// The local copy's sweep (``LocalCache/sweep(now:)``); without a bounded copy nothing held needs proof.
    public func proveFreshness(now: NIODeadline) -> NIODeadline {
        guard let localCache, localCache.isBounded else { return now }
        return localCache.sweep(now: now)
    }

    public func cachedValue(_ address: EntryAddress) -> EncodedValue? {
        localCache?.get(address)
    }

    public func get(_ address: EntryAddress, on eventLoop: any EventLoop) -> EventLoopFuture<ByteBuffer?> {
        let command: RedisCommand
        if let field = address.storeField {
            command = RedisCommand("HGET", .string(address.storeKey), .string(field))
        } else {
            command = RedisCommand("GET", .string(address.storeKey))
        }
        guard let localCache, let route = topology.route(address.storeKey, preferring: eventLoop) else {
            return Self.storeErrors(execute(command, key: address.storeKey, on: eventLoop)).flatMapThrowing { try Self.value($0.reply) }
        }
        let readAt = localCache.beginRead()
        let sentAt = NIODeadline.now()
        // The key's remaining time is read in the same round trip (pipelined on the same connection), so
        // the local copy never outlives the entry in Redis (Redis reports an expiry only when it deletes
        // the key, up to ~100 ms late).
        let read = topology.execute(command, key: address.storeKey, route: route)
        let ttl = route.connection.send(RedisCommand("PTTL", .string(address.storeKey))).map(Optional.some).recover { _ in nil }
        return Self.storeErrors(read.and(ttl)).flatMapThrowing { (answer, ttl) in
            let value = try Self.value(answer.reply)
            if let value, answer.route.connection === route.connection, let expiresAt = Self.expiry(ttl, now: sentAt) {
                localCache.insert(address, value: value, readAt: readAt, route: answer.route, expiresAt: expiresAt)
            }
            return value
        }
    }

    /// The bytes of a `GET`/`HGET` reply.
    static func value(_ reply: RedisReply) throws -> ByteBuffer? {
        switch reply {
        case .bulk(let value): return value
        case .null: return nil
        default: throw CachedError(.storeError, "unexpected reply from Redis to GET: \(reply)")
        }
    }

    /// When a key read with `ttl` (a `PTTL` reply) leaves Redis: `.distantFuture` for no expiry, nil when
    /// unknown or already gone (then nothing is kept locally).
    static func expiry(_ ttl: RedisReply?, now: NIODeadline) -> NIODeadline? {
        guard case .integer(let milliseconds)? = ttl else { return nil }
        if milliseconds == -1 { return .distantFuture }
        guard milliseconds > 0 else { return nil }
        return now + .milliseconds(milliseconds)
    }

    public func set(_ address: EntryAddress, value: ByteBuffer, ttl: Duration, on eventLoop: any EventLoop) -> EventLoopFuture<Void> {
        localCache?.invalidate(address.storeKey)
        let plain = Self.storeCommand(address, value, ttl: ttl, onlyIfAbsent: false)
        let sent: EventLoopFuture<RedisReply>
        if let meta = FleetLayout.metaKey(address.storeKey) {
            let lockField = FleetLayout.lockField(address.location)
            // Ends the entry's fill lock in the same step: a fill in flight on any daemon is fenced out.
            let script = Self.script(
                FleetLayout.write, keys: [address.storeKey, meta],
                [.string(lockField), .string(address.storeField ?? ""), .bytes(value), .string(Self.milliseconds(ttl))])
            sent = fencing(script, plain, endingLock: RedisCommand("HDEL", .string(meta), .string(lockField)), key: address.storeKey, on: eventLoop)
        } else {
            sent = send(plain, key: address.storeKey, on: eventLoop)
        }
        return Self.storeErrors(sent).flatMapThrowing { reply in
            switch reply {
            case .status, .integer: return
            default: throw CachedError(.storeError, "unexpected reply from Redis to SET: \(reply)")
            }
        }
    }

    public func fill(_ address: EntryAddress, value: ByteBuffer, ttl: Duration, on eventLoop: any EventLoop) -> EventLoopFuture<Bool> {
        localCache?.invalidate(address.storeKey)
        let sent = send(Self.storeCommand(address, value, ttl: ttl, onlyIfAbsent: true), key: address.storeKey, on: eventLoop)
        return Self.storeErrors(sent).flatMapThrowing { reply in
            switch reply {
            case .status: return true  // SET ... NX stored
            case .null: return false  // SET ... NX: the key exists
            case .integer(let n): return n == 1  // HSETNX
            default: throw CachedError(.storeError, "unexpected reply from Redis to a fill: \(reply)")
            }
        }
    }

    /// `HSET`/`HSETNX` for a hash field (fields cannot expire); otherwise one atomic `SET` with its
    /// expiry (`PX`; pyredis-cache did SET then EXPIRE) and `NX` when only an absent entry may be stored.
    static func storeCommand(_ address: EntryAddress, _ value: ByteBuffer, ttl: Duration, onlyIfAbsent: Bool) -> RedisCommand {
        if let field = address.storeField {
            return RedisCommand(onlyIfAbsent ? "HSETNX" : "HSET", .string(address.storeKey), .string(field), .bytes(value))
        }
        var arguments: [RedisArgument] = ["SET", .string(address.storeKey), .bytes(value)]
        if onlyIfAbsent { arguments.append("NX") }
        if ttl > .zero { arguments += ["PX", .string(milliseconds(ttl))] }
        return RedisCommand(arguments)
    }

    /// `EVAL script numkeys keys... args...`.
    static func script(_ source: String, keys: [String], _ arguments: [RedisArgument]) -> RedisCommand {
        RedisCommand(["EVAL", .string(source), .string(String(keys.count))] + keys.map { .string($0) } + arguments)
    }

    /// Whole milliseconds, rounded up ("0" for no expiry).
    static func milliseconds(_ duration: Duration) -> String {
        guard duration > .zero else { return "0" }
        return String(max(1, Int((duration / .milliseconds(1)).rounded(.up))))
    }

    public func delete(_ address: EntryAddress, on eventLoop: any EventLoop) -> EventLoopFuture<Int> {
        localCache?.invalidate(address.storeKey)
        let plain: RedisCommand
        if let field = address.storeField {
            plain = RedisCommand("HDEL", .string(address.storeKey), .string(field))
        } else {
            plain = RedisCommand("DEL", .string(address.storeKey))
        }
        guard let meta = FleetLayout.metaKey(address.storeKey) else { return integer(plain, key: address.storeKey, on: eventLoop) }
        // Ends the entry's fill lock in the same step: a fill in flight on any daemon is fenced out.
        let script = Self.script(
            FleetLayout.delete, keys: [address.storeKey, meta],
            [.string(FleetLayout.lockField(address.location)), .string(address.storeField ?? "")])
        let endLock = RedisCommand("HDEL", .string(meta), .string(FleetLayout.lockField(address.location)))
        return Self.integer(fencing(script, plain, endingLock: endLock, key: address.storeKey, on: eventLoop))
    }

    /// Sends a fencing write script (the write and the end of the fill lock in one step). During a
    /// cluster slot migration Redis refuses a two-key script whose keys are not all on one side
    /// (`TRYAGAIN`, for as long as the slot migrates): then the lock is ended first and the plain write
    /// follows, both single-key commands that follow `ASK`. A fill that runs between the two finds its
    /// lock gone and stores nothing, so the order keeps the fence.
    func fencing(
        _ script: RedisCommand, _ plain: RedisCommand, endingLock: RedisCommand, key: String, on eventLoop: any EventLoop
    ) -> EventLoopFuture<RedisReply> {
        send(script, key: key, on: eventLoop).flatMapError { error in
            guard Self.isTryAgain(error) else {
                return eventLoop.makeFailedFuture(error)
            }
            return self.send(endingLock, key: key, on: eventLoop).flatMap { _ in self.send(plain, key: key, on: eventLoop) }
        }
    }

    public func deleteHash(_ hash: HashAddress, on eventLoop: any EventLoop) -> EventLoopFuture<Int> {
        localCache?.invalidate(hash.storeKey)
        let plain = RedisCommand("DEL", .string(hash.storeKey))
        guard let meta = FleetLayout.metaKey(hash.storeKey) else { return integer(plain, key: hash.storeKey, on: eventLoop) }
        let script = Self.script(FleetLayout.deleteHash, keys: [hash.storeKey, meta], [])
        return Self.integer(fencing(script, plain, endingLock: RedisCommand("DEL", .string(meta)), key: hash.storeKey, on: eventLoop))
    }

    public func status() -> StoreStatus {
        let topology = self.topology.status
        let connected = topology.nodes.reduce(0) { $0 + $1.connections }
        var detail: [String: JSONValue] = [
            "url": .string(topology.url),
            "connections": .number(String(connected)),
            "poolSize": .number(String(topology.nodes.first?.poolSize ?? 0)),
            "topology": topology.json,
        ]
        if let localCache { detail["localCache"] = localCache.status }
        var status = StoreStatus(kind: "redis", available: topology.available, detail: detail, summary: topology.summary)
        status.nodes = topology.nodes
        return status
    }

    // MARK: Helpers

    func integer(_ command: RedisCommand, key: String, on eventLoop: any EventLoop) -> EventLoopFuture<Int> {
        Self.integer(send(command, key: key, on: eventLoop))
    }

    /// Whether a command failed because it was not run: a redirect (`TRYAGAIN` while a cluster slot
    /// migrates under a multi-key command, then `MOVED` or `ASK` once it moved) outlasted the retries.
    /// Asked of this store's own futures before ``map(_:)``.
    static func isTryAgain(_ error: any Error) -> Bool {
        (error as? RedisClientError)?.code == .notRun
    }

    /// `future`'s value, or nil when its command was not run (``isTryAgain(_:)``); other failures become
    /// ``CachedError``.
    static func unlessNotRun<Value: Sendable>(_ future: EventLoopFuture<Value>) -> EventLoopFuture<Value?> {
        future.map(Optional.some).flatMapError { error in
            let loop = future.eventLoop
            return isTryAgain(error) ? loop.makeSucceededFuture(nil) : loop.makeFailedFuture(map(error))
        }
    }

    /// The reply as an integer; failures become ``CachedError``.
    static func integer(_ reply: EventLoopFuture<RedisReply>) -> EventLoopFuture<Int> {
        storeErrors(reply).flatMapThrowing { reply in
            guard case .integer(let n) = reply else {
                throw CachedError(.storeError, "unexpected reply from Redis: \(reply)")
            }
            return Int(n)
        }
    }

    /// Sends a command to the node that serves `key`, following redirects (``RedisTopology/send(_:key:on:)``);
    /// fails with ``RedisClientError`` (an error reply too): callers map it with ``storeErrors(_:)``.
    func send(_ command: RedisCommand, key: String, on eventLoop: any EventLoop) -> EventLoopFuture<RedisReply> {
        topology.send(command, key: key, on: eventLoop)
    }

    /// ``send(_:key:on:)`` with the route that answered.
    func execute(_ command: RedisCommand, key: String, on eventLoop: any EventLoop) -> EventLoopFuture<(reply: RedisReply, route: RedisRoute)> {
        topology.execute(command, key: key, on: eventLoop)
    }

    /// `future` with its failures (this store's ``RedisClientError``s) as ``CachedError``.
    static func storeErrors<Value>(_ future: EventLoopFuture<Value>) -> EventLoopFuture<Value> {
        future.flatMapErrorThrowing { throw map($0) }
    }

    /// The one place where a Redis client error becomes the ``CachedError`` clients see: -32000 when nothing
    /// was sent, -32002 when the outcome is unknown, -32003 for an error reply (`data.redis`: its first
    /// word, such as `OOM`, `READONLY`, `MOVED`).
    static func map(_ error: any Error) -> CachedError {
        guard let error = error as? RedisClientError else {
            return CachedError(.storeUnavailable, "Redis unavailable: \(error)")
        }
        switch error.code {
        case .timeout: return CachedError(.storeTimeout, "Redis did not answer in time; the outcome is unknown")
        case .connectionClosed:
            // The command was sent: Redis may have run it. "Unavailable" would promise nothing was written.
            return CachedError(.storeTimeout, "Redis unavailable: \(error.message)")
        case .errorReply, .notRun:
            return CachedError(.storeError, "Redis error: \(error.message)", data: error.redisCode.map { .object(["redis": .string($0)]) })
        default: return CachedError(.storeUnavailable, "Redis unavailable: \(error.message)")
        }
    }
}
