import CHiredis
import NIOCore

/// Decodes RESP2 replies with hiredis's reader.
///
/// A classic `ByteToMessageDecoder` (not a single-step one): every readable byte is fed to the
/// reader at once, then every complete reply is taken out, so no reply is left stranded inside the
/// reader waiting for bytes that may never come.
public final class RedisReplyDecoder: ByteToMessageDecoder {
    public typealias InboundOut = RedisReply

    private let reader: UnsafeMutablePointer<redisReader>

    public init() {
        guard let reader = redisReaderCreate() else { fatalError("redisReaderCreate: out of memory") }
        self.reader = reader
    }

    deinit {
        redisReaderFree(reader)
    }

    public func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        for reply in try self.feed(&buffer) {
            context.fireChannelRead(Self.wrapInboundOut(reply))
        }
        return .needMoreData
    }

    public func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        try self.decode(context: context, buffer: &buffer)
    }

    /// Feeds all readable bytes and returns every complete reply (exposed for unit tests).
    public func feed(_ buffer: inout ByteBuffer) throws -> [RedisReply] {
        if buffer.readableBytes > 0 {
            let status = buffer.withUnsafeReadableBytes { bytes in
                redisReaderFeed(reader, bytes.baseAddress!.assumingMemoryBound(to: CChar.self), bytes.count)
            }
            guard status == REDIS_OK else { throw self.readerError() }
            buffer.moveReaderIndex(forwardBy: buffer.readableBytes)
        }
        var replies: [RedisReply] = []
        while true {
            var raw: UnsafeMutableRawPointer? = nil
            guard redisReaderGetReply(reader, &raw) == REDIS_OK else { throw self.readerError() }
            guard let raw else { return replies }
            let reply = raw.assumingMemoryBound(to: redisReply.self)
            replies.append(Self.convert(reply))
            freeReplyObject(raw)
        }
    }

    private func readerError() -> RedisClientError {
        let message = withUnsafeBytes(of: reader.pointee.errstr) { bytes in
            String(decoding: bytes.prefix { $0 != 0 }, as: UTF8.self)
        }
        return RedisClientError(.protocolError, "invalid RESP from Redis: \(message)")
    }

    private static func convert(_ reply: UnsafeMutablePointer<redisReply>) -> RedisReply {
        let r = reply.pointee
        switch r.type {
        case REDIS_REPLY_STRING:
            var buffer = ByteBuffer()
            if r.len > 0 {
                buffer.writeBytes(UnsafeRawBufferPointer(start: r.str, count: Int(r.len)))
            }
            return .bulk(buffer)
        case REDIS_REPLY_STATUS:
            return .status(string(r))
        case REDIS_REPLY_ERROR:
            return .error(string(r))
        case REDIS_REPLY_INTEGER:
            return .integer(Int64(r.integer))
        case REDIS_REPLY_NIL:
            return .null
        case REDIS_REPLY_ARRAY:
            var elements: [RedisReply] = []
            elements.reserveCapacity(Int(r.elements))
            for i in 0..<Int(r.elements) {
                if let element = r.element[i] {
                    elements.append(convert(element))
                } else {
                    elements.append(.null)
                }
            }
            return .array(elements)
        default:
            return .error("unsupported reply type \(r.type)")
        }
    }

    private static func string(_ r: redisReply) -> String {
        guard r.len > 0, let str = r.str else { return "" }
        return String(decoding: UnsafeRawBufferPointer(start: str, count: Int(r.len)), as: UTF8.self)
    }
}
