import NIOCore

/// The methods of the client protocol (see `docs/protocol.md`). Each has a ``MethodParameters`` type
/// (``parameters``); the daemon registers how each runs in its method registry.
public enum CachedMethod: String, Sendable, CaseIterable {
    case get
    case set
    case delete
    case deleteHash
    case release
    case ping
    case stats
    case metrics
    case track
    case notifications
}

extension CachedMethod {
    /// The parameters model of this method.
    public var parameters: any MethodParameters.Type {
        switch self {
        case .get: GetParams.self
        case .set: SetParams.self
        case .delete: DeleteParams.self
        case .deleteHash: DeleteHashParams.self
        case .release: ReleaseParams.self
        case .ping: PingParams.self
        case .stats: StatsParams.self
        case .metrics: MetricsParams.self
        case .track: TrackParams.self
        case .notifications: NotificationsParams.self
        }
    }
}

/// The parameters of one method: the names it takes and how they are read and validated.
public protocol MethodParameters: Sendable {
    /// The method they belong to.
    static var method: CachedMethod { get }
    /// Every parameter name the method accepts (anything else is -32602), ``commonNames`` included.
    static var names: [String] { get }
    /// Reads and validates a request's `params`; -32602 for anything missing, mistyped or unknown.
    init(_ params: JSONValue?) throws(CachedError)
}

extension MethodParameters {
    /// The names every method takes: `timeout` (``RequestTimeout``).
    public static var commonNames: [String] { [RequestTimeout.name] }

    /// The names of an entry's address: `key`, `identity`, `hashKey`, `hashId`.
    public static var addressNames: [String] { ["key", "identity", "hashKey", "hashId"] }
}

// MARK: - Entry addressing

extension ParamReader {
    /// Reads `key`, `identity`, and the optional pair `hashKey`/`hashId`.
    public mutating func entryAddress() throws(CachedError) -> EntryAddress {
        let key = try requiredString("key")
        try KeyLayout.validateKey(key)
        let identity = try Identity(json: try required("identity"), name: "identity")
        let hash = try optionalHashAddress()
        return EntryAddress(key: key, identity: identity, hash: hash)
    }

    mutating func optionalHashAddress() throws(CachedError) -> HashAddress? {
        let hashKey = try string("hashKey")
        let hashId = optional("hashId")
        switch (hashKey, hashId) {
        case (nil, nil):
            return nil
        case (let hashKey?, let hashId?):
            try KeyLayout.validateKey(hashKey, name: "hashKey")
            return HashAddress(hashKey: hashKey, hashId: try Identity(json: hashId, name: "hashId"))
        default:
            throw .invalidParams("\(method): \"hashKey\" and \"hashId\" must be given together")
        }
    }

    /// Reads `args` (array) and `kwargs` (object), passed through to a sync handler.
    public mutating func handlerArguments() throws(CachedError) -> HandlerArguments {
        var result = HandlerArguments()
        if let args = optional("args") {
            guard case .array(let a) = args else {
                throw .invalidParams("\(method): \"args\" must be an array, got \(args.typeName)")
            }
            result.args = a
        }
        if let kwargs = optional("kwargs") {
            guard case .object(let o) = kwargs else {
                throw .invalidParams("\(method): \"kwargs\" must be an object, got \(kwargs.typeName)")
            }
            result.kwargs = o
        }
        return result
    }
}

/// Positional and keyword arguments for a sync handler.
public struct HandlerArguments: Sendable, Hashable {
    public var args: [JSONValue] = []
    public var kwargs: [String: JSONValue] = [:]
    public init(args: [JSONValue] = [], kwargs: [String: JSONValue] = [:]) {
        self.args = args
        self.kwargs = kwargs
    }
}

// MARK: - Params of each method

/// `get {key, identity, hashKey?, hashId?, args?, kwargs?, lease?}`.
public struct GetParams: MethodParameters, Hashable {
    public static var method: CachedMethod { .get }
    public static var names: [String] { addressNames + ["args", "kwargs", "lease"] + commonNames }

    public var address: EntryAddress
    public var arguments: HandlerArguments
    /// False: a miss on a key without a handler is answered at once, never with a lease, never after
    /// waiting for another client's lease (`"lease": false`; default true).
    public var mayLease: Bool

    public init(_ params: JSONValue?) throws(CachedError) {
        var reader = try ParamReader(params, method: "get")
        address = try reader.entryAddress()
        arguments = try reader.handlerArguments()
        mayLease = try reader.bool("lease") ?? true
        try reader.finish()
    }

    /// Parameters already validated (by ``FastGetRequest``), without handler arguments.
    public init(address: EntryAddress, arguments: HandlerArguments = HandlerArguments(), mayLease: Bool = true) {
        self.address = address
        self.arguments = arguments
        self.mayLease = mayLease
    }
}

/// `set {key, identity, hashKey?, hashId?, value, encoding?, ttl?}`.
public struct SetParams: MethodParameters, Hashable {
    public static var method: CachedMethod { .set }
    public static var names: [String] { addressNames + ["value", "encoding", "ttl", "lease", "args", "kwargs"] + commonNames }

    public var address: EntryAddress
    /// The value's bytes; nil asks the daemon to fill it from the key's handler.
    public var value: ByteBuffer?
    /// Seconds; 0 = no expiry; nil = the key's configured default.
    public var ttl: Double?
    public var arguments: HandlerArguments
    /// A lease token from a `get` miss (see the lease flow in `docs/protocol.md`).
    public var lease: String?

