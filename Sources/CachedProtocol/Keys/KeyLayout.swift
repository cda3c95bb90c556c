/// The Redis key layout of pyredis-cache 0.1.3, so that an existing cache keeps working.
///
/// `"%s#%010d" % (name.zfill(10).upper(), identity)`: key `Student`, identity 12 is
/// `000STUDENT#0000000012`. A hash entry lives in the hash named from (hashKey, hashId), in the field
/// named from (key, identity).
public enum KeyLayout {
    /// The most characters a key (or hash key) may have.
    public static let maxKeyLength = 128

    /// Validates a key name: more than 2 and at most ``maxKeyLength`` characters, each an ASCII letter,
    /// digit, or one of `_ - . : / @ +`.
    public static func validateKey(_ key: String, name: String = "key") throws(CachedError) {
        let utf8 = key.utf8
        guard utf8.count > 2 else {
            throw .invalidParams("\"\(name)\" must be longer than 2 characters")
        }
        guard utf8.count <= maxKeyLength else {
            throw .invalidParams("\"\(name)\" must be at most \(maxKeyLength) characters")
        }
        for b in utf8 where !isKeyByte(b) {
            throw .invalidParams("\"\(name)\" may contain only ASCII letters, digits and _ - . : / @ +")
        }
    }

    /// Whether a byte may appear in a key name: an ASCII letter, digit, or one of `_ - . : / @ +`.
    @inlinable
    public static func isKeyByte(_ b: UInt8) -> Bool {
        switch b {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
            UInt8(ascii: "0")...UInt8(ascii: "9"),
            UInt8(ascii: "_"), UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: ":"),
            UInt8(ascii: "/"), UInt8(ascii: "@"), UInt8(ascii: "+"):
            return true
        default:
            return false
        }
    }

    /// Python's `str.zfill(10).upper()` for a validated (ASCII) key.
    public static func paddedName(_ key: String) -> String {
        var bytes: [UInt8] = []
        appendPaddedName(key, to: &bytes)
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Appends `key.zfill(10).upper()` (ASCII only: keys are validated) to `bytes`.
    static func appendPaddedName(_ key: String, to bytes: inout [UInt8]) {
        let utf8 = key.utf8
        let zeros = max(0, 10 - utf8.count)
        var rest = utf8[...]
        if zeros > 0, let first = utf8.first, first == UInt8(ascii: "+") || first == UInt8(ascii: "-") {
            bytes.append(first)
            rest = rest.dropFirst()
        }
        bytes.append(contentsOf: repeatElement(UInt8(ascii: "0"), count: zeros))
        for b in rest {
            bytes.append(b >= UInt8(ascii: "a") && b <= UInt8(ascii: "z") ? b - 32 : b)
        }
    }

    /// The name `NAME#ID` of an entry: a Redis key, or a field inside a hash (written in one allocation:
    /// it is made for every request).
    public static func entryName(key: String, identity: Identity) -> String {
        var key = key
        var identityText: String
        let isInteger: Bool
        switch identity {
        case .string(let s): (identityText, isInteger) = (s, false)
        case .integer(let digits): (identityText, isInteger) = (digits, true)
        }
        // Bytes through `withUTF8` (iterating `String.UTF8View` costs tens of instructions a byte).
        return key.withUTF8 { key in
            identityText.withUTF8 { identity in
                let identityCount = isInteger ? max(10, identity.count) : identity.count
                let capacity = max(10, key.count) + 1 + identityCount
                // Written straight into the new string's storage (no temporary buffer, no second copy).
                return String(unsafeUninitializedCapacity: capacity) { out in
                    var i = 0
                    // key.zfill(10).upper()
                    let zeros = max(0, 10 - key.count)
                    var rest = key[...]
                    if zeros > 0, let first = rest.first, first == UInt8(ascii: "+") || first == UInt8(ascii: "-") {
                        out[i] = first
                        i += 1
                        rest = rest.dropFirst()
                    }
                    for _ in 0..<zeros {
                        out[i] = UInt8(ascii: "0")
                        i += 1
                    }
                    for b in rest {
                        out[i] = b >= UInt8(ascii: "a") && b <= UInt8(ascii: "z") ? b - 32 : b
                        i += 1
                    }
                    out[i] = UInt8(ascii: "#")
                    i += 1
                    var body = identity[...]
                    if isInteger {
                        // "%010d": width 10 including the sign, zero padding after the sign.
                        if body.first == UInt8(ascii: "-") {
                            out[i] = UInt8(ascii: "-")
                            i += 1
                            body = body.dropFirst()
                        }
                        for _ in 0..<(identityCount - identity.count) {
                            out[i] = UInt8(ascii: "0")
                            i += 1
                        }
                    }
                    for b in body {
                        out[i] = b
                        i += 1
                    }
                    return i
                }
            }
        }
    }
}

/// Where an entry lives: a plain Redis string key, or a field of a Redis hash.
/// Where an entry lives in Redis: a key, and for the hash layout a field of it.
public struct StoreLocation: Sendable, Hashable, CustomStringConvertible {
    /// The Redis key: the entry's own name, or its hash's name.
    public let key: String
    /// The hash field (the entry's name) for the hash layout; nil for the plain layout.
    public let field: String?

    public init(key: String, field: String?) {
        self.key = key
        self.field = field
    }

    public var description: String {
        if let field { return "\(key)[\(field)]" }
        return key
    }
}

/// An entry as clients name it (key, identity, optional hash), with its place in Redis.
public struct EntryAddress: Sendable, Hashable, CustomStringConvertible {
    /// The key as the client named it (its configuration section is `[keys.<key>]`).
    public var key: String
    public var identity: Identity
    /// The hash (hashKey, hashId) for the hash layout, nil for the plain layout.
    public var hash: HashAddress?

    /// The Redis key: the entry's own key, or the hash's name.
    public let storeKey: String
    /// The hash field for the hash layout.
    public let storeField: String?

    public init(key: String, identity: Identity, hash: HashAddress?) {
        self.key = key
        self.identity = identity
        self.hash = hash
        let name = KeyLayout.entryName(key: key, identity: identity)
        if let hash {
            self.storeKey = hash.storeKey
            self.storeField = name
        } else {
            self.storeKey = name
            self.storeField = nil
        }
    }

    /// Where the entry lives in Redis.
    public var location: StoreLocation { StoreLocation(key: storeKey, field: storeField) }

    public var description: String { location.description }
}

/// A hash of entries: pyredis-cache's (hash_key, hash_id).
public struct HashAddress: Sendable, Hashable {
    public var hashKey: String
    public var hashId: Identity
    /// The Redis key of the hash.
    public let storeKey: String

    public init(hashKey: String, hashId: Identity) {
        self.hashKey = hashKey
        self.hashId = hashId
        self.storeKey = KeyLayout.entryName(key: hashKey, identity: hashId)
    }
}
