import CachedProtocol
import CachedRedis
import NIOCore

/// Entries in Redis, in pyredis-cache's layout.
public final class RedisCacheStore: CacheStore {
    public let pool: RedisConnectionPool

    public init(pool: RedisConnectionPool) {
        self.pool = pool
    }

    public func start() async { await pool.start() }
    public func shutdown() async { await pool.shutdown() }

    public func get(_ address: EntryAddress, on eventLoop: any EventLoop) -> EventLoopFuture<ByteBuffer?> {
        let command: RedisCommand
        if let field = address.storeField {
            command = RedisCommand("HGET", .string(address.storeKey), .string(field))
        } else {
            command = RedisCommand("GET", .string(address.storeKey))
        }
        return send(command, on: eventLoop).flatMapThrowing { reply in
            switch reply {
            case .bulk(let value): return value
            case .null: return nil
            default: throw CachedError(.storeError, "unexpected reply from Redis to GET: \(reply)")
            }
        }
    }

    public func set(_ address: EntryAddress, value: ByteBuffer, ttl: Double, on eventLoop: any EventLoop) -> EventLoopFuture<Void> {
        let command: RedisCommand
        if let field = address.storeField {
            command = RedisCommand("HSET", .string(address.storeKey), .string(field), .bytes(value))
        } else if ttl > 0 {
            // One atomic command: value and expiry together (pyredis-cache did SET then EXPIRE).
            let milliseconds = max(1, Int((ttl * 1000).rounded(.up)))
            command = RedisCommand("SET", .string(address.storeKey), .bytes(value), "PX", .string(String(milliseconds)))
        } else {
            command = RedisCommand("SET", .string(address.storeKey), .bytes(value))
        }
        return send(command, on: eventLoop).flatMapThrowing { reply in
            switch reply {
            case .status, .integer: return
            default: throw CachedError(.storeError, "unexpected reply from Redis to SET: \(reply)")
            }
        }
    }

    public func delete(_ address: EntryAddress, on eventLoop: any EventLoop) -> EventLoopFuture<Int> {
        let command: RedisCommand
        if let field = address.storeField {
            command = RedisCommand("HDEL", .string(address.storeKey), .string(field))
        } else {
            command = RedisCommand("DEL", .string(address.storeKey))
        }
        return integer(command, on: eventLoop)
    }

    public func deleteHash(_ hash: HashAddress, on eventLoop: any EventLoop) -> EventLoopFuture<Int> {
        integer(RedisCommand("DEL", .string(hash.storeKey)), on: eventLoop)
    }

    public func status() -> StoreStatus {
        let connected = pool.connectedCount
        return StoreStatus(
            kind: "redis", available: connected > 0,
            detail: [
                "url": .string(pool.configuration.redactedDescription),
                "connections": .number(String(connected)),
                "poolSize": .number(String(pool.configuration.poolSize)),
            ])
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
        pool.send(command, preferring: eventLoop)
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
        case .errorReply: return CachedError(.storeError, "Redis error: \(error.message)")
        default: return CachedError(.storeUnavailable, "Redis unavailable: \(error.message)")
        }
    }
}
