/// An error from the Redis client, with an extensible code.
public struct RedisClientError: Error, Sendable, Hashable, CustomStringConvertible {
    public struct Code: Sendable, Hashable, RawRepresentable, CustomStringConvertible {
        public var rawValue: String
        public init(rawValue: String) { self.rawValue = rawValue }

        /// No connection to Redis is up (connecting, or Redis is down); nothing was sent.
        public static let unavailable = Code(rawValue: "unavailable")
        /// The connection closed while the command was in flight; its outcome is unknown.
        public static let connectionClosed = Code(rawValue: "connectionClosed")
        /// Redis did not answer within the command timeout; the connection was closed.
        public static let timeout = Code(rawValue: "timeout")
        /// Redis answered with an error reply (`-ERR`, `-OOM`, `-LOADING`, ...).
        public static let errorReply = Code(rawValue: "errorReply")
        /// Redis sent bytes that are not RESP, or a reply nothing asked for.
        public static let protocolError = Code(rawValue: "protocolError")
        /// TLS could not be set up: a certificate or key file is missing or invalid.
        public static let tlsConfiguration = Code(rawValue: "tlsConfiguration")
        /// The pool is shut down.
        public static let shutdown = Code(rawValue: "shutdown")

        public var description: String { rawValue }
    }

    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "\(code): \(message)" }
}
