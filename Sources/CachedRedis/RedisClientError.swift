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
        /// Redis answered with an error reply (`-ERR`, `-OOM`, `-LOADING`, ...); ``RedisClientError/redisCode``
        /// holds its first word when it came from Redis as is.
        public static let errorReply = Code(rawValue: "errorReply")
        /// The command was not run: the last answer was a redirect (`MOVED`, `ASK`, `TRYAGAIN`) and the
        /// redirects outlasted the retries (a cluster slot kept migrating). Sending it again is safe.
        public static let notRun = Code(rawValue: "notRun")
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
    /// For an error reply (``Code/errorReply``, ``Code/notRun``): its first word as Redis sent it
    /// (`OOM`, `READONLY`, `WRONGTYPE`, `MOVED`, ...), so nobody has to read the message.
    public var redisCode: String?

    public init(_ code: Code, _ message: String, redisCode: String? = nil) {
        self.code = code
        self.message = message
        self.redisCode = redisCode
    }

    /// The error for an error reply `message` as Redis sent it: ``Code/notRun`` for a redirect
    /// (`MOVED`, `ASK`, `TRYAGAIN`: the command was not run), ``Code/errorReply`` otherwise; either
    /// way ``redisCode`` is the message's first word.
    public static func reply(_ message: String) -> RedisClientError {
        let word = String(message.prefix { $0 != " " })
        let notRun = word == "MOVED" || word == "ASK" || word == "TRYAGAIN"
        return RedisClientError(notRun ? .notRun : .errorReply, message, redisCode: word)
    }

    public var description: String { "\(code): \(message)" }
}
