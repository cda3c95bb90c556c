/// Reads named parameters, rejecting missing, mistyped and unknown ones with -32602.
public struct ParamReader {
    let members: [String: JSONValue]
    /// Names asked for (a handful: a linear scan beats hashing) and how many of them were present.
    var asked: [String] = []
    var present = 0
    let method: String

    /// - Parameter params: a request's `params` (absent is treated as `{}`; an array is rejected).
    public init(_ params: JSONValue?, method: String) throws(CachedError) {
        self.method = method
        switch params {
        case nil: self.members = [:]
        case .object(let members)?: self.members = members
        case let other?:
            throw .invalidParams("\(method): params must be an object of named parameters, got \(other.typeName)")
        }
        asked.reserveCapacity(8)
        // Every method takes `timeout`: checked here, its value read by ``RequestTimeout``.
        if try RequestTimeout.read(params, method: method) != nil {
            present += 1
        }
        asked.append(RequestTimeout.name)
    }

    public mutating func optional(_ name: String) -> JSONValue? {
        asked.append(name)
        guard let index = members.index(forKey: name) else { return nil }
        let (spelled, value) = members[index]
        // By bytes: `String` == is canonical equivalence ("hash\u{212A}ey", with a KELVIN SIGN, == "hashKey");
        // a parameter must be spelled exactly, anything else stays unknown for `finish()`.
        guard spelled.utf8.elementsEqual(name.utf8) else { return nil }
        present += 1
        return value == .null ? nil : value
    }

    public mutating func required(_ name: String) throws(CachedError) -> JSONValue {
        guard let value = optional(name) else {
            throw .invalidParams("\(method): missing parameter \"\(name)\"")
        }
        return value
    }

    public mutating func string(_ name: String) throws(CachedError) -> String? {
        guard let value = optional(name) else { return nil }
        guard case .string(let s) = value else {
            throw .invalidParams("\(method): \"\(name)\" must be a string, got \(value.typeName)")
        }
        return s
    }

    public mutating func requiredString(_ name: String) throws(CachedError) -> String {
        guard let s = try string(name) else { throw .invalidParams("\(method): missing parameter \"\(name)\"") }
        return s
    }

    public mutating func bool(_ name: String) throws(CachedError) -> Bool? {
        guard let value = optional(name) else { return nil }
        guard case .bool(let b) = value else {
            throw .invalidParams("\(method): \"\(name)\" must be true or false, got \(value.typeName)")
        }
        return b
    }

    /// A non-negative, finite number of seconds.
    public mutating func seconds(_ name: String, max: Double = 1e9) throws(CachedError) -> Double? {
        guard let value = optional(name) else { return nil }
        guard case .number(let raw) = value, let seconds = Double(raw), seconds.isFinite, seconds >= 0, seconds <= max else {
            throw .invalidParams("\(method): \"\(name)\" must be a number of seconds from 0 to \(Int(max))")
        }
        return seconds
    }

    /// Fails if a parameter was given that the method does not take.
    public func finish() throws(CachedError) {
        guard present != members.count else { return }
        for name in members.keys.sorted() where !asked.contains(where: { $0.utf8.elementsEqual(name.utf8) }) {
            throw .invalidParams("\(method): unknown parameter \"\(name)\"")
        }
    }
}
