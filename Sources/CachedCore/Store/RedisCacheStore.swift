import CachedProtocol
import CachedRedis
import Logging
import NIOCore

/// Entries in Redis, in pyredis-cache's layout, with an optional coherent local copy (``LocalCache``).
public final class RedisCacheStore: CacheStore {
    public let pool: RedisConnectionPool
    let localCache: LocalCache?
    let listener: RedisInvalidationListener?

    public init(pool: RedisConnectionPool, localCache: LocalCache? = nil, listenerLoop: (any EventLoop)? = nil, logger: Logger? = nil) {
        self.pool = pool
        self.localCache = localCache
        if let localCache, let listenerLoop, let logger {
            self.listener = RedisInvalidationListener(
                configuration: pool.configuration, eventLoop: listenerLoop, logger: logger
            ) { event in
                switch event {
                case .invalidate(let keys): keys.forEach(localCache.invalidate)
                case .invalidateAll: localCache.invalidateAll()
                case .connected(let id):
                    // Existing connections switch their tracking to the new listener before values are cached again.
                    pool.setTrackingRedirect(id).whenComplete { _ in localCache.setListener(id) }
                case .disconnected:
                    localCache.setListener(nil)
                    _ = pool.setTrackingRedirect(nil)
                }
            }
        } else {
            self.listener = nil
        }
    }

    public func start() async {
        await listener?.start()
        await pool.start()
    }

    public func shutdown() async {
        await listener?.shutdown()
        await pool.shutdown()
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
        guard let connection = pool.connection(preferring: eventLoop) else {
            return eventLoop.makeFailedFuture(CachedError(.storeUnavailable, "Redis unavailable: no connection to Redis is up"))
        }
        let readAt = localCache?.beginRead() ?? 0
        let localCache = self.localCache
        return Self.checked(connection.send(command)).flatMapThrowing { reply in
            switch reply {
            case .bulk(let value):
                localCache?.insert(address, value: value, readAt: readAt, on: connection)
                return value
            case .null: return nil
            default: throw CachedError(.storeError, "unexpected reply from Redis to GET: \(reply)")
            }
        }
    }

    public func set(_ address: EntryAddress, value: ByteBuffer, ttl: Duration, on eventLoop: any EventLoop) -> EventLoopFuture<Void> {
        localCache?.invalidate(address.storeKey)
        return send(Self.storeCommand(address, value, ttl: ttl, onlyIfAbsent: false), on: eventLoop).flatMapThrowing { reply in
            switch reply {
            case .status, .integer: return
            default: throw CachedError(.storeError, "unexpected reply from Redis to SET: \(reply)")
            }
        }
    }

    public func fill(_ address: EntryAddress, value: ByteBuffer, ttl: Duration, on eventLoop: any EventLoop) -> EventLoopFuture<Bool> {
        localCache?.invalidate(address.storeKey)
        return send(Self.storeCommand(address, value, ttl: ttl, onlyIfAbsent: true), on: eventLoop).flatMapThrowing { reply in
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
        if ttl > .zero {
            let milliseconds = max(1, Int((ttl / .milliseconds(1)).rounded(.up)))
            arguments += ["PX", .string(String(milliseconds))]
        }
        return RedisCommand(arguments)
    }

    public func delete(_ address: EntryAddress, on eventLoop: any EventLoop) -> EventLoopFuture<Int> {
        localCache?.invalidate(address.storeKey)
        let command: RedisCommand
        if let field = address.storeField {
            command = RedisCommand("HDEL", .string(address.storeKey), .string(field))
        } else {
            command = RedisCommand("DEL", .string(address.storeKey))
        }
        return integer(command, on: eventLoop)
    }

    public func deleteHash(_ hash: HashAddress, on eventLoop: any EventLoop) -> EventLoopFuture<Int> {
        localCache?.invalidate(hash.storeKey)
        return integer(RedisCommand("DEL", .string(hash.storeKey)), on: eventLoop)
    }

    public func status() -> StoreStatus {
        let connected = pool.connectedCount
        var detail: [String: JSONValue] = [
            "url": .string(pool.configuration.redactedDescription),
            "connections": .number(String(connected)),
            "poolSize": .number(String(pool.configuration.poolSize)),
        ]
        if let localCache { detail["localCache"] = localCache.status }
        return StoreStatus(kind: "redis", available: connected > 0, detail: detail)
    }

    // MARK: Helpers

    private func integer(_ command: RedisCommand, on eventLoop: any EventLoop) -> EventLoopFuture<Int> {
        send(command, on: eventLoop).flatMapThrowing { reply in
            guard case .integer(let n) = reply else {
                throw CachedError(.storeError, "unexpected reply from Redis: \(reply)")
            }
            return Int(n)
        }
    }

    /// Sends a command; maps client errors and error replies to ``CachedError``.
    private func send(_ command: RedisCommand, on eventLoop: any EventLoop) -> EventLoopFuture<RedisReply> {
        Self.checked(pool.send(command, preferring: eventLoop))
    }

    /// Maps client errors and error replies to ``CachedError``.
    private static func checked(_ future: EventLoopFuture<RedisReply>) -> EventLoopFuture<RedisReply> {
        future
            .flatMapErrorThrowing { error in throw Self.map(error) }
            .flatMapThrowing { reply in
                if case .error(let message) = reply {
                    throw CachedError(
                        .storeError, "Redis error: \(message)",
                        data: .object(["redis": .string(String(message.prefix { $0 != " " }))]))
                }
                return reply
            }
    }

    static func map(_ error: any Error) -> CachedError {
        guard let error = error as? RedisClientError else {
            return CachedError(.storeUnavailable, "Redis unavailable: \(error)")
        }
        switch error.code {
        case .timeout: return CachedError(.storeTimeout, "Redis did not answer in time; the outcome is unknown")
        case .connectionClosed:
            // The command was sent: Redis may have run it. "Unavailable" would promise nothing was written.
            return CachedError(.storeTimeout, "Redis unavailable: \(error.message)")
        case .errorReply: return CachedError(.storeError, "Redis error: \(error.message)")
        default: return CachedError(.storeUnavailable, "Redis unavailable: \(error.message)")
        }
    }
}
