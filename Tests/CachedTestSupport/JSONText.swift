import CachedProtocol
import NIOCore

/// The JSON text of a value, written by the protocol target's own writer.
public func jsonText(_ value: JSONValue) -> String {
    var buffer = ByteBuffer()
    buffer.writeJSONValue(value)
    return String(buffer: buffer)
}

/// A request line for `params`, as a test would hand-write it.
public func requestLine(id: JSONValue?, method: String, params: [String: JSONValue]? = nil) -> String {
    var members: [String: JSONValue] = ["jsonrpc": .string("2.0"), "method": .string(method)]
    if let id { members["id"] = id }
    if let params { members["params"] = .object(params) }
    return jsonText(.object(members))
}
