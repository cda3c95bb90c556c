#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A `get` request in its common shape, read in one pass over the line without building a JSON tree.
///
/// This is the daemon's hot path: most lines a busy host sends are `get`s of an entry that is in memory.
/// ``parse(_:)`` accepts a strict subset of what ``JSONRPCMessage/parse(_:maxDepth:maxBatch:)`` accepts
/// and returns nil for everything else, which then takes the general path. The subset: one object with
/// exactly the members `jsonrpc` (`"2.0"`), `id` (an integer or a plain string), `method` (`"get"`) and
/// `params`, an object of `key`, `identity` and optionally `hashKey` with `hashId`, each a plain string or
/// an integer, and optionally `timeout`, a number without exponent; any order, any JSON whitespace. A plain string is printable ASCII without `"` or `\`, so
/// it needs neither unescaping nor UTF-8 validation. Everything else (escapes, other bytes, fractions,
/// exponents, nulls, `args`, duplicate or unknown members, values that fail validation) returns nil,
/// never an error: the general path gives the same answer it always did.
///
/// For a line it accepts, the result is exactly what the general path would have produced
/// (a request with this id and `GetParams` equal to ``params``); the tests and the fuzz check assert it.
public struct FastGetRequest: Sendable, Hashable {
    /// The request's id.
    public var id: JSONRPCID
    /// The validated parameters.
    public var params: GetParams
    /// The request's `timeout` in seconds (validated by ``RequestTimeout``), if it names one.
    public var timeout: Double?

    /// Parses one line (without its newline); nil when the line is not in the fast path's subset.
    public static func parse(_ bytes: UnsafeRawBufferPointer) -> FastGetRequest? {
        var scanner = Scanner(bytes: bytes)
        if let canonical = scanner.canonical() { return canonical }
        scanner.index = 0
        return scanner.request()
    }
}

// MARK: - Scanner

extension FastGetRequest {
    /// A byte range of the line.
    struct Span {
        var start: Int
        var end: Int
        var count: Int { end - start }
    }

    /// A scalar value: a plain string (the span is inside the quotes) or an integer (the span is its text).
    enum Scalar {
        case string(Span)
        case integer(Span)
    }

    struct Scanner {
        let bytes: UnsafeRawBufferPointer
        var index = 0

        init(bytes: UnsafeRawBufferPointer) { self.bytes = bytes }

        mutating func request() -> FastGetRequest? {
            skipWhitespace()
            guard take(UInt8(ascii: "{")) else { return nil }
            var seen: UInt8 = 0
            var id: Scalar?
            var key: Span?
            var identity: Scalar?
            var hashKey: Span?
            var hashId: Scalar?
            var timeout: Span?
            var first = true
            while true {
                skipWhitespace()
                if take(UInt8(ascii: "}")) { break }
                if !first {
                    guard take(UInt8(ascii: ",")) else { return nil }
                    skipWhitespace()
                }
                first = false
                guard let name = plainString() else { return nil }
                guard colon() else { return nil }
                let bit: UInt8
                if equals(name, "jsonrpc") {
                    bit = 1
                    guard case .string(let v)? = scalar(), equals(v, "2.0") else { return nil }
                } else if equals(name, "method") {
                    bit = 2
                    guard case .string(let v)? = scalar(), equals(v, "get") else { return nil }
                } else if equals(name, "id") {
                    bit = 4
                    guard let v = scalar() else { return nil }
                    id = v
                } else if equals(name, "params") {
                    bit = 8
                    guard params(key: &key, identity: &identity, hashKey: &hashKey, hashId: &hashId, timeout: &timeout) else { return nil }
                } else {
                    return nil
                }
                guard seen & bit == 0 else { return nil }  // a duplicate member: the general path refuses it
                seen |= bit
            }
            skipWhitespace()
            guard index == bytes.count, seen == 15, let id, let key, let identity else { return nil }
            guard validKey(key), let identityValue = self.identity(identity) else { return nil }
            var hash: HashAddress?
            switch (hashKey, hashId) {
            case (nil, nil):
                break
            case (let hashKey?, let hashId?):
                guard validKey(hashKey), let hashIdValue = self.identity(hashId) else { return nil }
                hash = HashAddress(hashKey: string(hashKey), hashId: hashIdValue)
            default:
                return nil
            }
            let requestID: JSONRPCID
            switch id {
            case .string(let span): requestID = .string(string(span))
            case .integer(let span): requestID = .number(string(span))
            }
            var seconds: Double?
            if let timeout {
                guard let value = self.timeout(timeout) else { return nil }
                seconds = value
            }
            let address = EntryAddress(key: string(key), identity: identityValue, hash: hash)
            return FastGetRequest(id: requestID, params: GetParams(address: address), timeout: seconds)
        }

