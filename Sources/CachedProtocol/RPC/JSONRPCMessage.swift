/// One JSON-RPC 2.0 request: a call (with an id) or a notification (without).
public struct JSONRPCRequest: Sendable, Hashable {
    /// The id to echo; nil for a notification, which is executed but never answered.
    public var id: JSONRPCID?
    public var method: String
    /// Parameters by name. `cached` takes parameters by name only; positional ones are rejected with -32602.
    public var params: JSONValue?

    public init(id: JSONRPCID?, method: String, params: JSONValue?) {
        self.id = id
        self.method = method
        self.params = params
    }

    public var isNotification: Bool { id == nil }
}

/// One element of an incoming message: a well-formed request, or an error to answer with.
public enum JSONRPCEntry: Sendable, Hashable {
    case request(JSONRPCRequest)
    /// An invalid request; `id` is null when no valid id could be read from it.
    case invalid(id: JSONRPCID, CachedError)
}

/// A parsed line of the client protocol.
public enum JSONRPCMessage: Sendable, Hashable {
    /// A single request object.
    case single(JSONRPCEntry)
    /// A non-empty batch array; answers are collected into one array line.
    case batch([JSONRPCEntry])
    /// A line that is not JSON, or an empty batch: answered by one error object with id null.
    case unparseable(CachedError)
}

extension JSONRPCMessage {
    /// Parses one line (without its newline).
    /// - Parameters:
    ///   - maxDepth: nesting limit for arrays and objects (a batch counts as one level).
    ///   - maxBatch: the largest batch accepted.
    public static func parse(_ bytes: UnsafeRawBufferPointer, maxDepth: Int, maxBatch: Int = 10_000) -> JSONRPCMessage {
        let value: JSONValue
        do {
            value = try JSONParser.parse(bytes, maxDepth: maxDepth)
        } catch {
            switch error.kind {
            case .tooDeep:
                return .unparseable(.limitExceeded("Nesting deeper than \(maxDepth) levels", limit: "max_depth", value: maxDepth))
            case .duplicateMember:
                return .unparseable(CachedError(.invalidRequest, "Invalid Request: \(error)"))
            case .syntax, .invalidUTF8, .loneSurrogate:
                return .unparseable(CachedError(.parseError, "Parse error: \(error)"))
            }
        }
        switch value {
        case .array(let elements):
            if elements.isEmpty {
                return .unparseable(CachedError(.invalidRequest, "Invalid Request: empty batch"))
            }
            if elements.count > maxBatch {
                return .unparseable(.limitExceeded("Batch larger than \(maxBatch) requests", limit: "max_batch", value: maxBatch))
            }
            return .batch(elements.map(entry(from:)))
        default:
            return .single(entry(from: value))
        }
    }

    /// Parses one line (without its newline).
    public static func parse(_ bytes: some Collection<UInt8>, maxDepth: Int, maxBatch: Int = 10_000) -> JSONRPCMessage {
        if let m = bytes.withContiguousStorageIfAvailable({
            parse(UnsafeRawBufferPointer($0), maxDepth: maxDepth, maxBatch: maxBatch)
        }) {
            return m
        }
        return Array(bytes).withUnsafeBytes { parse($0, maxDepth: maxDepth, maxBatch: maxBatch) }
    }

    static func entry(from value: JSONValue) -> JSONRPCEntry {
        guard case .object(let members) = value else {
            return .invalid(id: .null, CachedError(.invalidRequest, "Invalid Request: expected an object, got \(value.typeName)"))
        }
        // Recover the id first, so that later errors can echo it.
        var id: JSONRPCID? = nil
        if let rawID = members["id"] {
            guard let parsed = JSONRPCID(rawID) else {
                return .invalid(id: .null, CachedError(.invalidRequest, "Invalid Request: id must be a number, string or null"))
            }
            id = parsed
        }
        guard members["jsonrpc"] == .string("2.0") else {
            return .invalid(id: id ?? .null, CachedError(.invalidRequest, "Invalid Request: \"jsonrpc\" must be \"2.0\""))
        }
        guard case .string(let method)? = members["method"] else {
            return .invalid(id: id ?? .null, CachedError(.invalidRequest, "Invalid Request: \"method\" must be a string"))
        }
        let params = members["params"]
        switch params {
        case nil, .object?, .array?: break
        default:
            return .invalid(id: id ?? .null, CachedError(.invalidRequest, "Invalid Request: \"params\" must be an object or array"))
        }
        for name in members.keys where !["jsonrpc", "method", "params", "id"].contains(name) {
            return .invalid(id: id ?? .null, CachedError(.invalidRequest, "Invalid Request: unknown member \"\(name)\""))
        }
        return .request(JSONRPCRequest(id: id, method: method, params: params))
    }
}
