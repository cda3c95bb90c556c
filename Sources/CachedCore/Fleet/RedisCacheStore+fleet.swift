import CachedProtocol
import CachedRedis
import NIOCore

extension RedisCacheStore: FleetLocks {
    public var fleet: (any FleetLocks)? { self }

    public func changeMark() -> UInt64 {
        localCache?.beginRead() ?? 0
    }

    public func unchanged(_ address: EntryAddress, since mark: UInt64) -> Bool {
        localCache?.unchanged(address.storeKey, since: mark) ?? true
    }

    public func supports(_ location: StoreLocation) -> Bool {
        FleetLayout.metaKey(location.key) != nil
    }

    public func readAged(
        _ address: EntryAddress, policy: DaemonConfiguration.AgingPolicy, on eventLoop: any EventLoop
    ) -> EventLoopFuture<StoredEntry?> {
        // Hash fields cannot expire: they have no age.
        guard address.storeField == nil, let meta = FleetLayout.metaKey(address.storeKey) else {
            return get(address, on: eventLoop).map { $0.map { StoredEntry(value: $0, age: nil) } }
        }
        let readAt = localCache?.beginRead() ?? 0
        let localCache = self.localCache
        let command = Self.script(FleetLayout.readAged, keys: [address.storeKey, meta], [])
        let sentAt = NIODeadline.now()
        return Self.unlessNotRun(execute(command, key: address.storeKey, on: eventLoop)).flatMap { answer in
            guard let (reply, route) = answer else {
                // A cluster slot migrating: the two-key script gets TRYAGAIN; read the entry alone (no age).
                return self.get(address, on: eventLoop).map { $0.map { StoredEntry(value: $0, age: nil) } }
            }
            return route.connection.eventLoop.makeCompletedFuture { () throws -> StoredEntry? in
                guard case .array(let parts) = reply, parts.count == 3 else {
                    throw CachedError(.storeError, "unexpected reply from Redis to an aged read: \(reply)")
                }
                guard case .bulk(let value) = parts[0] else { return nil }
                let age = Self.age(ttl: parts[1], delta: parts[2], policy: policy, sentAt: sentAt, now: .now())
                if let expiresAt = Self.expiry(parts[1], now: sentAt) {  // nil: expiring this instant, keep nothing
                    localCache?.insert(address, value: value, readAt: readAt, route: route, age: age, expiresAt: expiresAt)
                }
                return StoredEntry(value: value, age: age)
            }
        }
    }

    /// The entry's phases from its remaining time in Redis (`PTTL`): the stale window and grace are the
    /// last part of it. The expiry counts from when the read was sent (never later than Redis's), the fresh
    /// and stale windows from the reply (a read held up in Redis does not turn the entry stale early).
    /// Nil when it has no expiry.
    static func age(
        ttl: RedisReply, delta: RedisReply, policy: DaemonConfiguration.AgingPolicy, sentAt: NIODeadline? = nil, now: NIODeadline
    ) -> EntryAge? {
        guard case .integer(let milliseconds) = ttl, milliseconds > 0 else { return nil }
        let remaining = TimeAmount.milliseconds(milliseconds)
        let expiresAt = (sentAt ?? now) + remaining
        let staleUntil = min(now + remaining - TimeAmount(policy.grace), expiresAt)
        let freshUntil = min(now + remaining - TimeAmount(policy.grace) - TimeAmount(policy.staleTTL), staleUntil)
        var last: Duration?
        if case .bulk(var bytes) = delta, let text = bytes.readString(length: bytes.readableBytes), let ms = Int(text), ms >= 0 {
            last = .milliseconds(ms)
        }
        return EntryAge(freshUntil: freshUntil, staleUntil: staleUntil, expiresAt: expiresAt, delta: last, beta: policy.beta)
    }

    public func acquire(
        _ location: StoreLocation, token: String, lease: Duration, requireAbsent: Bool, on eventLoop: any EventLoop
    ) -> EventLoopFuture<FleetAcquire> {
        guard let sent = lock(location, token: token, lease: lease, requireAbsent: requireAbsent, on: eventLoop) else {
            return eventLoop.makeSucceededFuture(.won)
        }
        return Self.unlessNotRun(sent).flatMapThrowing { reply in try reply.map(Self.acquired) ?? .notRun }
    }

