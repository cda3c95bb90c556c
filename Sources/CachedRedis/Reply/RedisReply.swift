import NIOCore

/// A RESP2 reply.
public enum RedisReply: Sendable, Hashable {
    case status(String)
    case error(String)
    case integer(Int64)
    case bulk(ByteBuffer)
    case null
    case array([RedisReply])
}

extension RedisReply {
    /// The reply as an integer, or nil.
    public var integer: Int64? {
        if case .integer(let i) = self { return i }
        return nil
    }
}