        /// The line exactly as the clients write it (the Swift client, the Python shim, `cached-bench`):
        /// `{"jsonrpc":"2.0","id":ID,"method":"get","params":{"key":"K","identity":I}}`, optionally with
        /// `,"hashKey":"H","hashId":J` after the identity and then `,"timeout":T`, no whitespace. Matched by comparing the fixed
        /// parts whole instead of reading member by member; anything else is nil, and ``request()`` reads it.
        /// The result is the one ``request()`` gives for the same line.
        mutating func canonical() -> FastGetRequest? {
            guard literal("{\"jsonrpc\":\"2.0\",\"id\":"), let id = scalar(),
                literal(",\"method\":\"get\",\"params\":{\"key\":"), let key = plainString(),
                literal(",\"identity\":"), let identity = scalar()
            else { return nil }
            var hash: HashAddress?
            if literal(",\"hashKey\":") {
                guard let hashKey = plainString(), literal(",\"hashId\":"), let hashId = scalar(), validKey(hashKey),
                    let hashIdValue = self.identity(hashId)
                else { return nil }
                hash = HashAddress(hashKey: string(hashKey), hashId: hashIdValue)
            }
            var seconds: Double?
            if !literal("}}") {
                // Only a line that names its timeout goes on: `,"timeout":T}}`.
                guard literal(",\"timeout\":"), let span = decimal(), let value = timeout(span), literal("}}") else { return nil }
                seconds = value
            }
            guard index == bytes.count, validKey(key), let identityValue = self.identity(identity) else { return nil }
            let requestID: JSONRPCID
            switch id {
            case .string(let span): requestID = .string(string(span))
            case .integer(let span): requestID = .number(string(span))
            }
            return FastGetRequest(
                id: requestID, params: GetParams(address: EntryAddress(key: string(key), identity: identityValue, hash: hash)),
                timeout: seconds)
        }

        /// Takes `text` if the line continues with it.
        mutating func literal(_ text: StaticString) -> Bool {
            let count = text.utf8CodeUnitCount
            guard bytes.count - index >= count, memcmp(bytes.baseAddress! + index, text.utf8Start, count) == 0 else { return false }
            index += count
            return true
        }

        /// The params object; false when it is outside the subset.
        mutating func params(
            key: inout Span?, identity: inout Scalar?, hashKey: inout Span?, hashId: inout Scalar?, timeout: inout Span?
        ) -> Bool {
            guard take(UInt8(ascii: "{")) else { return false }
            var first = true
            while true {
                skipWhitespace()
                if take(UInt8(ascii: "}")) { return true }
                if !first {
                    guard take(UInt8(ascii: ",")) else { return false }
                    skipWhitespace()
                }
                first = false
                guard let name = plainString(), colon() else { return false }
                if equals(name, "timeout") {
                    guard timeout == nil, let span = decimal() else { return false }
                    timeout = span
                    continue
                }
                guard let value = scalar() else { return false }
                if equals(name, "key") {
                    guard key == nil, case .string(let s) = value else { return false }
                    key = s
                } else if equals(name, "identity") {
                    guard identity == nil else { return false }
                    identity = value
                } else if equals(name, "hashKey") {
                    guard hashKey == nil, case .string(let s) = value else { return false }
                    hashKey = s
                } else if equals(name, "hashId") {
                    guard hashId == nil else { return false }
                    hashId = value
                } else {
                    return false
                }
            }
        }

        // MARK: Tokens

        mutating func skipWhitespace() {
            while index < bytes.count {
                switch bytes[index] {
                case UInt8(ascii: " "), UInt8(ascii: "\t"), UInt8(ascii: "\n"), UInt8(ascii: "\r"): index += 1
                default: return
                }
            }
        }

        mutating func take(_ byte: UInt8) -> Bool {
            guard index < bytes.count, bytes[index] == byte else { return false }
            index += 1
            return true
        }

        mutating func colon() -> Bool {
            skipWhitespace()
            guard take(UInt8(ascii: ":")) else { return false }
            skipWhitespace()
            return true
        }

