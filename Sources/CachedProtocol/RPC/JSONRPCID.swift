import NIOCore

/// A JSON-RPC request id: a number (kept as its exact source text), a string, or null.
public enum JSONRPCID: Sendable, Hashable, CustomStringConvertible {
    case number(String)
    case string(String)
    case null

    /// Builds an id from a JSON value, or nil if the value cannot be an id.
    public init?(_ value: JSONValue) {
        switch value {
        case .number(let raw): self = .number(raw)
        case .string(let s): self = .string(s)
        case .null: self = .null
        default: return nil
        }
    }

    public var jsonValue: JSONValue {
        switch self {
        case .number(let raw): .number(raw)
        case .string(let s): .string(s)
        case .null: .null
        }
    }

    public var description: String {
        switch self {
        case .number(let raw): raw
        case .string(let s): "\"\(s)\""
        case .null: "null"
        }
    }
}

extension ByteBuffer {
    /// Writes an id exactly as it came.
    @inlinable
    public mutating func writeJSONRPCID(_ id: JSONRPCID) {
        switch id {
        case .number(let raw): self.writeString(raw)
        case .string(let s): self.writeJSONString(s)
        case .null: self.writeStaticString("null")
        }
    }
}
