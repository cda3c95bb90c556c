import CachedProtocol
import NIOCore

// The per-input check shared by the libFuzzer target (Fuzz/CachedFuzz) and the corpus replay test
// (Tests/CachedProtocolTests/FuzzCorpusReplayTests.swift). It runs the daemon's input path without
// sockets: line framing, `JSONRPCMessage.parse`, the params model of each method, and the writing of
// the answers. It returns the invariants that failed instead of trapping, so the replay can report them.

/// Limits for one check (the daemon's are configurable; small ones here reach the limit paths).
public struct CachedFuzzLimits: Sendable {
    public var maxLineBytes: Int
    public var maxDepth: Int
    public var maxBatch: Int
    public init(maxLineBytes: Int = 1024, maxDepth: Int = 32, maxBatch: Int = 64) {
        self.maxLineBytes = maxLineBytes
        self.maxDepth = maxDepth
        self.maxBatch = maxBatch
    }
}

// MARK: - Line framing

/// The framing of `docs/protocol.md`: lines end in `\n`, a `\r` before it is dropped, a line longer
/// than the limit ends the connection. Fed chunk by chunk, like a socket.
public struct LineFramer: Sendable {
    public enum Event: Sendable, Hashable {
        case line([UInt8])
        /// A line passed the limit: the daemon answers -32001 and closes.
        case tooLong
    }

    public let maxLineBytes: Int
    private var partial: [UInt8] = []
    public private(set) var closed = false

    public init(maxLineBytes: Int) { self.maxLineBytes = maxLineBytes }

    public mutating func feed(_ chunk: some Collection<UInt8>) -> [Event] {
        var events: [Event] = []
        guard !closed else { return events }
        for b in chunk {
            if b == UInt8(ascii: "\n") {
                var line = partial
                partial = []
                if line.last == UInt8(ascii: "\r") { line.removeLast() }
                events.append(.line(line))
                continue
            }
            partial.append(b)
            // A `\r` that may still be followed by `\n` does not count yet.
            let counted = partial.last == UInt8(ascii: "\r") ? partial.count - 1 : partial.count
            if counted > maxLineBytes {
                closed = true
                partial = []
                events.append(.tooLong)
                return events
            }
        }
        return events
    }

    /// Bytes after the last newline (dropped by the daemon at end of input).
    public var unterminated: [UInt8] { partial }
}

// MARK: - The check

/// Runs one fuzz input through the daemon's input path; returns the invariant violations (empty: fine).
public func checkCachedInput(_ bytes: [UInt8], limits: CachedFuzzLimits = CachedFuzzLimits()) -> [String] {
    var checker = Checker(limits: limits)
    checker.run(bytes)
    return checker.violations
}

struct Checker {
    let limits: CachedFuzzLimits
    var violations: [String] = []
    /// Recursion bound for the unlimited-depth comparisons (test threads have small stacks).
    static let deepLimit = 256

    init(limits: CachedFuzzLimits) { self.limits = limits }

    mutating func fail(_ what: String) {
        if violations.count < 20 { violations.append(what) }
    }

    mutating func run(_ bytes: [UInt8]) {
        checkFraming(bytes)
        // The whole input as one line (what the daemon sees of a line without newlines); reaches
        // deep nesting that the framing limit would cut.
        checkLine(bytes)
    }

    // MARK: Framing

    mutating func checkFraming(_ bytes: [UInt8]) {
        var whole = LineFramer(maxLineBytes: limits.maxLineBytes)
        let events = whole.feed(bytes)
        // Chunking must not matter: split at points derived from the input.
        var chunked = LineFramer(maxLineBytes: limits.maxLineBytes)
        var chunkedEvents: [LineFramer.Event] = []
        var start = 0
        var step = 1 + Int(bytes.first ?? 7) % 13
        while start < bytes.count {
            let end = min(bytes.count, start + step)
            chunkedEvents += chunked.feed(bytes[start..<end])
            start = end
            step = 1 + (step * 7 + 3) % 31
        }
        if events != chunkedEvents { fail("framing depends on chunking") }
        if !whole.closed && whole.unterminated != chunked.unterminated { fail("framing leftover depends on chunking") }

        // Reassembly: the lines and their terminators give back the input's prefix.
        var rebuilt: [UInt8] = []
        var sawTooLong = false
        var lineIndex = 0
        for event in events {
            switch event {
            case .line(let line):
                if sawTooLong { fail("a line after the connection closed") }
                if line.contains(UInt8(ascii: "\n")) { fail("a framed line holds a newline") }
                if line.count > limits.maxLineBytes { fail("a framed line of \(line.count) bytes passed the limit") }
                rebuilt += line
                if rebuilt.count < bytes.count, bytes[rebuilt.count] == UInt8(ascii: "\r") { rebuilt.append(UInt8(ascii: "\r")) }
                rebuilt.append(UInt8(ascii: "\n"))
                if lineIndex < 64 { checkLine(line) }  // bounded work per input
                lineIndex += 1
            case .tooLong:
                sawTooLong = true
                checkAnswer(id: .null, error: tooLongError(), context: "line over the limit")
            }
        }
        if !sawTooLong {
            rebuilt += whole.unterminated
            if rebuilt != bytes { fail("framing lost or changed bytes") }
        } else if !bytes.starts(with: rebuilt) {
            fail("framing changed bytes before the oversized line")
        }
    }

