import CachedProtocol
import NIOCore

// MARK: - Filling misses locally (the lease flow)

extension CachedClient {
    /// Reads an entry, computing it locally on a miss, with one computation per entry across every
    /// client of the daemon.
    ///
    /// - On a hit, returns the stored value.
    /// - On a miss with a lease (this caller is the first asker), runs `fill`, stores its value with
    ///   the lease token and returns it. If the daemon refuses the lease (the entry was written or
    ///   deleted meanwhile, or the lease expired), the filled value is still returned, just not stored.
    /// - On a miss without a lease, the daemon already has the value (the key's sync handler filled it,
    ///   or this call waited for another client's fill) and it is returned.
    ///
    /// If `fill` throws, the lease is given back (`release`) so that the next asker fills at once, and
    /// the error is rethrown; a failure of the release itself never hides it. If `fill` returns nil
    /// (no such entry), the lease is given back too and nil is returned.
    /// - Parameters:
    ///   - ttl: the TTL of the stored value (seconds; nil = the key's configured default).
    ///   - timeout: the timeout of the `get` (and of the `set` or `release` after the fill): nil, the client's.
    ///   - fill: computes the value on a miss; nil means there is no such entry.
    /// - Returns: the value, or nil if there is none.
    public func get(
        key: String, identity: some IdentityConvertible, hashKey: String? = nil, hashId: (any IdentityConvertible)? = nil,
        args: [JSONValue]? = nil, kwargs: [String: JSONValue]? = nil, ttl: Double? = nil, timeout: Duration? = nil,
        fill: @Sendable () async throws -> [UInt8]?
    ) async throws -> [UInt8]? {
        let answer = try await get(key: key, identity: identity, hashKey: hashKey, hashId: hashId, args: args, kwargs: kwargs, timeout: timeout)
        guard !answer.hit, let lease = answer.lease else { return answer.bytes }
        let filled: [UInt8]?
        do {
            filled = try await fill()
        } catch {
            _ = try? await release(key: key, identity: identity, hashKey: hashKey, hashId: hashId, lease: lease, timeout: timeout)
            throw error
        }
        guard let value = filled else {
            _ = try? await release(key: key, identity: identity, hashKey: hashKey, hashId: hashId, lease: lease, timeout: timeout)
            return nil
        }
        // A refused lease (stored: false) is not an error: the caller still gets its value.
        try await set(key: key, identity: identity, hashKey: hashKey, hashId: hashId, value: value, ttl: ttl, lease: lease, timeout: timeout)
        return value
    }
}
