import NIOCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

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
    /// The start of a line that spans reads (its bytes so far).
    private var carried: ByteBuffer?
    /// The rest of the latest read, not yet returned as lines.
    private var current: ByteBuffer?

    init(maxLineBytes: Int) {
        self.maxLineBytes = maxLineBytes
    }

    /// Bytes of an unfinished line (the daemon drops them at end of input).
    var unterminatedBytes: Int { (carried?.readableBytes ?? 0) + (current?.readableBytes ?? 0) }

    /// Adds the bytes of one read (call ``next()`` until it needs more before adding another).
    mutating func append(_ chunk: ByteBuffer) {
        if var rest = current, rest.readableBytes > 0 {
            // Not drained: keep it as the carried start of a line.
            current = nil
            carry(&rest)
        }
        current = chunk
    }

    /// The next complete line, if there is one.
    mutating func next() -> Next {
        guard var chunk = current else { return .needMore }
        current = nil
        guard let newline = Self.firstNewline(in: chunk) else {
            // The read ends inside a line: only those bytes are kept (copied if a line is carried already).
            if chunk.readableBytes > 0 { carry(&chunk) }
            return overLimit(carried) ? tooLong() : .needMore
        }
        var line = chunk.readSlice(length: newline - chunk.readerIndex)!
        chunk.moveReaderIndex(forwardBy: 1)
        if chunk.readableBytes > 0 { current = chunk }
        if var start = carried {
            // The end of a line that spans reads: only its own bytes are copied.
            carried = nil
            start.writeBuffer(&line)
            line = start
        }
        if line.readableBytes > 0, line.getInteger(at: line.writerIndex - 1, as: UInt8.self) == UInt8(ascii: "\r") {
            line.moveWriterIndex(to: line.writerIndex - 1)
        }
        return line.readableBytes > maxLineBytes ? tooLong() : .line(line)
    }

    // MARK: Internals

    /// The index of the first `\n` in the readable bytes (`memchr`: a generic `firstIndex(of:)` costs
    /// several instructions a byte, a tenth of a pipelined get hit).
    private static func firstNewline(in buffer: ByteBuffer) -> Int? {
        buffer.withUnsafeReadableBytes { bytes -> Int? in
            guard let base = bytes.baseAddress, let found = memchr(base, Int32(UInt8(ascii: "\n")), bytes.count) else { return nil }
            return buffer.readerIndex + (UnsafeRawPointer(found) - base)
        }
    }

    private mutating func carry(_ bytes: inout ByteBuffer) {
        guard var start = carried else {
            carried = bytes
            return
        }
        carried = nil  // uniquely referenced while appending
        start.writeBuffer(&bytes)
        carried = start
    }

    /// A line still waiting for its newline that already has more bytes than the limit, not counting a
    /// last `\r` that the newline may still follow.
    private func overLimit(_ partial: ByteBuffer?) -> Bool {
        guard let partial, partial.readableBytes > maxLineBytes else { return false }
        let carriageReturn = partial.getInteger(at: partial.writerIndex - 1, as: UInt8.self) == UInt8(ascii: "\r")
        return partial.readableBytes - (carriageReturn ? 1 : 0) > maxLineBytes
    }

    private mutating func tooLong() -> Next {
        carried = nil
        current = nil
        return .tooLong
    }
}
