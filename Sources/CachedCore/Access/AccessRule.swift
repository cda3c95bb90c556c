import CachedProtocol

/// One `[[access]]` rule of the configuration: which peers it is for (by user and by group) and what they
/// may do. A peer's permissions are the union of every rule that names it (its uid, its primary group or one
/// of its supplementary groups); once any rule exists, a peer that no rule names may only `ping`.
public struct AccessRule: Sendable, Equatable {
    /// Its label in `stats`, `/metrics` and logs (`name = "..."`; default `access[N]`, N from 0 in file order).
    public var name: String
    /// User names or numeric uids (as strings).
    public var users: [String] = []
    /// Group names or numeric gids (as strings).
    public var groups: [String] = []
    /// Keys whose entries the peer may read (`get`).
    public var read: [KeyPattern] = []
    /// Keys whose entries the peer may write (`set`, `delete`, `release`, a lease on a miss; `deleteHash` of a
    /// hash named by the key). Writing implies reading.
    public var write: [KeyPattern] = []
    /// `stats` and `metrics`.
    public var admin = false

    public init(name: String) {
        self.name = name
    }
}

/// A key name in an `[[access]]` rule: `Student` (that key), `Billing*` (every key whose name starts with
/// `Billing`), or `*` (every key). Letters match in either case, as Redis's layout upper-cases key names.
///
/// An exact name matches the same Redis entries as the name itself: `Student`, `student` and `0Student` all
/// name `000STUDENT#...` (pyredis-cache's `zfill(10).upper()`), so a rule on one covers every spelling. A
/// prefix matches the name as sent, upper-cased: a spelling with extra leading zeros is refused (the safe side).
public struct KeyPattern: Sendable, Hashable, CustomStringConvertible {
    enum Kind: Hashable {
        case all
        /// The key's padded, upper-cased name (its Redis layout).
        case exact([UInt8])
        /// The upper-cased prefix.
        case prefix([UInt8])
    }

    /// As written in the configuration.
    public let text: String
    let kind: Kind

    /// Reads a pattern: `*`, a key name, or a key name's beginning followed by `*`.
    public init(_ text: String) throws(ConfigurationError) {
        self.text = text
        if text == "*" {
            kind = .all
            return
        }
        let isPrefix = text.hasSuffix("*")
        let name = isPrefix ? String(text.dropLast()) : text
        guard !name.isEmpty, name.utf8.allSatisfy(KeyLayout.isKeyByte) else {
            throw ConfigurationError("access: \"\(text)\" is not a key name, a key name's beginning followed by *, or *")
        }
        if isPrefix {
            kind = .prefix(name.utf8.map(Self.upper))
        } else {
            guard name.utf8.count > 2 else { throw ConfigurationError("access: \"\(text)\" is shorter than any key name (3 characters)") }
            kind = .exact(Array(KeyLayout.paddedName(name).utf8))
        }
    }

    public var description: String { text }

    @inline(__always)
    static func upper(_ b: UInt8) -> UInt8 { b >= UInt8(ascii: "a") && b <= UInt8(ascii: "z") ? b - 32 : b }

    /// Whether `key` (a validated key name, as a request sends it) is one this pattern names.
    func matches(_ key: String) -> Bool {
        switch kind {
        case .all:
            return true
        case .prefix(let prefix):
            let utf8 = key.utf8
            guard utf8.count >= prefix.count else { return false }
            return zip(utf8, prefix).allSatisfy { Self.upper($0) == $1 }
        case .exact(let padded):
            return Array(KeyLayout.paddedName(key).utf8) == padded
        }
    }
}

extension DaemonConfiguration {
    /// What `cached --check-config` reports of the `[[access]]` rules: `problems` (users and groups that do not
    /// exist: such a name matches nobody) and `notes` (rule keys no `[keys.X]` configures, and `[keys.X]` no rule
    /// names). Empty without rules.
    public func accessReport() -> (problems: [String], notes: [String]) {
        let rules = live.access
        guard !rules.isEmpty else { return ([], []) }
        let problems = AccessRules(rules).unknown
        var notes: [String] = []
        let configured = live.keys.keys.sorted()
        for rule in rules {
            for (what, patterns) in [("read", rule.read), ("write", rule.write)] {
                for pattern in patterns where pattern.kind != .all && !configured.contains(where: pattern.matches) {
                    notes.append("access \(rule.name): \(what) names \(pattern), which no [keys.X] configures")
                }
            }
        }
        for key in configured where !rules.contains(where: { rule in (rule.read + rule.write).contains { $0.matches(key) } }) {
            notes.append("keys.\(key): no access rule names it (no peer may read or write it)")
        }
        return (problems, notes)
    }
}