    public init(_ params: JSONValue?) throws(CachedError) {
        var reader = try ParamReader(params, method: "set")
        address = try reader.entryAddress()
        let encoding: ValueEncoding
        if let name = try reader.string("encoding") {
            guard let e = ValueEncoding(rawValue: name) else {
                throw .invalidParams("set: \"encoding\" must be \"utf8\" or \"base64\"")
            }
            encoding = e
        } else {
            encoding = .utf8
        }
        if let raw = try reader.string("value") {
            value = try ValueEncoding.decode(raw, encoding: encoding)
        } else {
            value = nil
        }
        ttl = try reader.seconds("ttl")
        arguments = try reader.handlerArguments()
        lease = try reader.string("lease")
        try reader.finish()
    }
}

/// `delete {key, identity, hashKey?, hashId?}`.
public struct DeleteParams: MethodParameters, Hashable {
    public static var method: CachedMethod { .delete }
    public static var names: [String] { addressNames + commonNames }

    public var address: EntryAddress

    public init(_ params: JSONValue?) throws(CachedError) {
        var reader = try ParamReader(params, method: "delete")
        address = try reader.entryAddress()
        try reader.finish()
    }
}

/// `release {key, identity, hashKey?, hashId?, lease}`: gives a lease back.
public struct ReleaseParams: MethodParameters, Hashable {
    public static var method: CachedMethod { .release }
    public static var names: [String] { addressNames + ["lease"] + commonNames }

    public var address: EntryAddress
    public var lease: String

    public init(_ params: JSONValue?) throws(CachedError) {
        var reader = try ParamReader(params, method: "release")
        address = try reader.entryAddress()
        lease = try reader.requiredString("lease")
        try reader.finish()
    }
}

/// `deleteHash {hashKey, hashId}`.
public struct DeleteHashParams: MethodParameters, Hashable {
    public static var method: CachedMethod { .deleteHash }
    public static var names: [String] { ["hashKey", "hashId"] + commonNames }

    public var hash: HashAddress

    public init(_ params: JSONValue?) throws(CachedError) {
        var reader = try ParamReader(params, method: "deleteHash")
        guard let hash = try reader.optionalHashAddress() else {
            throw .invalidParams("deleteHash: missing parameters \"hashKey\" and \"hashId\"")
        }
        self.hash = hash
        try reader.finish()
    }
}

/// `ping` (no parameters).
public struct PingParams: MethodParameters, Hashable {
    public static var method: CachedMethod { .ping }
    public static var names: [String] { commonNames }
    public init(_ params: JSONValue?) throws(CachedError) { _ = try EmptyParams(params, method: "ping") }
}

/// `stats` (no parameters).
public struct StatsParams: MethodParameters, Hashable {
    public static var method: CachedMethod { .stats }
    public static var names: [String] { commonNames }
    public init(_ params: JSONValue?) throws(CachedError) { _ = try EmptyParams(params, method: "stats") }
}

/// `metrics` (no parameters): the Prometheus text exposition.
public struct MetricsParams: MethodParameters, Hashable {
    public static var method: CachedMethod { .metrics }
    public static var names: [String] { commonNames }
    public init(_ params: JSONValue?) throws(CachedError) { _ = try EmptyParams(params, method: "metrics") }
}

/// `track {enabled?, maxEntries?}`: this connection is told of every change to an entry it reads from now
/// on (`invalidate` notifications, docs/protocol.md), for a near cache in the client.
public struct TrackParams: MethodParameters, Hashable {
    public static var method: CachedMethod { .track }
    public static var names: [String] { ["enabled", "maxEntries", "separate"] + commonNames }

    /// False stops tracking (default true).
    public var enabled: Bool
    /// True: the notifications go to another connection, which claims them with `notifications {token}`
    /// (the answer's `token`); until then none is sent (default false: on this connection).
    public var separate: Bool
    /// At most this many entries tracked for the connection (the daemon's `max_tracked_entries` caps it);
    /// nil: that cap.
    public var maxEntries: Int?

    public init(_ params: JSONValue?) throws(CachedError) {
        var reader = try ParamReader(params, method: "track")
        enabled = try reader.bool("enabled") ?? true
        separate = try reader.bool("separate") ?? false
        if let value = reader.optional("maxEntries") {
            guard case .number(let text) = value, let n = Int(text), n >= 1 else {
                throw .invalidParams("track: \"maxEntries\" must be a positive integer, got \(value.typeName == "number" ? "a number out of range" : value.typeName)")
            }
            maxEntries = n
        }
        try reader.finish()
    }

    public init(enabled: Bool = true, maxEntries: Int? = nil, separate: Bool = false) {
        self.enabled = enabled
        self.maxEntries = maxEntries
        self.separate = separate
    }
}

/// `notifications {token}`: this connection carries, from now on, the notifications of the connection
/// whose `track {separate: true}` answered `token` (a client that reads them synchronously, apart from
/// its answers).
public struct NotificationsParams: MethodParameters, Hashable {
    public static var method: CachedMethod { .notifications }
    public static var names: [String] { ["token"] + commonNames }

    public var token: String

    public init(_ params: JSONValue?) throws(CachedError) {
        var reader = try ParamReader(params, method: "notifications")
        token = try reader.requiredString("token")
        try reader.finish()
    }
}

/// Methods without parameters (`ping`, `stats`, `metrics`).
public struct EmptyParams: Sendable, Hashable {
    public init(_ params: JSONValue?, method: String) throws(CachedError) {
        let reader = try ParamReader(params, method: method)
        try reader.finish()
    }
}
