import CachedProtocol
import NIOCore

// MARK: - Requests

extension CachedClient {
    /// One request of the client protocol, for ``CachedClient/batch(_:)`` and ``CachedClient/send(_:)``.
    ///
    /// Build one with the factories (`.get(key:identity:)`, `.set(key:identity:value:)`, ...), or
    /// ``init(method:params:)`` for any method by name (the daemon answers an unknown one with -32601).
    public struct Request: Sendable, Hashable {
        /// The JSON-RPC method name.
        public var method: String
        /// Named parameters, without the value (nil: no `params` member).
        public var params: [String: JSONValue]?
        /// The value of a `set`: written as `"value"`, base64 with `"encoding":"base64"` when the bytes are not UTF-8.
        public var value: ByteBuffer?
        /// How long the call may take (sent as `timeout`; the daemon answers -32009 at the deadline); nil: the
        /// client's ``CachedClient/timeout``.
        public var timeout: Duration?

        /// A request for `method` with raw named parameters.
        public init(method: String, params: [String: JSONValue]? = nil) {
            self.method = method
            self.params = params
            self.value = nil
        }

        init(method: CachedMethod, params: [String: JSONValue]?, value: ByteBuffer? = nil) {
            self.method = method.rawValue
            self.params = params
            self.value = value
        }

        // MARK: Factories

        /// `get`: reads an entry (see ``CachedClient/get(key:identity:hashKey:hashId:args:kwargs:lease:)``).
        /// - Parameter lease: false for a reader that never fills: a miss is answered at once, never with
        ///   a lease and never after waiting for another client's (`"lease": false`).
        public static func get(
            key: String, identity: some IdentityConvertible, hashKey: String? = nil, hashId: (any IdentityConvertible)? = nil,
            args: [JSONValue]? = nil, kwargs: [String: JSONValue]? = nil, lease: Bool = true
        ) -> Request {
            var p = address(key: key, identity: identity, hashKey: hashKey, hashId: hashId)
            if let args { p["args"] = .array(args) }
            if let kwargs { p["kwargs"] = .object(kwargs) }
            if !lease { p["lease"] = .bool(false) }
            return Request(method: .get, params: p)
        }

        /// `release`: gives back the lease of a `get` miss whose fill failed; the next waiter gets it at once.
        public static func release(
            key: String, identity: some IdentityConvertible, hashKey: String? = nil, hashId: (any IdentityConvertible)? = nil,
            lease: String
        ) -> Request {
            var p = address(key: key, identity: identity, hashKey: hashKey, hashId: hashId)
            p["lease"] = .string(lease)
            return Request(method: .release, params: p)
        }

        /// `set`: stores `value` (nil asks the daemon to fill the entry from the key's sync handler).
        /// - Parameters:
        ///   - ttl: seconds (fractions allowed); 0 = no expiry; nil = the key's configured default.
        ///   - lease: the token of a `get` miss, to store as the lease holder.
        public static func set(
            key: String, identity: some IdentityConvertible, hashKey: String? = nil, hashId: (any IdentityConvertible)? = nil,
            value: ByteBuffer?, ttl: Double? = nil, lease: String? = nil,
            args: [JSONValue]? = nil, kwargs: [String: JSONValue]? = nil
        ) -> Request {
            var p = address(key: key, identity: identity, hashKey: hashKey, hashId: hashId)
            if let ttl { p["ttl"] = number(ttl) }
            if let lease { p["lease"] = .string(lease) }
            if let args { p["args"] = .array(args) }
            if let kwargs { p["kwargs"] = .object(kwargs) }
            return Request(method: .set, params: p, value: value)
        }

        /// `set` with the value as bytes.
        public static func set(
            key: String, identity: some IdentityConvertible, hashKey: String? = nil, hashId: (any IdentityConvertible)? = nil,
            value: [UInt8], ttl: Double? = nil, lease: String? = nil
        ) -> Request {
            set(key: key, identity: identity, hashKey: hashKey, hashId: hashId, value: ByteBuffer(bytes: value), ttl: ttl, lease: lease)
        }

        /// `set` with the value as a string (its UTF-8 bytes are stored).
        public static func set(
            key: String, identity: some IdentityConvertible, hashKey: String? = nil, hashId: (any IdentityConvertible)? = nil,
            value: String, ttl: Double? = nil, lease: String? = nil
        ) -> Request {
            set(key: key, identity: identity, hashKey: hashKey, hashId: hashId, value: ByteBuffer(string: value), ttl: ttl, lease: lease)
        }

        /// `delete`: removes an entry.
        public static func delete(
            key: String, identity: some IdentityConvertible, hashKey: String? = nil, hashId: (any IdentityConvertible)? = nil
        ) -> Request {
            Request(method: .delete, params: address(key: key, identity: identity, hashKey: hashKey, hashId: hashId))
        }

        /// `deleteHash`: removes a whole hash of entries.
        public static func deleteHash(hashKey: String, hashId: some IdentityConvertible) -> Request {
            Request(method: .deleteHash, params: ["hashKey": .string(hashKey), "hashId": hashId.cachedIdentity.jsonValue])
        }

        /// `ping`: answered `"pong"`.
        public static var ping: Request { Request(method: .ping, params: nil) }

        /// `stats`: the daemon's counters.
        public static var stats: Request { Request(method: .stats, params: nil) }

        // MARK: Helpers

        static func address(
            key: String, identity: some IdentityConvertible, hashKey: String?, hashId: (any IdentityConvertible)?
        ) -> [String: JSONValue] {
            var p: [String: JSONValue] = ["key": .string(key), "identity": identity.cachedIdentity.jsonValue]
            if let hashKey { p["hashKey"] = .string(hashKey) }
            if let hashId { p["hashId"] = hashId.cachedIdentity.jsonValue }
            return p
        }

        /// A JSON number for a finite Double (`1`, `0.25`); non-finite or negative values are sent as
        /// they are and rejected by ``validate()`` before anything is written.
        static func number(_ seconds: Double) -> JSONValue {
            guard seconds.isFinite else { return .number("nan") }
            if seconds == seconds.rounded(), abs(seconds) < 1e15 { return .number(String(Int64(seconds))) }
            return .number("\(seconds)")
        }

        /// Checks what the client itself must get right to produce valid JSON.
        func validate() throws(CachedClientError) {
            if case .number(let raw)? = params?["ttl"], raw == "nan" || raw.hasPrefix("-") {
                throw CachedClientError(.invalidArgument, "ttl must be a finite number of seconds >= 0")
            }
            if let timeout, timeout <= .zero || Self.seconds(timeout) > RequestTimeout.maximum {
                throw CachedClientError(.invalidArgument, "timeout must be above zero and at most \(Int(RequestTimeout.maximum)) s")
            }
        }

        /// A duration in seconds, as `timeout` travels.
        static func seconds(_ duration: Duration) -> Double {
            Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
        }

        /// This request with `timeout`.
        public func withTimeout(_ timeout: Duration?) -> Request {
            var copy = self
            copy.timeout = timeout
            return copy
        }
    }
}
