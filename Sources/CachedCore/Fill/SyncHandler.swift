import CachedProtocol
import NIOCore

/// Something that produces the value of a missing entry: a key's worker pool.
public protocol SyncHandler: Sendable {
    /// The value, or nil for "no such entry". Throws only ``CachedError``.
    func call(_ address: EntryAddress, arguments: HandlerArguments) async throws(CachedError) -> ByteBuffer?
}

/// Identifies a client connection (lease holders and waiters belong to one).
public struct ConnectionID: Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt64
    public init(_ rawValue: UInt64) { self.rawValue = rawValue }
    public var description: String { "#\(rawValue)" }
}

/// Where a request came from.
public struct RequestContext: Sendable {
    public var eventLoop: any EventLoop
    public var connection: ConnectionID
    /// Where the request is counted: the connection's event loop's shard (nil: the common one).
    public var stats: Stats.Shard?
    /// The client connection's channel and tracking flag (nil: not from a client connection).
    public var control: ConnectionControl?
    public init(eventLoop: any EventLoop, connection: ConnectionID, stats: Stats.Shard? = nil, control: ConnectionControl? = nil) {
        self.eventLoop = eventLoop
        self.connection = connection
        self.stats = stats
        self.control = control
    }
}
