import NIOCore

/// The result of a method, written into the answer without an intermediate JSON tree.
public enum MethodResult: Sendable {
    /// `{hit, value}` (+ `encoding` for binary values). The value's bytes are spliced in unparsed.
    case get(hit: Bool, value: ByteBuffer?)
    /// A hit from the daemon's memory: `{hit: true, value}` with the value's member already encoded.
    case hit(EncodedValue)
    /// A hit from the daemon's memory answered to a tracking connection: `{hit: true, value, nearTTL}`,
    /// `nearTTL` the milliseconds a near cache may keep it (until an `invalidate` says otherwise).
    case nearHit(EncodedValue, nearTTL: Int64)
    /// A stale entry (stale-while-revalidate, or grace after a failed refresh):
    /// `{hit: true, value, stale: true}`.
    case stale(EncodedValue)
    /// A miss answered by a fill: `{hit: false, value, lease?, cached?}`; `cached` is written only when false.
    case fill(value: ByteBuffer?, lease: String?, cached: Bool)
    /// `{stored}`.
    case stored(Bool)
    /// `{stored: false, reason}`.
    case storedRefused(String)
    /// `{deleted}`.
    case deleted(Int)
    /// `{released}`.
    case released(Bool)
    /// `"pong"`.
    case pong
    /// Any other JSON result.
    case json(JSONValue)
}

extension ByteBuffer {
    /// Writes a result value (the part after `"result":`).
    public mutating func writeMethodResult(_ result: MethodResult) {
        switch result {
        case .get(let hit, let value):
            self.writeStaticString(hit ? "{\"hit\":true," : "{\"hit\":false,")
            if let value {
                self.writeValueMember(value)
            } else {
                self.writeStaticString("\"value\":null")
            }
            self.writeInteger(UInt8(ascii: "}"))
        case .hit(let value):
            self.writeStaticString("{\"hit\":true,")
            self.writeImmutableBuffer(value.member)
            self.writeInteger(UInt8(ascii: "}"))
        case .nearHit(let value, let nearTTL):
            self.writeStaticString("{\"hit\":true,")
            self.writeImmutableBuffer(value.member)
            self.writeStaticString(",\"nearTTL\":")
            self.writeString(String(nearTTL))
            self.writeInteger(UInt8(ascii: "}"))
        case .stale(let value):
            self.writeStaticString("{\"hit\":true,")
            self.writeImmutableBuffer(value.member)
            self.writeStaticString(",\"stale\":true}")
        case .fill(let value, let lease, let cached):
            self.writeStaticString("{\"hit\":false,")
            if let value {
                self.writeValueMember(value)
            } else {
                self.writeStaticString("\"value\":null")
            }
            if let lease {
                self.writeStaticString(",\"lease\":")
                self.writeJSONString(lease)
            }
            if !cached { self.writeStaticString(",\"cached\":false") }
            self.writeInteger(UInt8(ascii: "}"))
        case .storedRefused(let reason):
            self.writeStaticString("{\"stored\":false,\"reason\":")
            self.writeJSONString(reason)
            self.writeInteger(UInt8(ascii: "}"))
        case .stored(let stored):
            self.writeStaticString(stored ? "{\"stored\":true}" : "{\"stored\":false}")
        case .deleted(let n):
            self.writeStaticString("{\"deleted\":")
            self.writeString(String(n))
            self.writeInteger(UInt8(ascii: "}"))
        case .released(let released):
            self.writeStaticString(released ? "{\"released\":true}" : "{\"released\":false}")
        case .pong:
            self.writeStaticString("\"pong\"")
        case .json(let value):
            self.writeJSONValue(value)
        }
    }

    /// Writes a whole response object (no newline) for a completed request.
    public mutating func writeResponse(id: JSONRPCID, _ result: Result<MethodResult, CachedError>) {
        switch result {
        case .success(.hit(let value)):
            // The hot path: the fewest writes.
            self.writeStaticString("{\"jsonrpc\":\"2.0\",\"id\":")
            self.writeJSONRPCID(id)
            self.writeStaticString(",\"result\":{\"hit\":true,")
            self.writeImmutableBuffer(value.member)
            self.writeStaticString("}}")
        case .success(let value):
            self.writeJSONRPCResultPrefix(id: id)
            self.writeMethodResult(value)
            self.writeInteger(UInt8(ascii: "}"))
        case .failure(let error):
            self.writeJSONRPCError(id: id, error)
        }
    }
}
