import NIOCore

/// Splits a client's byte stream into request lines, the framing of `docs/protocol.md`: a line ends in
/// `\n`, a `\r` before it is dropped, and a line longer than `maxLineBytes` (not counting a `\r` that may
/// still be followed by `\n`) ends the connection.
///
/// It stands in for NIO's `ByteToMessageHandler` + `LineBasedFrameDecoder` on the daemon's hot path: it
/// is driven by ``ClientConnectionHandler`` directly, so a line costs no pipeline hop, and a line that
/// arrived within one read is a slice of that read's buffer (bytes are copied only for a line that spans
/// reads). A pure value type: its tests feed it chunks without sockets.
struct RequestLineFramer {
    /// What the buffered bytes hold next.
    enum Next: Equatable {
        /// A complete line, without its terminator.
        case line(ByteBuffer)
        /// No complete line yet.
        case needMore
        /// The line being received passed the limit: answer -32001 and close.
        case tooLong
    }

    let maxLineBytes: Int
    /// Received bytes not yet returned as lines.
    private var buffer: ByteBuffer?

    init(maxLineBytes: Int) {
        self.maxLineBytes = maxLineBytes
    }

    /// Bytes of an unfinished line (the daemon drops them at end of input).
    var unterminatedBytes: Int { buffer?.readableBytes ?? 0 }

    /// Adds the bytes of one read.
    mutating func append(_ chunk: ByteBuffer) {
        guard var pending = buffer, pending.readableBytes > 0 else {
            buffer = chunk
            return
        }
        buffer = nil  // uniquely referenced while appending: no copy of the pending bytes
        var chunk = chunk
        pending.writeBuffer(&chunk)
        buffer = pending
    }

    /// The next complete line, if there is one.
    mutating func next() -> Next {
        guard var pending = buffer else { return .needMore }
        guard let newline = pending.readableBytesView.firstIndex(of: UInt8(ascii: "\n")) else {
            let readable = pending.readableBytes
            if readable == 0 {
                buffer = nil
                return .needMore
            }
            let carriageReturn = pending.getInteger(at: pending.writerIndex - 1, as: UInt8.self) == UInt8(ascii: "\r")
            if readable - (carriageReturn ? 1 : 0) > maxLineBytes {
                buffer = nil
                return .tooLong
            }
            if pending.readerIndex > 0 {
                // Keep only the unfinished line (lines already returned are no longer referenced).
                buffer = nil
                pending.discardReadBytes()
                buffer = pending
            }
            return .needMore
        }
        var length = newline - pending.readerIndex
        var line = pending.readSlice(length: length)!
        pending.moveReaderIndex(forwardBy: 1)
        buffer = pending.readableBytes > 0 ? pending : nil
        if length > 0, line.getInteger(at: line.writerIndex - 1, as: UInt8.self) == UInt8(ascii: "\r") {
            length -= 1
            line.moveWriterIndex(to: line.writerIndex - 1)
        }
        return length > maxLineBytes ? .tooLong : .line(line)
    }
}
