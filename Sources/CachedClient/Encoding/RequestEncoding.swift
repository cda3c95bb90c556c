import CachedProtocol
import NIOCore

// MARK: - Writing request lines

extension ByteBuffer {
    /// Writes one JSON-RPC request object (no newline) with an integer id.
    mutating func writeCachedRequest(_ request: CachedClient.Request, id: Int) {
        self.writeStaticString("{\"jsonrpc\":\"2.0\",\"id\":")
        self.writeString(String(id))
        self.writeStaticString(",\"method\":")
        self.writeJSONString(request.method)
        if request.params != nil || request.value != nil {
            self.writeStaticString(",\"params\":{")
            var first = true
            for name in (request.params ?? [:]).keys.sorted() {
                if !first { self.writeInteger(UInt8(ascii: ",")) }
                first = false
                self.writeJSONString(name)
                self.writeInteger(UInt8(ascii: ":"))
                self.writeJSONValue(request.params![name]!)
            }
            if let value = request.value {
                if !first { self.writeInteger(UInt8(ascii: ",")) }
                // `"value":"..."`, or base64 with `"encoding":"base64"` for bytes that are not UTF-8.
                self.writeValueMember(value)
            }
            self.writeInteger(UInt8(ascii: "}"))
        }
        self.writeInteger(UInt8(ascii: "}"))
    }

    /// Writes one line: a single request object, or a batch array when `asBatch` is set.
    mutating func writeCachedRequestLine(_ requests: [CachedClient.Request], ids: [Int], asBatch: Bool) {
        if asBatch { self.writeInteger(UInt8(ascii: "[")) }
        for (i, request) in requests.enumerated() {
            if i > 0 { self.writeInteger(UInt8(ascii: ",")) }
            self.writeCachedRequest(request, id: ids[i])
        }
        if asBatch { self.writeInteger(UInt8(ascii: "]")) }
        self.writeInteger(UInt8(ascii: "\n"))
    }
}