    func tooLongError() -> CachedError {
        .lineTooLong(maxLineBytes: limits.maxLineBytes)
    }

    // MARK: One line

    mutating func checkLine(_ line: [UInt8]) {
        let message = JSONRPCMessage.parse(line, maxDepth: limits.maxDepth, maxBatch: limits.maxBatch)
        let parsed: Result<JSONValue, JSONParseError> = line.withUnsafeBytes { buffer in
            Result { () throws(JSONParseError) -> JSONValue in try JSONParser.parse(buffer, maxDepth: limits.maxDepth) }
        }
        let deepLimit = max(limits.maxDepth, Self.deepLimit)
        let deep: Result<JSONValue, JSONParseError> = line.withUnsafeBytes { buffer in
            Result { () throws(JSONParseError) -> JSONValue in try JSONParser.parse(buffer, maxDepth: deepLimit) }
        }

        switch parsed {
        case .failure(let error):
            switch (error.kind, deep) {
            case (.tooDeep, .success(let value)):
                if depth(of: value) <= limits.maxDepth { fail("tooDeep for a value of depth \(depth(of: value)) <= \(limits.maxDepth)") }
            case (.tooDeep, .failure):
                break
            case (_, .success):
                fail("\(error) at depth \(limits.maxDepth) but accepted with a larger depth")
            case (_, .failure(let deepError)):
                if deepError != error { fail("error \(error) changes to \(deepError) with a larger depth") }
            }
            if error.offset < 0 || error.offset > line.count { fail("error offset \(error.offset) outside the line") }
            guard case .unparseable(let rpcError) = message else {
                fail("JSONParser rejected the line but JSONRPCMessage did not")
                return
            }
            let expected: CachedError.Code
            switch error.kind {
            case .tooDeep: expected = .limitExceeded
            case .duplicateMember: expected = .invalidRequest  // valid JSON grammar, ambiguous request
            case .syntax, .invalidUTF8, .loneSurrogate: expected = .parseError
            }
            if rpcError.code != expected { fail("parse failure answered with \(rpcError.code), expected \(expected)") }
            checkAnswer(id: .null, error: rpcError, context: "unparseable")
        case .success(let value):
            if case .success(let deepValue) = deep, deepValue != value { fail("value changes with a larger depth") }
            if case .failure(let deepError) = deep { fail("accepted at depth \(limits.maxDepth) but \(deepError) at \(deepLimit)") }
            if depth(of: value) > limits.maxDepth { fail("accepted a value of depth \(depth(of: value)) > \(limits.maxDepth)") }
            checkValue(value)
            checkRoundTrip(value)
            checkMessage(message, value: value)
        }
        checkFastGet(line, message: message)
        // Any bytes as an opaque value.
        checkValueMember(line)
    }

    /// The daemon's hot path must read every line it accepts exactly as the general path does.
    mutating func checkFastGet(_ line: [UInt8], message: JSONRPCMessage) {
        guard let fast = line.withUnsafeBytes({ FastGetRequest.parse($0) }) else { return }
        guard case .single(.request(let request)) = message, sameBytes(request.method, "get"), let id = request.id else {
            fail("FastGetRequest accepted a line that the general path does not read as a get: \(message)")
            return
        }
        if !sameID(id, fast.id) { fail("FastGetRequest read id \(fast.id), the general path \(id)") }
        guard let params = try? GetParams(request.params) else {
            fail("FastGetRequest accepted params that GetParams rejects")
            return
        }
        if params != fast.params || params.address.storeKey != fast.params.address.storeKey
            || params.address.storeField != fast.params.address.storeField
        {
            fail("FastGetRequest read \(fast.params.address), the general path \(params.address)")
        }
        let timeout = try? RequestTimeout.read(request.params, method: "get")
        if timeout != fast.timeout {
            fail("FastGetRequest read timeout \(String(describing: fast.timeout)), the general path \(String(describing: timeout))")
        }
    }

