import CachedProtocol
import NIOCore

// MARK: - Methods of the protocol

extension CachedClient {
    /// Reads an entry: `get {key, identity, hashKey?, hashId?, args?, kwargs?}`.
    ///
    /// On a miss for a key without a sync handler the first asker gets ``GetResult/lease``: it
    /// should compute the value and `set` it with that lease (other askers of the same entry wait for
    /// it, up to the key's `lease_timeout`). The `fill:` variant does this for you.
    /// - Parameters:
    ///   - key: the entry's key name (3 to 128 characters: letters, digits, `_ - . : / @ +`).
    ///   - identity: an integer or string identity.
    ///   - hashKey: with `hashId`, the hash the entry lives in.
    ///   - args: positional arguments passed to the key's sync handler.
    ///   - kwargs: keyword arguments passed to the key's sync handler.
    ///   - lease: false for a reader that never fills: a miss is answered at once, never with a lease
    ///     and never after waiting behind another client's.
    ///   - timeout: how long the call may take (nil: the client's ``timeout``); past it the daemon answers
    ///     `CachedError` -32009 (`.deadlineExceeded`). A cancelled task throws `CancellationError` at once.
    /// - Throws: `CachedError` for an error answer, ``CachedClientError`` for transport failures.
    public func get(
        key: String, identity: some IdentityConvertible, hashKey: String? = nil, hashId: (any IdentityConvertible)? = nil,
        args: [JSONValue]? = nil, kwargs: [String: JSONValue]? = nil, lease: Bool = true, timeout: Duration? = nil
    ) async throws -> GetResult {
        let request = Request.get(key: key, identity: identity, hashKey: hashKey, hashId: hashId, args: args, kwargs: kwargs, lease: lease)
            .withTimeout(timeout)
        guard let near, args == nil, kwargs == nil, (hashKey == nil) == (hashId == nil) else {
            return try GetResult(json: try await send(request))
        }
        let address = EntryAddress(
            key: key, identity: identity.cachedIdentity, hash: hashKey.map { HashAddress(hashKey: $0, hashId: hashId!.cachedIdentity) })
        // (the lookup first applies every notification waiting in the notification socket)
        if let kept = near.lookup(address) { return kept }
        let token = near.begin(address)
        let json: JSONValue
        do {
            json = try await send(request)
        } catch {
            near.finish(address, token: token, answer: nil, nearTTL: nil)
            throw error
        }
        let result = try? GetResult(json: json)
        var nearTTL: Int64?
        if case .object(let members) = json, case .number(let text)? = members["nearTTL"] { nearTTL = Int64(text) }
        near.finish(address, token: token, answer: result, nearTTL: nearTTL)
        guard let result else { return try GetResult(json: json) }
        return result
    }

    /// Gives back a lease whose fill failed: `release {..., lease}`. The next waiting `get` of the entry
    /// gets a new lease at once, instead of waiting for the key's `lease_timeout`.
    /// - Returns: false when the token was no longer the entry's live lease (expired, revoked, passed on).
    @discardableResult
    public func release(
        key: String, identity: some IdentityConvertible, hashKey: String? = nil, hashId: (any IdentityConvertible)? = nil,
        lease: String, timeout: Duration? = nil
    ) async throws -> Bool {
        let result = try await send(.release(key: key, identity: identity, hashKey: hashKey, hashId: hashId, lease: lease).withTimeout(timeout))
        guard case .bool(let released)? = result["released"] else {
            throw CachedClientError.protocolViolation("release answer has no \"released\"")
        }
        return released
    }

    /// Stores a value: `set {..., value, ttl?, lease?}`.
    /// - Parameters:
    ///   - value: the bytes to store; text that is not UTF-8 travels base64-encoded automatically.
    ///   - ttl: seconds (fractions allowed); 0 = no expiry; nil = the key's configured default.
    ///   - lease: the token of a `get` miss; the set is refused if the lease is no longer valid.
    ///   - timeout: how long the call may take (nil: the client's ``timeout``); at -32009 the write may still
    ///     take effect.
    /// - Returns: whether the value was stored (false only for a refused lease).
    @discardableResult
    public func set(
        key: String, identity: some IdentityConvertible, hashKey: String? = nil, hashId: (any IdentityConvertible)? = nil,
        value: ByteBuffer, ttl: Double? = nil, lease: String? = nil, timeout: Duration? = nil
    ) async throws -> Bool {
        let result = try await send(
            .set(key: key, identity: identity, hashKey: hashKey, hashId: hashId, value: value, ttl: ttl, lease: lease).withTimeout(timeout))
        guard case .bool(let stored)? = result["stored"] else {
            throw CachedClientError.protocolViolation("set answer has no \"stored\" flag")
        }
        return stored
    }

    /// Stores a value given as bytes.
    @discardableResult
    public func set(
        key: String, identity: some IdentityConvertible, hashKey: String? = nil, hashId: (any IdentityConvertible)? = nil,
        value: [UInt8], ttl: Double? = nil, lease: String? = nil, timeout: Duration? = nil
    ) async throws -> Bool {
        try await set(
            key: key, identity: identity, hashKey: hashKey, hashId: hashId, value: ByteBuffer(bytes: value), ttl: ttl, lease: lease,
            timeout: timeout)
    }

    /// Stores a value given as text (its UTF-8 bytes).
    @discardableResult
    public func set(
        key: String, identity: some IdentityConvertible, hashKey: String? = nil, hashId: (any IdentityConvertible)? = nil,
        value: String, ttl: Double? = nil, lease: String? = nil, timeout: Duration? = nil
    ) async throws -> Bool {
        try await set(
            key: key, identity: identity, hashKey: hashKey, hashId: hashId, value: ByteBuffer(string: value), ttl: ttl, lease: lease,
            timeout: timeout)
    }

    /// Removes an entry (and revokes a lease in flight for it).
    /// - Returns: the number of entries deleted (0 or 1).
    @discardableResult
    public func delete(
        key: String, identity: some IdentityConvertible, hashKey: String? = nil, hashId: (any IdentityConvertible)? = nil,
        timeout: Duration? = nil
    ) async throws -> Int {
        try Self.deletedCount(try await send(.delete(key: key, identity: identity, hashKey: hashKey, hashId: hashId).withTimeout(timeout)))
    }

    /// Removes a whole hash of entries.
    /// - Returns: the number of hashes deleted (0 or 1).
    @discardableResult
    public func deleteHash(hashKey: String, hashId: some IdentityConvertible, timeout: Duration? = nil) async throws -> Int {
        try Self.deletedCount(try await send(.deleteHash(hashKey: hashKey, hashId: hashId).withTimeout(timeout)))
    }

    /// Checks that the daemon answers.
    public func ping(timeout: Duration? = nil) async throws {
        let result = try await send(Request.ping.withTimeout(timeout))
        guard result == .string("pong") else {
            throw CachedClientError.protocolViolation("ping answered \(result.typeName), not \"pong\"")
        }
    }

    /// The daemon's counters (see `docs/protocol.md`, `stats`).
    public func stats() async throws -> JSONValue {
        try await send(.stats)
    }

    // MARK: Helpers

    static func deletedCount(_ result: JSONValue) throws(CachedClientError) -> Int {
        guard case .number(let raw)? = result["deleted"], let count = Int(raw) else {
            throw .protocolViolation("delete answer has no \"deleted\" count")
        }
        return count
    }
}

extension JSONValue {
    fileprivate subscript(_ name: String) -> JSONValue? {
        objectValue?[name]
    }
}
