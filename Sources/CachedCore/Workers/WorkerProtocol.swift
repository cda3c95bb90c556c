import CachedProtocol
import FoundationEssentials
import NIOCore

/// The worker protocol (docs/worker-protocol.md): newline-delimited JSON-RPC 2.0 on a worker's stdin/stdout.
enum WorkerProtocol {
    // MARK: Requests

    /// The `params` object of a `sync` request, encoded once per call (the id is added at dispatch).
    static func encodeParams(key: String, address: EntryAddress, arguments: HandlerArguments) -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.writeStaticString("{\"key\":")
        buffer.writeJSONString(key)
        buffer.writeStaticString(",\"identity\":")
        buffer.writeJSONValue(address.identity.jsonValue)
        if let hash = address.hash {
            buffer.writeStaticString(",\"hashKey\":")
            buffer.writeJSONString(hash.hashKey)
            buffer.writeStaticString(",\"hashId\":")
            buffer.writeJSONValue(hash.hashId.jsonValue)
        }
        buffer.writeStaticString(",\"args\":")
        buffer.writeJSONValue(.array(arguments.args))
        buffer.writeStaticString(",\"kwargs\":")
        buffer.writeJSONValue(.object(arguments.kwargs))
        buffer.writeStaticString("}")
        return buffer
    }

    /// One request line, newline included.
    static func requestLine(id: UInt64, params: ByteBuffer) -> [UInt8] {
        var buffer = ByteBuffer()
        buffer.reserveCapacity(params.readableBytes + 64)
        buffer.writeStaticString("{\"jsonrpc\":\"2.0\",\"id\":")
        buffer.writeString(String(id))
        buffer.writeStaticString(",\"method\":\"sync\",\"params\":")
        buffer.writeImmutableBuffer(params)
        buffer.writeStaticString("}\n")
        return Array(buffer.readableBytesView)
    }

    // MARK: Answers

    /// A parsed answer line.
    enum Answer: Equatable {
        /// A line with only whitespace (ignored).
        case blank
        /// A well-formed answer: its id (nil if it is not an integer we could have sent) and outcome.
        case answer(id: UInt64?, Result<ByteBuffer?, CachedError>)
        /// Not a valid answer: why.
        case invalid(String)
    }

    /// Parses one answer line (without its newline) from worker `pid`.
    static func parseAnswer(_ line: UnsafeRawBufferPointer, pid: Int32) -> Answer {
        if line.allSatisfy({ $0 == 0x20 || $0 == 0x09 || $0 == 0x0D }) { return .blank }
        let value: JSONValue
        do {
            value = try JSONParser.parse(line, maxDepth: 64)
        } catch {
            return .invalid("not JSON (\(error)): \(preview(line))")
        }
        guard case .object(let object) = value else {
            return .invalid("not a JSON-RPC answer object: \(preview(line))")
        }
        var id: UInt64?
        if case .number(let raw)? = object["id"] { id = UInt64(raw) }
        if let result = object["result"] {
            guard object["error"] == nil else { return .invalid("an answer with both result and error") }
            switch result {
            case .null:
                return .answer(id: id, .success(nil))
            case .string(let string):
                return .answer(id: id, .success(ByteBuffer(string: string)))
            case .object(let members):
                guard case .string(let text)? = members["value"] else {
                    return .invalid("a result object without a string \"value\"")
                }
                let encoding: ValueEncoding
                switch members["encoding"] {
                case nil, .null?: encoding = .utf8
                case .string(let name)?:
                    guard let known = ValueEncoding(rawValue: name) else {
                        return .invalid("unknown value encoding \"\(name)\"")
                    }
                    encoding = known
                default:
                    return .invalid("\"encoding\" is not a string")
                }
                switch encoding {
                case .utf8:
                    return .answer(id: id, .success(ByteBuffer(string: text)))
                case .base64:
                    guard let data = Data(base64Encoded: text) else { return .invalid("\"value\" is not valid base64") }
                    return .answer(id: id, .success(ByteBuffer(bytes: data)))
                }
            default:
                return .invalid("a result that is a \(result.typeName), not a string, object or null")
            }
        }
        if let error = object["error"] {
            guard case .object(let members) = error else { return .invalid("an error that is not an object") }
            let message = members["message"]?.stringValue ?? "(no message)"
            var data: [String: JSONValue] = ["worker": .number(String(pid))]
            if let code = members["code"] { data["code"] = code }
            if let extra = members["data"] { data["data"] = extra }
            return .answer(id: id, .failure(CachedError(.handlerError, "handler error: \(message)", data: .object(data))))
        }
        return .invalid("an object with neither result nor error: \(preview(line))")
    }

    /// The start of a line, for error messages and logs.
    static func preview(_ line: UnsafeRawBufferPointer, limit: Int = 200) -> String {
        let head = String(decoding: line.prefix(limit), as: UTF8.self)
        return line.count > limit ? head + "… (\(line.count) bytes)" : head
    }
}

// MARK: - Line splitting

/// Splits a byte stream into lines on `\n`, keeping at most `maxLineBytes` of a line.
///
/// Bytes are scanned as they come (swift-subprocess's `strings()` is slow and also splits on
/// U+2028/U+2029, which valid JSON may contain unescaped).
struct LineSplitter {
    /// The most bytes kept of one line (without its newline).
    let maxLineBytes: Int
    private var partial: [UInt8] = []
    /// Bytes of the current line beyond `maxLineBytes`, dropped.
    private var dropped = 0

    init(maxLineBytes: Int) {
        self.maxLineBytes = maxLineBytes
    }

    /// Feeds a chunk; calls `line` for every complete line with its bytes (truncated to `maxLineBytes`)
    /// and how many bytes were cut. Returns false as soon as `line` does.
    @discardableResult
    mutating func feed(_ chunk: UnsafeRawBufferPointer, _ line: (UnsafeRawBufferPointer, _ truncated: Int) -> Bool) -> Bool {
        var start = 0
        let count = chunk.count
        while start < count {
            let rest = UnsafeRawBufferPointer(rebasing: chunk[start..<count])
            if let newline = rest.firstIndex(of: 0x0A) {
                let piece = UnsafeRawBufferPointer(rebasing: rest[..<newline])
                let keep: Bool
                if partial.isEmpty && dropped == 0 && piece.count <= maxLineBytes {
                    keep = line(piece, 0)
                } else {
                    append(piece)
                    keep = partial.withUnsafeBytes { line($0, dropped) }
                    partial.removeAll(keepingCapacity: partial.count <= 64 * 1024)
                    dropped = 0
                }
                start += newline + 1
                if !keep { return false }
            } else {
                append(rest)
                start = count
            }
        }
        return true
    }

    /// Whether the unfinished line is already longer than `maxLineBytes`.
    var isOverLong: Bool { dropped > 0 }

    private mutating func append(_ bytes: UnsafeRawBufferPointer) {
        let room = maxLineBytes - partial.count
        if bytes.count <= room {
            partial.append(contentsOf: bytes)
        } else {
            partial.append(contentsOf: bytes.prefix(max(0, room)))
            dropped += bytes.count - max(0, room)
        }
    }
}
