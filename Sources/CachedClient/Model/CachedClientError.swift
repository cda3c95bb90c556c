// MARK: - Client-side errors

/// An error on the client's side of the wire: the daemon could not be reached, the connection was
/// lost, or the daemon sent something the client cannot understand.
///
/// Errors *answered* by the daemon are thrown as `CachedError` (from `CachedProtocol`) and carry the
/// JSON-RPC code; this type is for everything else, so the two are easy to tell apart:
///
/// ```swift
/// do { try await client.ping() }
/// catch let error as CachedError { print("daemon said \(error.code)") }
/// catch let error as CachedClientError { print("transport: \(error)") }
/// ```
public struct CachedClientError: Error, Sendable, Hashable, CustomStringConvertible {
    /// What went wrong.
    public enum Kind: Sendable, Hashable, CustomStringConvertible {
        /// The socket could not be connected (no daemon, wrong path, permission denied).
        case connectionFailed
        /// The connection was lost before the answer came; the request may or may not have run.
        case connectionClosed
        /// The daemon sent an answer the client cannot understand (or one too large to buffer).
        case protocolViolation
        /// ``CachedClient/close()`` was called; call ``CachedClient/connect()`` to use the client again.
        case clientClosed
        /// An argument cannot be sent (for example a TTL that is not a finite, non-negative number).
        case invalidArgument

        public var description: String {
            switch self {
            case .connectionFailed: "connection failed"
            case .connectionClosed: "connection closed"
            case .protocolViolation: "protocol violation"
            case .clientClosed: "client closed"
            case .invalidArgument: "invalid argument"
            }
        }
    }

    /// What went wrong.
    public var kind: Kind
    /// Details for humans (the socket path, the underlying system error...).
    public var message: String

    /// Creates an error of `kind` with a human-readable `message`.
    public init(_ kind: Kind, _ message: String) {
        self.kind = kind
        self.message = message
    }

    /// Whether the error is about the connection (connect failure or lost connection): the next
    /// call reconnects.
    public var isConnectionError: Bool { kind == .connectionFailed || kind == .connectionClosed }

    public var description: String { "\(kind): \(message)" }

    // MARK: Factories

    static func connectionFailed(_ message: String) -> Self { Self(.connectionFailed, message) }
    static func connectionClosed(_ message: String) -> Self { Self(.connectionClosed, message) }
    static func protocolViolation(_ message: String) -> Self { Self(.protocolViolation, message) }
}