    func depth(of value: JSONValue) -> Int {
        switch value {
        case .array(let a): 1 + (a.map { depth(of: $0) }.max() ?? 0)
        case .object(let o): 1 + (o.values.map { depth(of: $0) }.max() ?? 0)
        default: 0
        }
    }

    /// Numbers keep JSON-grammar text; strings are Unicode (no lone surrogates can exist in a Swift String).
    mutating func checkValue(_ value: JSONValue) {
        switch value {
        case .number(let raw):
            if !isJSONNumber(raw) { fail("number text \(Array(raw.utf8)) is not a JSON number") }
        case .array(let a):
            for e in a { checkValue(e) }
        case .object(let o):
            for e in o.values { checkValue(e) }
        default:
            break
        }
    }

    /// parse(write(value)) == value, and write is stable (byte for byte) through a second round.
    mutating func checkRoundTrip(_ value: JSONValue) {
        var buffer = ByteBuffer()
        buffer.writeJSONValue(value)
        let written = Array(buffer.readableBytesView)
        if written.contains(UInt8(ascii: "\n")) { fail("written JSON holds a raw newline") }
        guard let again = parseJSON(written, context: "writeJSONValue") else { return }
        if again != value { fail("parse(write(value)) != value") }
        var buffer2 = ByteBuffer()
        buffer2.writeJSONValue(again)
        if Array(buffer2.readableBytesView) != written { fail("writeJSONValue is not stable through a round trip") }
    }

    /// Parses written output; a failure is a violation.
    mutating func parseJSON(_ bytes: [UInt8], context: String) -> JSONValue? {
        if !UTF8Validation.isValid(bytes) { fail("\(context): output is not UTF-8") }
        do {
            return try JSONParser.parse(bytes, maxDepth: 4 * Self.deepLimit)
        } catch {
            fail("\(context): output is not JSON (\(error)): \(String(decoding: bytes.prefix(200), as: UTF8.self))")
            return nil
        }
    }

    // MARK: Messages and entries

    mutating func checkMessage(_ message: JSONRPCMessage, value: JSONValue) {
        switch (message, value) {
        case (.unparseable(let error), .array(let elements)):
            if elements.isEmpty {
                if error.code != .invalidRequest { fail("empty batch answered with \(error.code)") }
            } else if elements.count > limits.maxBatch {
                if error.code != .limitExceeded { fail("oversized batch answered with \(error.code)") }
            } else {
                fail("a valid batch of \(elements.count) was answered as unparseable")
            }
            checkAnswer(id: .null, error: error, context: "batch error")
        case (.unparseable, _):
            fail("a JSON value that is not an array was answered as unparseable")
        case (.batch(let entries), .array(let elements)):
            if elements.isEmpty || elements.count > limits.maxBatch { fail("batch of \(elements.count) accepted") }
            if entries.count != elements.count { fail("batch of \(elements.count) gave \(entries.count) entries") }
            var batch = ByteBuffer()
            var answered = 0
            batch.writeInteger(UInt8(ascii: "["))
            for (entry, element) in zip(entries, elements) {
                if case .array = element {
                    // A nested array in a batch is one invalid request, not a batch.
                    if case .request = entry { fail("an array inside a batch was taken as a request") }
                }
                if let answer = checkEntry(entry, source: element) {
                    if answered > 0 { batch.writeInteger(UInt8(ascii: ",")) }
                    batch.writeBytes(answer)
                    answered += 1
                }
            }
            batch.writeInteger(UInt8(ascii: "]"))
            if answered > 0, let parsed = parseJSON(Array(batch.readableBytesView), context: "batch answer") {
                guard case .array(let answers) = parsed, answers.count == answered else {
                    fail("batch answer is not an array of \(answered)")
                    return
                }
            }
        case (.batch, _):
            fail("a non-array value was taken as a batch")
        case (.single(let entry), let v):
            if case .array = v { fail("an array was taken as a single request") }
            _ = checkEntry(entry, source: v)
        }
    }

