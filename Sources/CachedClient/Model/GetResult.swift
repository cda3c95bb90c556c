import CachedProtocol
import NIOCore

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

// MARK: - The answer to `get`

/// The answer to a `get`.
public struct GetResult: Sendable, Hashable {
    /// Whether the value was in the store.
    public var hit: Bool
    /// The value's bytes; nil when there is none (a miss with a lease, or a handler that found no entry).
    public var value: ByteBuffer?
    /// On a miss for a key without a sync handler, the token that makes this caller the filler: store
    /// the value with `set(..., lease: token)` (other askers wait for it). See ``CachedClient/get(key:identity:hashKey:hashId:args:kwargs:ttl:fill:)``.
    public var lease: String?
    /// False when the daemon filled the value from a handler but could not store it (Redis down, or
    /// the entry was written or deleted meanwhile).
    public var cached: Bool
    /// True when the value is past its key's `ttl`: answered from the stale window (one background
    /// refresh is under way) or from grace after a failed refresh. See docs/protocol.md.
    public var stale: Bool

    /// Creates a result.
    public init(hit: Bool, value: ByteBuffer?, lease: String? = nil, cached: Bool = true, stale: Bool = false) {
        self.hit = hit
        self.value = value
        self.lease = lease
        self.cached = cached
        self.stale = stale
    }

    /// Reads a `get` result object (`{"hit":...,"value":...,"encoding"?,"lease"?,"cached"?,"stale"?}`).
    /// - Throws: ``CachedClientError`` `.protocolViolation` if it is not one.
    public init(json: JSONValue) throws(CachedClientError) {
        guard case .object(let members) = json, case .bool(let hit)? = members["hit"] else {
            throw .protocolViolation("get answer is not {hit, value}: \(json.typeName)")
        }
        self.hit = hit
        switch members["value"] {
        case nil, .null?:
            self.value = nil
        case .string(let text)?:
            let encoding = members["encoding"]?.stringValue.flatMap(ValueEncoding.init(rawValue:)) ?? .utf8
            guard let bytes = try? ValueEncoding.decode(text, encoding: encoding) else {
                throw .protocolViolation("get answer has an invalid base64 value")
            }
            self.value = bytes
        case let other?:
            throw .protocolViolation("get answer value is a JSON \(other.typeName)")
        }
        self.lease = members["lease"]?.stringValue
        self.cached = members["cached"] != .bool(false)
        self.stale = members["stale"] == .bool(true)
    }

    /// The value's bytes.
    public var bytes: [UInt8]? { value.map { Array($0.readableBytesView) } }

    /// The value as UTF-8 text (invalid sequences are repaired).
    public var string: String? { value.map { String(buffer: $0) } }

    /// The value as `Data`.
    public var data: Data? { value.map { Data($0.readableBytesView) } }
}
