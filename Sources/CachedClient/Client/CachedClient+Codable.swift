import CachedProtocol
import NIOCore

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

// MARK: - Codable values

extension CachedClient {
    /// Reads an entry and decodes its JSON value as `T`.
    ///
    /// With `fill`, a miss is filled locally with the lease flow (see
    /// ``get(key:identity:hashKey:hashId:args:kwargs:ttl:fill:)``): the filled value is encoded,
    /// stored and returned.
    /// - Parameters:
    ///   - type: the type to decode.
    ///   - decoder: the decoder to use (default: a plain `JSONDecoder`).
    ///   - encoder: the encoder for a filled value (default: a plain `JSONEncoder`).
    ///   - ttl: the TTL of a filled value (seconds; nil = the key's configured default).
    ///   - fill: computes the value on a miss (nil: no such entry).
    /// - Returns: the decoded value, or nil if there is none.
    /// - Throws: `DecodingError` if the stored bytes are not a `T`, besides the errors of `get`.
    public func getValue<T: Codable & Sendable>(
        _ type: T.Type = T.self, key: String, identity: some IdentityConvertible,
        hashKey: String? = nil, hashId: (any IdentityConvertible)? = nil,
        args: [JSONValue]? = nil, kwargs: [String: JSONValue]? = nil,
        decoder: JSONDecoder = JSONDecoder(), encoder: JSONEncoder = JSONEncoder(), ttl: Double? = nil,
        fill: (@Sendable () async throws -> T?)? = nil
    ) async throws -> T? {
        let bytes: [UInt8]?
        if let fill {
            bytes = try await get(key: key, identity: identity, hashKey: hashKey, hashId: hashId, args: args, kwargs: kwargs, ttl: ttl) {
                guard let value = try await fill() else { return nil }
                return Array(try encoder.encode(value))
            }
        } else {
            bytes = try await get(key: key, identity: identity, hashKey: hashKey, hashId: hashId, args: args, kwargs: kwargs).bytes
        }
        guard let bytes else { return nil }
        return try decoder.decode(T.self, from: Data(bytes))
    }

    /// Encodes `value` as JSON and stores it (see ``set(key:identity:hashKey:hashId:value:ttl:lease:)``).
    /// - Returns: whether the value was stored (false only for a refused lease).
    @discardableResult
    public func setValue<T: Encodable>(
        _ value: T, key: String, identity: some IdentityConvertible,
        hashKey: String? = nil, hashId: (any IdentityConvertible)? = nil,
        ttl: Double? = nil, lease: String? = nil, encoder: JSONEncoder = JSONEncoder()
    ) async throws -> Bool {
        let data = try encoder.encode(value)
        return try await set(
            key: key, identity: identity, hashKey: hashKey, hashId: hashId, value: ByteBuffer(bytes: data), ttl: ttl, lease: lease)
    }
}
