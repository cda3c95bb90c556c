import NIOCore

/// The `invalidate` notification the daemon sends a connection that asked for tracking (`track`): a
/// JSON-RPC notification (no `id`, never answered), on the same connection as the answers.
///
/// - `{"jsonrpc":"2.0","method":"invalidate","params":{"entries":[{"key":...,"identity":...}]}}`: these
///   entries (as the connection named them in its `get`s, with `hashKey`/`hashId` for a hash's entry) may
///   have changed: drop them.
/// - `{"jsonrpc":"2.0","method":"invalidate","params":{"all":true}}`: the daemon cannot vouch for anything
///   it answered before (its invalidation source went down or came back, Redis was flushed or restarted, a
///   node changed): drop everything.
public enum InvalidateNotification: Sendable, Hashable {
    case entries([EntryAddress])
    case all

    /// Reads a parsed message; nil when it is not an `invalidate` notification.
    public init?(_ message: JSONValue) {
        guard case .object(let members) = message, members["id"] == nil, members["method"] == .string("invalidate"),
            case .object(let params)? = members["params"]
        else { return nil }
        if params["all"] == .bool(true) {
            self = .all
            return
        }
        guard case .array(let entries)? = params["entries"] else { return nil }
        var addresses: [EntryAddress] = []
        for entry in entries {
            guard case .object(let e) = entry, case .string(let key)? = e["key"], let identityJSON = e["identity"],
                let identity = try? Identity(json: identityJSON, name: "identity")
            else { return nil }
            var hash: HashAddress?
            if case .string(let hashKey)? = e["hashKey"], let hashIdJSON = e["hashId"] {
                guard let hashId = try? Identity(json: hashIdJSON, name: "hashId") else { return nil }
                hash = HashAddress(hashKey: hashKey, hashId: hashId)
            }
            addresses.append(EntryAddress(key: key, identity: identity, hash: hash))
        }
        self = .entries(addresses)
    }
}

extension ByteBuffer {
    /// Writes the notification's line (without the newline).
    public mutating func writeInvalidateNotification(_ notification: InvalidateNotification) {
        writeStaticString("{\"jsonrpc\":\"2.0\",\"method\":\"invalidate\",\"params\":")
        switch notification {
        case .all:
            writeStaticString("{\"all\":true}}")
        case .entries(let addresses):
            writeStaticString("{\"entries\":[")
            for (i, address) in addresses.enumerated() {
                if i > 0 { writeInteger(UInt8(ascii: ",")) }
                writeStaticString("{\"key\":")
                writeJSONString(address.key)
                writeStaticString(",\"identity\":")
                writeIdentity(address.identity)
                if let hash = address.hash {
                    writeStaticString(",\"hashKey\":")
                    writeJSONString(hash.hashKey)
                    writeStaticString(",\"hashId\":")
                    writeIdentity(hash.hashId)
                }
                writeInteger(UInt8(ascii: "}"))
            }
            writeStaticString("]}}")
        }
    }

    private mutating func writeIdentity(_ identity: Identity) {
        switch identity {
        case .integer(let digits): writeString(digits)
        case .string(let s): writeJSONString(s)
        }
    }
}
