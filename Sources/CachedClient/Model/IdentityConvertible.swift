import CachedProtocol

// MARK: - Identities

/// A value usable as an entry's `identity` or a `hashId`: integers travel as JSON integers
/// (`Student`/`12` is `000STUDENT#0000000012` in Redis), strings verbatim (`000STUDENT#alice`).
///
/// `Int` and the other fixed-width integers, `String`, `Substring` and `Identity` conform.
public protocol IdentityConvertible: Sendable {
    /// The identity as the protocol target models it.
    var cachedIdentity: Identity { get }
}

extension Identity: IdentityConvertible {
    /// The identity itself.
    public var cachedIdentity: Identity { self }
}

extension String: IdentityConvertible {
    /// A string identity, used verbatim.
    public var cachedIdentity: Identity { .string(self) }
}

extension Substring: IdentityConvertible {
    /// A string identity, used verbatim.
    public var cachedIdentity: Identity { .string(String(self)) }
}

extension Int: IdentityConvertible {
    /// An integer identity.
    public var cachedIdentity: Identity { .integer(String(self)) }
}

extension Int8: IdentityConvertible {
    /// An integer identity.
    public var cachedIdentity: Identity { .integer(String(self)) }
}

extension Int16: IdentityConvertible {
    /// An integer identity.
    public var cachedIdentity: Identity { .integer(String(self)) }
}

extension Int32: IdentityConvertible {
    /// An integer identity.
    public var cachedIdentity: Identity { .integer(String(self)) }
}

extension Int64: IdentityConvertible {
    /// An integer identity.
    public var cachedIdentity: Identity { .integer(String(self)) }
}

extension UInt: IdentityConvertible {
    /// An integer identity.
    public var cachedIdentity: Identity { .integer(String(self)) }
}

extension UInt8: IdentityConvertible {
    /// An integer identity.
    public var cachedIdentity: Identity { .integer(String(self)) }
}

extension UInt16: IdentityConvertible {
    /// An integer identity.
    public var cachedIdentity: Identity { .integer(String(self)) }
}

extension UInt32: IdentityConvertible {
    /// An integer identity.
    public var cachedIdentity: Identity { .integer(String(self)) }
}

extension UInt64: IdentityConvertible {
    /// An integer identity.
    public var cachedIdentity: Identity { .integer(String(self)) }
}

extension Identity {
    /// Parses a command-line identity: text that looks like a JSON integer (`12`, `-5`, `0`; no
    /// leading zeros) is an integer, anything else (or everything, with `forceString`) a string.
    public static func parse(_ text: String, forceString: Bool = false) -> Identity {
        if forceString { return .string(text) }
        var digits = Substring(text)
        if digits.first == "-" { digits = digits.dropFirst() }
        let isInteger =
            !digits.isEmpty && digits.utf8.allSatisfy { $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }
            && (digits == "0" || digits.first != "0")
        guard isInteger else { return .string(text) }
        return .integer(text == "-0" ? "0" : text)
    }
}