    /// The id the entry must echo, computed from its source value.
    func expectedID(_ source: JSONValue) -> JSONRPCID?? {
        guard case .object(let members) = source else { return .some(.null) }
        guard let raw = members["id"] else { return .some(nil) }
        switch raw {
        case .number(let n): return .some(.number(n))
        case .string(let s): return .some(.string(s))
        case .null: return .some(.null)
        default: return .some(.null)
        }
    }

    /// Checks one entry and returns the answer bytes the daemon would write (nil for a notification).
    mutating func checkEntry(_ entry: JSONRPCEntry, source: JSONValue) -> [UInt8]? {
        let expected = expectedID(source)
        switch entry {
        case .invalid(let id, let error):
            if error.code != .invalidRequest { fail("invalid request answered with \(error.code)") }
            // An invalid request is answered even without an id, with the id it had if it was readable.
            if case .some(.some(let e)) = expected, !sameID(e, id), !isBadIDType(source) {
                fail("invalid request echoes id \(id), expected \(e)")
            }
            return checkAnswer(id: id, error: error, context: "invalid request")
        case .request(let request):
            guard case .object(let members) = source else {
                fail("a non-object was taken as a request")
                return nil
            }
            if case .some(let e) = expected {
                switch (e, request.id) {
                case (nil, nil): break
                case (let e?, let got?): if !sameID(e, got) { fail("request id \(got) differs from the sent \(e)") }
                default: fail("request id presence differs from the source")
                }
            }
            for name in members.keys where !["jsonrpc", "method", "params", "id"].contains(where: { sameBytes($0, name) }) {
                fail("request accepted with unknown member \(Array(name.utf8))")
            }
            guard case .string(let m)? = members["method"], sameBytes(m, request.method) else {
                fail("method differs from the source")
                return nil
            }
            if case .string(let v)? = members["jsonrpc"], sameBytes(v, "2.0") {} else { fail("accepted without jsonrpc 2.0") }
            if request.params != members["params"] { fail("params differ from the source") }
            let result = runMethod(request)
            guard let id = request.id else { return nil }
            switch result {
            case .failure(let error):
                return checkAnswer(id: id, error: error, context: "method error")
            case .success(let methodResult):
                var buffer = ByteBuffer()
                buffer.writeResponse(id: id, .success(methodResult))
                let bytes = Array(buffer.readableBytesView)
                if let answer = parseJSON(bytes, context: "result answer") { checkEnvelope(answer, id: id, context: "result answer") }
                return bytes
            }
        }
    }

    func isBadIDType(_ source: JSONValue) -> Bool {
        guard case .object(let members) = source, let raw = members["id"] else { return false }
        return JSONRPCID(raw) == nil
    }

    func sameBytes(_ a: String, _ b: String) -> Bool { a.utf8.elementsEqual(b.utf8) }

    func sameID(_ a: JSONRPCID, _ b: JSONRPCID) -> Bool {
        switch (a, b) {
        case (.null, .null): true
        case (.number(let x), .number(let y)), (.string(let x), .string(let y)): sameBytes(x, y)
        default: false
        }
    }

    // MARK: Methods

