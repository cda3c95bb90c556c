import NIOConcurrencyHelpers
import NIOCore

/// The buffer that the answers of one read batch are written into, one per event loop and reused batch
/// after batch, so that answering allocates nothing.
///
/// Only its event loop touches it (connections take it at the start of a read batch and give it back
/// once the batch is written). A buffer given back may still be referenced by a write the socket has not
/// finished; the next batch's first write then copies it (ByteBuffer's copy on write), never overwrites it.
final class LoopAnswerBuffer: @unchecked Sendable {
    private let eventLoop: any EventLoop
    private var spare: ByteBuffer?

    /// Buffers that grew past this (a batch of large answers) are not kept.
    static let maximumKeptCapacity = 64 * 1024

    init(eventLoop: any EventLoop) {
        self.eventLoop = eventLoop
    }

    /// An empty buffer: the loop's spare one, or a new one.
    func take(_ allocator: ByteBufferAllocator) -> ByteBuffer {
        eventLoop.assertInEventLoop()
        if var buffer = spare.take() {
            buffer.clear()
            return buffer
        }
        return allocator.buffer(capacity: 4096)
    }

    /// Keeps `buffer` for the next batch on this loop.
    func giveBack(_ buffer: ByteBuffer) {
        eventLoop.assertInEventLoop()
        if buffer.capacity <= Self.maximumKeptCapacity { spare = buffer }
    }
}

/// The ``LoopAnswerBuffer`` of each event loop a server's connections run on.
final class LoopAnswerBuffers: Sendable {
    private let byLoop = NIOLockedValueBox<[ObjectIdentifier: LoopAnswerBuffer]>([:])

    /// The buffer of `eventLoop` (looked up once per connection).
    func of(_ eventLoop: any EventLoop) -> LoopAnswerBuffer {
        byLoop.withLockedValue { all in
            let id = ObjectIdentifier(eventLoop)
            if let buffer = all[id] { return buffer }
            let buffer = LoopAnswerBuffer(eventLoop: eventLoop)
            all[id] = buffer
            return buffer
        }
    }
}
