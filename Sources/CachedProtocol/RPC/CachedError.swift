/// An error as it travels in a JSON-RPC error object: a code, a message, optional data.
///
/// Codes are an open set (new server codes can be added without breaking clients): the standard
/// JSON-RPC 2.0 codes, and `cached`'s own in -32000...-32099, documented in `docs/protocol.md`.
public struct CachedError: Error, Sendable, Hashable, CustomStringConvertible {
    /// A JSON-RPC error code.
    public struct Code: Sendable, Hashable, RawRepresentable, CustomStringConvertible {
        public var rawValue: Int
        public init(rawValue: Int) { self.rawValue = rawValue }

        // MARK: JSON-RPC 2.0
        /// The line is not valid JSON (or not valid UTF-8).
        public static let parseError = Code(rawValue: -32700)
        /// The JSON is not a valid request object (or is an empty batch).
        public static let invalidRequest = Code(rawValue: -32600)
        /// No such method.
        public static let methodNotFound = Code(rawValue: -32601)
        /// Missing, extra, or wrongly typed parameters; an invalid key or identity.
        public static let invalidParams = Code(rawValue: -32602)
        /// A bug in `cached`.
        public static let internalError = Code(rawValue: -32603)

        // MARK: cached
        /// The store (Redis) cannot be reached; nothing was read or written.
        public static let storeUnavailable = Code(rawValue: -32000)
        /// A configured limit was exceeded (line length, nesting depth, connections, batch size).
        public static let limitExceeded = Code(rawValue: -32001)
        /// The store did not answer within the command timeout; the outcome of a write is unknown.
        public static let storeTimeout = Code(rawValue: -32002)
        /// The store answered with an error (for example `OOM`, `READONLY`, `WRONGTYPE`).
        public static let storeError = Code(rawValue: -32003)
        /// The key's sync handler answered with an error, or failed.
        public static let handlerError = Code(rawValue: -32004)
        /// The key's sync handler did not answer within its timeout.
        public static let handlerTimeout = Code(rawValue: -32005)
        /// Too much work is queued (handler queue or fallback cap); try again later.
        public static let overloaded = Code(rawValue: -32006)
        /// The daemon is shutting down and did not run this request.
        public static let shuttingDown = Code(rawValue: -32007)
        /// The peer is not allowed to use this daemon.
        public static let accessDenied = Code(rawValue: -32008)
        /// The request's deadline (its `timeout`, or the daemon's `request_timeout`) passed before it could
        /// be answered. Work other requests wait for (a handler fill, a lease) goes on for them; a write
        /// that was sent may still take effect.
        public static let deadlineExceeded = Code(rawValue: -32009)
        /// The peer may connect, but this request needs a permission its `[[access]]` rules do not give (read
        /// or write on the key, or admin); the message says which, e.g. "uid 33 may not write Student".
        public static let accessRefused = Code(rawValue: -32010)

        public var description: String { String(rawValue) }
    }

    public var code: Code
    public var message: String
    public var data: JSONValue?

    public init(_ code: Code, _ message: String, data: JSONValue? = nil) {
        self.code = code
        self.message = message
        self.data = data
    }

    public var description: String { "\(message) (\(code.rawValue))" }
}

extension CachedError {
    public static func invalidParams(_ message: String) -> CachedError { CachedError(.invalidParams, message) }

    /// -32001 for a limit the request or connection went over: `data` names the setting and its value.
    public static func limitExceeded(_ message: String, limit: String, value: some Numeric & CustomStringConvertible) -> CachedError {
        CachedError(.limitExceeded, message, data: .object(["limit": .string(limit), "value": .number(value.description)]))
    }

    /// -32001 for a line longer than `max_line_bytes`.
    public static func lineTooLong(maxLineBytes: Int) -> CachedError {
        .limitExceeded("Line longer than \(maxLineBytes) bytes", limit: "max_line_bytes", value: maxLineBytes)
    }

    /// -32009: the request's deadline passed; `data.timeout` is the seconds it had.
    public static func deadlineExceeded(_ method: String, timeout seconds: Double) -> CachedError {
        CachedError(
            .deadlineExceeded, "\(method): no answer within the request's deadline (\(seconds) s)",
            data: .object(["timeout": .number(String(seconds))]))
    }

    /// -32601 for an unknown method; `data.methods` lists the methods there are.
    public static func methodNotFound(_ method: String) -> CachedError {
        CachedError(.methodNotFound, "Method not found: \(method)", data: .object(["methods": .array(CachedMethod.allCases.map { .string($0.rawValue) })]))
    }
}