    /// Decodes the params like the dispatcher, and makes a result of each kind the daemon writes (the
    /// answer is then written by the daemon's own `writeResponse`, the hot `.hit` writer included).
    mutating func runMethod(_ request: JSONRPCRequest) -> Result<MethodResult, CachedError> {
        guard let method = CachedMethod(rawValue: request.method) else {
            return .failure(.methodNotFound(request.method))
        }
        if !sameBytes(method.rawValue, request.method) { fail("method \(Array(request.method.utf8)) taken as \(method.rawValue)") }
        let result: MethodResult
        do throws(CachedError) {
            switch method {
            case .get:
                let p = try GetParams(request.params)
                checkAddress(p.address)
                if p.arguments.args.isEmpty && p.arguments.kwargs.isEmpty {
                    result = .hit(EncodedValue(ByteBuffer(string: p.address.storeKey)))
                } else {
                    result = .json(.object(["args": .array(p.arguments.args), "kwargs": .object(p.arguments.kwargs)]))
                }
            case .set:
                let p = try SetParams(request.params)
                checkAddress(p.address)
                if let ttl = p.ttl, !(ttl.isFinite && ttl >= 0 && ttl <= 1e9) { fail("ttl \(ttl) accepted") }
                if let value = p.value {
                    checkValueMember(Array(value.readableBytesView))
                    result = .fill(value: value, lease: p.lease, cached: p.ttl == nil)
                } else {
                    result = .stored(true)
                }
            case .delete:
                let p = try DeleteParams(request.params)
                checkAddress(p.address)
                result = .deleted(1)
            case .deleteHash:
                let p = try DeleteHashParams(request.params)
                checkHash(p.hash)
                result = .deleted(0)
            case .release:
                let p = try ReleaseParams(request.params)
                checkAddress(p.address)
                result = .released(p.lease.utf8.count.isMultiple(of: 2))
            case .ping:
                _ = try PingParams(request.params)
                result = .pong
            case .stats:
                _ = try StatsParams(request.params)
                result = .storedRefused(request.method)
            case .metrics:
                _ = try MetricsParams(request.params)
                result = .storedRefused(request.method)
            case .notifications:
                let p = try NotificationsParams(request.params)
                result = .storedRefused(p.token)
            case .track:
                let p = try TrackParams(request.params)
                if let n = p.maxEntries, n < 1 { fail("maxEntries \(n) accepted") }
                // The tracked hit's writer, with a value named after the request.
                result = .nearHit(EncodedValue(ByteBuffer(string: request.method)), nearTTL: Int64(p.maxEntries ?? 0))
            }
        } catch {
            if error.code != .invalidParams { fail("params rejected with \(error.code), expected -32602") }
            return .failure(error)
        }
        // Accepted: every parameter given is one the method takes, spelled exactly.
        let allowed = method.parameters.names
        if case .object(let members)? = request.params {
            for name in members.keys where !allowed.contains(where: { sameBytes($0, name) }) {
                fail("\(method.rawValue) accepted unknown parameter \(Array(name.utf8))")
            }
        } else if request.params != nil {
            fail("\(method.rawValue) accepted non-object params")
        }
        return .success(result)
    }

    mutating func checkAddress(_ address: EntryAddress) {
        checkKey(address.key)
        let name = referencePadded(address.key) + "#" + referenceFormatted(address.identity)
        if let hash = address.hash {
            checkHash(hash)
            if !sameBytes(address.storeKey, hash.storeKey) { fail("hash entry storeKey is not the hash's") }
            if address.storeField.map({ sameBytes($0, name) }) != true { fail("storeField \(address.storeField ?? "nil") != \(name)") }
        } else {
            if !sameBytes(address.storeKey, name) { fail("storeKey \(address.storeKey) != \(name)") }
            if address.storeField != nil { fail("plain entry has a storeField") }
        }
        checkIdentity(address.identity)
    }

    mutating func checkHash(_ hash: HashAddress) {
        checkKey(hash.hashKey)
        checkIdentity(hash.hashId)
        let name = referencePadded(hash.hashKey) + "#" + referenceFormatted(hash.hashId)
        if !sameBytes(hash.storeKey, name) { fail("hash storeKey \(hash.storeKey) != \(name)") }
    }

    mutating func checkKey(_ key: String) {
        let utf8 = Array(key.utf8)
        let allowed = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.:/@+".utf8)
        if utf8.count < 3 || utf8.count > KeyLayout.maxKeyLength || !utf8.allSatisfy(allowed.contains) {
            fail("invalid key \(utf8) accepted")
        }
    }

