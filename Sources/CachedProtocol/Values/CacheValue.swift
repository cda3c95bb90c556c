import FoundationEssentials
import NIOCore

/// How a value travels as a JSON string.
public enum ValueEncoding: String, Sendable, Hashable {
    /// The string's UTF-8 bytes are the value.
    case utf8
    /// The string is the base64 of the value's bytes.
    case base64
}

extension ValueEncoding {
    /// Decodes a wire value to its bytes.
    public static func decode(_ value: String, encoding: ValueEncoding) throws(CachedError) -> ByteBuffer {
        switch encoding {
        case .utf8:
            return ByteBuffer(string: value)
        case .base64:
            guard let data = Data(base64Encoded: value) else {
                throw .invalidParams("\"value\" is not valid base64")
            }
            return ByteBuffer(bytes: data)
        }
    }
}

extension ByteBuffer {
    /// Writes `"value":...` for an opaque value: a JSON string if the bytes are valid UTF-8, else
    /// base64 followed by `,"encoding":"base64"`.
    public mutating func writeValueMember(_ value: ByteBuffer) {
        self.writeStaticString("\"value\":")
        let isUTF8 = value.withUnsafeReadableBytes { UTF8Validation.isValid($0) }
        if isUTF8 {
            value.withUnsafeReadableBytes { self.writeJSONStringBytes($0) }
        } else {
            let encoded = value.withUnsafeReadableBytes { Data($0).base64EncodedString() }
            self.writeJSONString(encoded)
            self.writeStaticString(",\"encoding\":\"base64\"")
        }
    }
}

/// A value together with its answer member (`"value":"…"`, plus `,"encoding":"base64"` for bytes that are
/// not UTF-8), encoded once when the value enters the daemon's memory so that every hit is one copy.
public struct EncodedValue: Sendable {
    /// The value's bytes.
    public let raw: ByteBuffer
    /// The member as it is written into a `get` answer.
    public let member: ByteBuffer
    /// Whatever its holder uses to say where the copy came from (the daemon's local copy records the Redis
    /// connection whose tracking vouches for it; 0 when unused).
    public var tag: UInt64 = 0
    /// What vouches for the copy's freshness, when its holder serves it only with fresh proof (the daemon's
    /// local copy: ``EntryProof``); nil for copies that need none (the embedded store's own).
    public var proof: EntryProof?
    /// When its holder stops keeping it (the Redis TTL as read, the local copy's `max_age`); a near cache
    /// in a client may keep it no longer (`nearTTL` in a tracked `get` answer).
    public var expiresAt: NIODeadline = .distantFuture
    /// Where the entry stands in its life, for keys with stale-while-revalidate or early refresh; nil for
    /// every other entry (a plain hit).
    public var age: EntryAge? {
        get { ageBox?.age }
        set { ageBox = newValue.map(AgeBox.init) }
    }
    /// Boxed, so that entries without an age (most) pay one pointer for it.
    private var ageBox: AgeBox?

    private final class AgeBox: Sendable {
        let age: EntryAge
        init(_ age: EntryAge) { self.age = age }
    }

    public init(_ raw: ByteBuffer) {
        self.raw = raw
        var member = ByteBuffer()
        member.reserveCapacity(raw.readableBytes + raw.readableBytes / 8 + 16)
        member.writeValueMember(raw)
        self.member = member
    }

    /// Bytes held (for memory budgets).
    public var byteCount: Int { raw.readableBytes + member.readableBytes }
}
