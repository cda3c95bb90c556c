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
