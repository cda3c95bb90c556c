import NIOCore

/// A Redis command encoded as a RESP array of bulk strings, ready to write.
///
/// Encoding straight into a `ByteBuffer` avoids `redisFormatCommandArgv`'s intermediate C string.
public struct RedisCommand: Sendable, Hashable {
    public var encoded: ByteBuffer

    /// Encodes a command from its arguments.
    public init(_ arguments: [RedisArgument]) {
        var buffer = ByteBuffer()
        buffer.reserveCapacity(arguments.reduce(16) { $0 + $1.byteCount + 16 })
        buffer.writeInteger(UInt8(ascii: "*"))
        buffer.writeString(String(arguments.count))
        buffer.writeStaticString("\r\n")
        for argument in arguments {
            buffer.writeInteger(UInt8(ascii: "$"))
            buffer.writeString(String(argument.byteCount))
            buffer.writeStaticString("\r\n")
            switch argument {
            case .string(let s): buffer.writeString(s)
            case .bytes(let b): buffer.writeImmutableBuffer(b)
            }
            buffer.writeStaticString("\r\n")
        }
        self.encoded = buffer
    }

    public init(_ arguments: RedisArgument...) {
        self.init(arguments)
    }
}

/// One argument of a command.
public enum RedisArgument: Sendable, Hashable, ExpressibleByStringLiteral {
    case string(String)
    case bytes(ByteBuffer)

    public init(stringLiteral value: String) { self = .string(value) }

    var byteCount: Int {
        switch self {
        case .string(let s): s.utf8.count
        case .bytes(let b): b.readableBytes
        }
    }
}
