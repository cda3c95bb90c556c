/// A parsed JSON value.
///
/// Numbers keep their exact source text, so that a JSON-RPC id such as `9007199254740993` or `1.50`
/// can be echoed byte for byte, and so that no precision is lost before a parameter is validated.
public enum JSONValue: Sendable, Hashable {
    case null
    case bool(Bool)
    /// A number, as the exact text it had on the wire (already checked against the JSON grammar).
    case number(String)
    case string(String)
    case array([JSONValue])
    case object([String: JSONValue])
}

extension JSONValue {
    /// The name of this value's JSON type, for error messages.
    public var typeName: String {
        switch self {
        case .null: "null"
        case .bool: "boolean"
        case .number: "number"
        case .string: "string"
        case .array: "array"
        case .object: "object"
        }
    }

    /// The string payload, if this is a string.
    public var stringValue: String? {
        if case .string(let s) = self { return s }
        return nil
    }

    /// The object members, if this is an object.
    public var objectValue: [String: JSONValue]? {
        if case .object(let o) = self { return o }
        return nil
    }
}
