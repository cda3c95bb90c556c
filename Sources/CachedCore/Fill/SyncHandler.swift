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
    /// When the request must be answered by (nil: never cut short).
    public var deadline: RequestDeadline?
    public init(
        eventLoop: any EventLoop, connection: ConnectionID, stats: Stats.Shard? = nil, control: ConnectionControl? = nil,
        deadline: RequestDeadline? = nil
    ) {
        self.eventLoop = eventLoop
        self.connection = connection
        self.stats = stats
        self.control = control
        self.deadline = deadline
    }
}

/// A request's deadline: fixed when its line was read (the read time plus its `timeout`, or plus
/// `[limits] request_timeout`), passed down to every wait, and answered -32009 at, never after.
public struct RequestDeadline: Sendable, Hashable {
    /// When the request's read began.
    public var start: NIODeadline
    /// The timeout, in seconds (also for the error's message and data).
    public var seconds: Double

    /// `seconds` after `start` (the instant is worked out only when a request waits: a hit never needs it).
    public init(from start: NIODeadline, seconds: Double) {
        self.start = start
        self.seconds = seconds
    }

    /// The instant.
    public var instant: NIODeadline { start + .nanoseconds(Int64((seconds * 1e9).rounded())) }

    /// Whether it has passed at `now`.
    public func hasPassed(_ now: NIODeadline = .now()) -> Bool { now >= instant }

    /// The error a request answered at its deadline gets.
    public func error(_ method: String) -> CachedError { .deadlineExceeded(method, timeout: seconds) }
}