        /// `"` printable ASCII other than `"` and `\` `"`; the span excludes the quotes.
        mutating func plainString() -> Span? {
            guard take(UInt8(ascii: "\"")) else { return nil }
            let start = index
            let count = bytes.count
            guard let base = bytes.baseAddress?.assumingMemoryBound(to: UInt8.self) else { return nil }
            var i = start
            while i < count {
                let b = base[i]
                if b == UInt8(ascii: "\"") {
                    index = i + 1
                    return Span(start: start, end: i)
                }
                // One unsigned compare for 0x20...0x7E, then the backslash.
                guard b &- 0x20 < 0x5F, b != UInt8(ascii: "\\") else { return nil }
                i += 1
            }
            return nil
        }

        /// `-?(0|[1-9][0-9]*)` not followed by a fraction or an exponent (written out: it reads every id
        /// and identity of the hot path, and the general ``number(fraction:)`` costs it a few instructions).
        mutating func integer() -> Span? {
            let start = index
            _ = take(UInt8(ascii: "-"))
            guard index < bytes.count else { return nil }
            if bytes[index] == UInt8(ascii: "0") {
                index += 1
            } else {
                guard isDigit(bytes[index]) else { return nil }
                while index < bytes.count, isDigit(bytes[index]) { index += 1 }
            }
            if index < bytes.count {
                switch bytes[index] {
                case UInt8(ascii: "."), UInt8(ascii: "e"), UInt8(ascii: "E"): return nil
                default: if isDigit(bytes[index]) { return nil }  // a leading zero followed by digits
                }
            }
            return Span(start: start, end: index)
        }

        /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?`, not followed by an exponent or another digit.
        mutating func decimal() -> Span? {
            number(fraction: true)
        }

        /// A JSON number without exponent (and, unless `fraction`, without fraction); nil for anything else.
        @inline(__always)
        mutating func number(fraction: Bool) -> Span? {
            let start = index
            _ = take(UInt8(ascii: "-"))
            guard index < bytes.count else { return nil }
            if bytes[index] == UInt8(ascii: "0") {
                index += 1
            } else {
                guard isDigit(bytes[index]) else { return nil }
                while index < bytes.count, isDigit(bytes[index]) { index += 1 }
            }
            if fraction, take(UInt8(ascii: ".")) {
                guard index < bytes.count, isDigit(bytes[index]) else { return nil }
                while index < bytes.count, isDigit(bytes[index]) { index += 1 }
            }
            if index < bytes.count {
                switch bytes[index] {
                case UInt8(ascii: "."), UInt8(ascii: "e"), UInt8(ascii: "E"): return nil
                default: if isDigit(bytes[index]) { return nil }  // a leading zero followed by digits
                }
            }
            return Span(start: start, end: index)
        }

        /// A timeout the general path accepts too (``RequestTimeout/validate(_:method:)``); nil otherwise.
        func timeout(_ span: Span) -> Double? {
            guard let seconds = Double(string(span)) else { return nil }
            return try? RequestTimeout.validate(seconds, method: "get")
        }

        mutating func scalar() -> Scalar? {
            guard index < bytes.count else { return nil }
            if bytes[index] == UInt8(ascii: "\"") { return plainString().map(Scalar.string) }
            return integer().map(Scalar.integer)
        }

        func isDigit(_ b: UInt8) -> Bool { b >= UInt8(ascii: "0") && b <= UInt8(ascii: "9") }

        func equals(_ span: Span, _ literal: StaticString) -> Bool {
            guard span.count == literal.utf8CodeUnitCount else { return false }
            let literalBytes = literal.utf8Start
            for i in 0..<span.count where bytes[span.start + i] != literalBytes[i] { return false }
            return true
        }

        func string(_ span: Span) -> String {
            String(decoding: UnsafeRawBufferPointer(rebasing: bytes[span.start..<span.end]), as: UTF8.self)
        }

        // MARK: Validation (the same rules as KeyLayout and Identity; a failure goes to the general path for its error)

        func validKey(_ span: Span) -> Bool {
            guard span.count > 2, span.count <= KeyLayout.maxKeyLength else { return false }
            for i in span.start..<span.end where !KeyLayout.isKeyByte(bytes[i]) { return false }
            return true
        }

        /// A plain string of 1 to 256 bytes (printable ASCII has no control characters), or an integer.
        func identity(_ scalar: Scalar) -> Identity? {
            switch scalar {
            case .string(let span):
                guard span.count >= 1, span.count <= Identity.maxStringBytes else { return nil }
                return .string(string(span))
            case .integer(let span):
                // JSON has no leading zeros, so the digits are canonical except for "-0".
                if span.count == 2, bytes[span.start] == UInt8(ascii: "-"), bytes[span.start + 1] == UInt8(ascii: "0") {
                    return .integer("0")
                }
                return .integer(string(span))
            }
        }
    }
}
