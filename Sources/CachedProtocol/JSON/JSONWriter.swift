import NIOCore

// MARK: - Writing JSON into a ByteBuffer

extension ByteBuffer {
    /// Writes `string` as a JSON string literal, quotes included.
    @inlinable
    public mutating func writeJSONString(_ string: String) {
        var string = string
        string.withUTF8 { utf8 in
            self.writeJSONStringBytes(UnsafeRawBufferPointer(utf8))
        }
    }

    /// Writes already-valid UTF-8 bytes as a JSON string literal, quotes included, escaping what JSON requires.
    @inlinable
    public mutating func writeJSONStringBytes(_ bytes: UnsafeRawBufferPointer) {
        self.reserveCapacity(minimumWritableBytes: bytes.count + 2)
        self.writeInteger(UInt8(ascii: "\""))
        var runStart = 0
        var i = 0
        let n = bytes.count
        while i < n {
            let b = bytes[i]
            if b >= 0x20 && b != UInt8(ascii: "\"") && b != UInt8(ascii: "\\") {
                i &+= 1
                continue
            }
            if runStart < i {
                self.writeBytes(UnsafeRawBufferPointer(rebasing: bytes[runStart..<i]))
            }
            self.writeJSONEscape(b)
            i &+= 1
            runStart = i
        }
        if runStart < n {
            self.writeBytes(UnsafeRawBufferPointer(rebasing: bytes[runStart..<n]))
        }
        self.writeInteger(UInt8(ascii: "\""))
    }

    @usableFromInline
    mutating func writeJSONEscape(_ b: UInt8) {
        switch b {
        case UInt8(ascii: "\""): self.writeStaticString("\\\"")
        case UInt8(ascii: "\\"): self.writeStaticString("\\\\")
        case 0x0A: self.writeStaticString("\\n")
        case 0x0D: self.writeStaticString("\\r")
        case 0x09: self.writeStaticString("\\t")
        case 0x08: self.writeStaticString("\\b")
        case 0x0C: self.writeStaticString("\\f")
        default:
            let hex: [UInt8] = Array("0123456789abcdef".utf8)
            self.writeStaticString("\\u00")
            self.writeInteger(hex[Int(b >> 4)])
            self.writeInteger(hex[Int(b & 0x0F)])
        }
    }

    /// Writes a JSON value.
    public mutating func writeJSONValue(_ value: JSONValue) {
        switch value {
        case .null: self.writeStaticString("null")
        case .bool(let b): self.writeStaticString(b ? "true" : "false")
        case .number(let raw): self.writeString(raw)
        case .string(let s): self.writeJSONString(s)
        case .array(let elements):
            self.writeInteger(UInt8(ascii: "["))
            for (i, e) in elements.enumerated() {
                if i > 0 { self.writeInteger(UInt8(ascii: ",")) }
                self.writeJSONValue(e)
            }
            self.writeInteger(UInt8(ascii: "]"))
        case .object(let members):
            self.writeInteger(UInt8(ascii: "{"))
            // Sorted for stable output (stats, tests, humans).
            for (i, key) in members.keys.sorted().enumerated() {
                if i > 0 { self.writeInteger(UInt8(ascii: ",")) }
                self.writeJSONString(key)
                self.writeInteger(UInt8(ascii: ":"))
                self.writeJSONValue(members[key]!)
            }
            self.writeInteger(UInt8(ascii: "}"))
        }
    }
}
