import NIOCore

// MARK: - Writing responses

extension ByteBuffer {
    /// Writes the opening of a success response, up to and including `"result":`.
    @inlinable
    public mutating func writeJSONRPCResultPrefix(id: JSONRPCID) {
        self.writeStaticString("{\"jsonrpc\":\"2.0\",\"id\":")
        self.writeJSONRPCID(id)
        self.writeStaticString(",\"result\":")
    }

    /// Writes a complete error response object (no newline).
    public mutating func writeJSONRPCError(id: JSONRPCID, _ error: CachedError) {
        self.writeStaticString("{\"jsonrpc\":\"2.0\",\"id\":")
        self.writeJSONRPCID(id)
        self.writeStaticString(",\"error\":{\"code\":")
        self.writeString(String(error.code.rawValue))
        self.writeStaticString(",\"message\":")
        self.writeJSONString(error.message)
        if let data = error.data {
            self.writeStaticString(",\"data\":")
            self.writeJSONValue(data)
        }
        self.writeStaticString("}}")
    }
}
