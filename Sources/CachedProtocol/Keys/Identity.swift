/// The identity of an entry under a key (pyredis-cache's `identity`, or a `hashId`).
///
/// An integer is formatted like Python's `"%010d"` (any size: the JSON number's digits are used as
/// they are, never rounded through a floating-point type). A string is used verbatim; it must be 1 to
/// 256 bytes of UTF-8 with no control characters.
public enum Identity: Sendable, Hashable, CustomStringConvertible {
    /// An integer, as its decimal digits with an optional leading `-` (canonical: no leading zeros, no `-0`).
    case integer(String)
    /// A string identity, used verbatim.
    case string(String)

    /// The most bytes a string identity may have.
    public static let maxStringBytes = 256

    /// Validates a JSON value as an identity.
    public init(json value: JSONValue, name: String) throws(CachedError) {
        switch value {
        case .number(let raw):
            var digits = Substring(raw)
            var negative = false
            if digits.first == "-" {
                negative = true
                digits = digits.dropFirst()
            }
            guard !digits.isEmpty, digits.utf8.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }) else {
                throw .invalidParams("\"\(name)\" must be an integer or a string, got \(raw)")
            }
            if digits == "0" { negative = false }
            self = .integer(negative ? "-" + digits : String(digits))
        case .string(let s):
            guard !s.isEmpty, s.utf8.count <= Identity.maxStringBytes else {
                throw .invalidParams("\"\(name)\" must be 1 to \(Identity.maxStringBytes) bytes long")
            }
            guard !s.unicodeScalars.contains(where: { $0.value < 0x20 || (0x7F...0x9F).contains($0.value) }) else {
                throw .invalidParams("\"\(name)\" must not contain control characters")
            }
            self = .string(s)
        default:
            throw .invalidParams("\"\(name)\" must be an integer or a string, got \(value.typeName)")
        }
    }

    /// The identity as it appears after the `#` of a Redis key name.
    public var formatted: String {
        switch self {
        case .string(let s):
            return s
        case .integer(let digits):
            // Python "%010d": total width 10 including the sign, zero padding after the sign.
            if digits.hasPrefix("-") {
                let body = digits.dropFirst()
                return "-" + String(repeating: "0", count: max(0, 9 - body.count)) + body
            }
            return String(repeating: "0", count: max(0, 10 - digits.count)) + digits
        }
    }

    public var jsonValue: JSONValue {
        switch self {
        case .integer(let digits): .number(digits)
        case .string(let s): .string(s)
        }
    }

    public var description: String { formatted }
}