    /// Sends the lock script (nil: the location has no lock); fails with ``RedisClientError``.
    private func lock(
        _ location: StoreLocation, token: String, lease: Duration, requireAbsent: Bool, on eventLoop: any EventLoop
    ) -> EventLoopFuture<RedisReply>? {
        guard let meta = FleetLayout.metaKey(location.key) else { return nil }
        let command = Self.script(
            FleetLayout.acquire, keys: [location.key, meta],
            [
                .string(FleetLayout.lockField(location)), .string(token), .string(Self.milliseconds(lease)),
                .string(location.field ?? ""), .string(requireAbsent ? "1" : "0"),
            ])
        return send(command, key: location.key, on: eventLoop)
    }

    /// What the lock script's reply says.
    private static func acquired(_ reply: RedisReply) throws -> FleetAcquire {
        guard case .array(let parts) = reply, case .integer(let code)? = parts.first else {
            throw CachedError(.storeError, "unexpected reply from Redis to a fill lock: \(reply)")
        }
        switch code {
        case 1: return .won
        case 2:
            guard parts.count == 2, case .bulk(let value) = parts[1] else {
                throw CachedError(.storeError, "unexpected reply from Redis to a fill lock: \(reply)")
            }
            return .present(value)
        default: return .held
        }
    }

    public func store(
        _ location: StoreLocation, token: String?, value: ByteBuffer?, ttl: Duration, mode: FleetStoreMode, delta: Duration?,
        on eventLoop: any EventLoop
    ) -> EventLoopFuture<FleetStoreOutcome> {
        guard let meta = FleetLayout.metaKey(location.key) else {
            return eventLoop.makeFailedFuture(CachedError(.storeError, "no fill lock for \(location)"))
        }
        localCache?.invalidate(location.key)
        var modeName = "overwrite"
        var expected = ByteBuffer()
        switch mode {
        case .fill: modeName = "fill"
        case .refresh(let bytes):
            modeName = "refresh"
            expected = bytes
        case .overwrite: break
        }
        let command = Self.script(
            FleetLayout.store, keys: [location.key, meta],
            [
                .string(FleetLayout.lockField(location)), .string(token ?? ""), .string(modeName), .string(location.field ?? ""),
                .bytes(value ?? ByteBuffer()), .string(Self.milliseconds(ttl)), .bytes(expected),
                .string(delta.map { String(max(0, Int(($0 / .milliseconds(1)).rounded()))) } ?? ""), .string(value == nil ? "1" : "0"),
            ])
        return Self.unlessNotRun(send(command, key: location.key, on: eventLoop)).flatMapThrowing { reply in
            switch reply {
            case nil: return .notRun
            case .integer(1)?: return .stored
            case .integer(0)?: return .lockLost
            case .integer(-1)?: return .writtenMeanwhile
            case let reply?: throw CachedError(.storeError, "unexpected reply from Redis to a fenced store: \(reply)")
            }
        }
    }

    public func release(_ location: StoreLocation, token: String, on eventLoop: any EventLoop) -> EventLoopFuture<Bool> {
        guard let meta = FleetLayout.metaKey(location.key) else { return eventLoop.makeSucceededFuture(false) }
        let command = Self.script(FleetLayout.release, keys: [meta], [.string(FleetLayout.lockField(location)), .string(token)])
        return integer(command, key: location.key, on: eventLoop).map { $0 == 1 }
    }

    /// The entry's key and its metadata key: a look reads both (tracked), so the holder's store and the
    /// lock's end (a handler error, a release) are both reported.
    public func watch(_ location: StoreLocation, _ wake: @escaping @Sendable () -> Void) -> [KeyWatchers.Watch] {
        ([location.key] + (FleetLayout.metaKey(location.key).map { [$0] } ?? [])).map { watchers.add($0, wake) }
    }

    public func unwatch(_ watches: [KeyWatchers.Watch]) {
        watches.forEach(watchers.remove)
    }
}