    mutating func checkIdentity(_ identity: Identity) {
        switch identity {
        case .integer(let digits):
            let body = digits.hasPrefix("-") ? digits.dropFirst() : Substring(digits)
            if body.isEmpty || !body.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 })
                || (body.count > 1 && body.hasPrefix("0")) || digits == "-0" {
                fail("non-canonical integer identity \(digits)")
            }
        case .string(let s):
            if s.utf8.isEmpty || s.utf8.count > Identity.maxStringBytes
                || s.unicodeScalars.contains(where: { $0.value < 0x20 || (0x7F...0x9F).contains($0.value) }) {
                fail("invalid string identity \(Array(s.utf8)) accepted")
            }
        }
    }

    /// Python's `key.zfill(10).upper()`, written independently of `KeyLayout`.
    func referencePadded(_ key: String) -> String {
        var chars = Array(key)
        var sign = ""
        if chars.count < 10, let first = chars.first, first == "+" || first == "-" {
            sign = String(first)
            chars.removeFirst()
        }
        return sign + String(repeating: "0", count: max(0, 10 - key.count)) + String(chars).uppercased()
    }

    /// Python's `"%010d" % identity` (or the string itself).
    func referenceFormatted(_ identity: Identity) -> String {
        switch identity {
        case .string(let s): return s
        case .integer(let digits):
            let negative = digits.hasPrefix("-")
            let body = negative ? String(digits.dropFirst()) : digits
            let width = negative ? 9 : 10
            return (negative ? "-" : "") + String(repeating: "0", count: max(0, width - body.count)) + body
        }
    }

    // MARK: Answers

    /// Writes an error answer, checks it, returns its bytes.
    @discardableResult
    mutating func checkAnswer(id: JSONRPCID, error: CachedError, context: String) -> [UInt8] {
        var buffer = ByteBuffer()
        buffer.writeJSONRPCError(id: id, error)
        let bytes = Array(buffer.readableBytesView)
        guard let answer = parseJSON(bytes, context: "\(context) answer") else { return bytes }
        checkEnvelope(answer, id: id, context: context)
        guard case .object(let members) = answer, case .object(let e)? = members["error"] else {
            fail("\(context): no error object")
            return bytes
        }
        if e["code"] != .number(String(error.code.rawValue)) { fail("\(context): code not echoed") }
        if case .string(let m)? = e["message"], sameBytes(m, error.message) {} else { fail("\(context): message not echoed") }
        if e["data"] != error.data { fail("\(context): data not echoed") }
        let extra = Set(e.keys).subtracting(["code", "message", "data"])
        if !extra.isEmpty { fail("\(context): extra error members \(extra)") }
        return bytes
    }

    mutating func checkEnvelope(_ answer: JSONValue, id: JSONRPCID, context: String) {
        guard case .object(let members) = answer else {
            fail("\(context): answer is not an object")
            return
        }
        if members["jsonrpc"] != .string("2.0") { fail("\(context): no jsonrpc 2.0") }
        guard let raw = members["id"], let echoed = JSONRPCID(raw) else {
            fail("\(context): no id")
            return
        }
        if !sameID(echoed, id) { fail("\(context): id \(echoed) echoed for \(id)") }
        if (members["result"] == nil) == (members["error"] == nil) { fail("\(context): needs exactly one of result and error") }
    }

    /// `writeValueMember` round trip: any bytes travel as a string (UTF-8) or base64 and come back.
    mutating func checkValueMember(_ value: [UInt8]) {
        var buffer = ByteBuffer()
        buffer.writeInteger(UInt8(ascii: "{"))
        buffer.writeValueMember(ByteBuffer(bytes: value))
        buffer.writeInteger(UInt8(ascii: "}"))
        guard let parsed = parseJSON(Array(buffer.readableBytesView), context: "value member"),
            case .object(let members) = parsed, case .string(let text)? = members["value"]
        else {
            fail("value member is not {\"value\": string}")
            return
        }
        let encoding: ValueEncoding
        switch members["encoding"] {
        case nil: encoding = .utf8
        case .string("base64")?: encoding = .base64
        default:
            fail("value member has a bad encoding")
            return
        }
        if encoding == .base64 && UTF8Validation.isValid(value) { fail("valid UTF-8 value sent as base64") }
        do {
            let decoded = try ValueEncoding.decode(text, encoding: encoding)
            if Array(decoded.readableBytesView) != value { fail("value does not survive writeValueMember + decode (\(encoding))") }
        } catch {
            fail("written value does not decode: \(error)")
        }
    }
}

/// Whether `text` matches the JSON number grammar (RFC 8259).
func isJSONNumber(_ text: String) -> Bool {
    let b = Array(text.utf8)
    var i = 0
    func digits() -> Int {
        let s = i
        while i < b.count, b[i] >= 0x30, b[i] <= 0x39 { i += 1 }
        return i - s
    }
    if i < b.count, b[i] == UInt8(ascii: "-") { i += 1 }
    guard i < b.count else { return false }
    if b[i] == UInt8(ascii: "0") {
        i += 1
    } else if digits() == 0 {
        return false
    }
    if i < b.count, b[i] == UInt8(ascii: ".") {
        i += 1
        if digits() == 0 { return false }
    }
    if i < b.count, b[i] == UInt8(ascii: "e") || b[i] == UInt8(ascii: "E") {
        i += 1
        if i < b.count, b[i] == UInt8(ascii: "+") || b[i] == UInt8(ascii: "-") { i += 1 }
        if digits() == 0 { return false }
    }
    return i == b.count
}
