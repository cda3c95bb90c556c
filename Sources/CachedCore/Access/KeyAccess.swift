import CachedProtocol

#if canImport(Glibc)
import Glibc
#endif

/// What a peer may do with one key's entries.
enum KeyAccess: UInt8, Sendable, Comparable {
    case none = 0
    case read = 1
    /// Read and write.
    case write = 2

    static func < (a: KeyAccess, b: KeyAccess) -> Bool { a.rawValue < b.rawValue }
}

/// What a request needs, declared by its method (``MethodHandler``).
enum AccessNeed: Sendable, Equatable {
    /// Nothing (`ping`): any peer allowed to connect.
    case nothing
    /// A peer that some rule names (`track`, `notifications`: they only ever name entries it may read).
    case anyRule
    case read(key: String)
    case write(key: String)
    /// `stats`, `metrics`.
    case admin

    /// The word of a refusal's message ("may not read Student").
    var verb: String {
        switch self {
        case .nothing, .anyRule: "use"
        case .read: "read"
        case .write: "write"
        case .admin: "call"
        }
    }
}

/// The `[[access]]` rules, with users and groups resolved to numbers (at start and at each reload).
struct AccessRules: Sendable {
    struct Rule: Sendable {
        var name: String
        var uids: Set<UInt32>
        var gids: Set<UInt32>
        var read: [KeyPattern]
        var write: [KeyPattern]
        var admin: Bool
    }

    let rules: [Rule]
    /// Names and numbers no user or group has (they match nobody), for `--check-config` and the log.
    let unknown: [String]

    init(_ configured: [AccessRule]) {
        var unknown: [String] = []
        rules = configured.map { rule in
            var uids = Set<UInt32>()
            for user in rule.users {
                if let uid = Self.userID(user) { uids.insert(uid) } else { unknown.append("access \(rule.name): no user \(user)") }
            }
            var gids = Set<UInt32>()
            for group in rule.groups {
                if let gid = ConnectionGate.groupID(group) { gids.insert(gid) } else { unknown.append("access \(rule.name): no group \(group)") }
            }
            return Rule(name: rule.name, uids: uids, gids: gids, read: rule.read, write: rule.write, admin: rule.admin)
        }
        self.unknown = unknown
    }

    /// Whether any rule is configured (without one, every peer that may connect may do everything).
    var isEmpty: Bool { rules.isEmpty }

    /// The permissions of a peer with `uid` and `groups` (its primary and supplementary gids; asked for only
    /// when some rule names groups: they come from the user database).
    func permissions(uid: UInt32, groups: () -> Set<UInt32>) -> Permissions {
        guard !rules.isEmpty else { return .unrestricted }
        let gids = rules.contains { !$0.gids.isEmpty } ? groups() : []
        let matching = rules.filter { $0.uids.contains(uid) || !$0.gids.isDisjoint(with: gids) }
        return Permissions(
            restricted: true, rules: matching.map(\.name), read: matching.flatMap(\.read), write: matching.flatMap(\.write),
            admin: matching.contains { $0.admin })
    }

    /// A user name or number as a uid.
    static func userID(_ name: String) -> UInt32? {
        if let n = UInt32(name) { return n }
        var pwd = passwd()
        var result: UnsafeMutablePointer<passwd>?
        var buffer = [CChar](repeating: 0, count: 4096)
        guard getpwnam_r(name, &pwd, &buffer, buffer.count, &result) == 0, result != nil else { return nil }
        return pwd.pw_uid
    }
}

/// What one peer may do: the union of the rules that name it.
struct Permissions: Sendable, Equatable {
    /// False: no rule is configured, everything is allowed.
    var restricted: Bool
    /// The names of the rules that name the peer (empty: none, it may only `ping`).
    var rules: [String]
    var read: [KeyPattern]
    var write: [KeyPattern]
    var admin: Bool

    static let unrestricted = Permissions(restricted: false, rules: [], read: [], write: [], admin: true)

    /// What the peer may do with `key`'s entries.
    func access(_ key: String) -> KeyAccess {
        guard restricted else { return .write }
        if write.contains(where: { $0.matches(key) }) { return .write }
        if read.contains(where: { $0.matches(key) }) { return .read }
        return .none
    }

    /// The label a refusal is counted under: the peer's rules, `(none)` when no rule names it.
    var label: String { rules.isEmpty ? "(none)" : rules.joined(separator: "+") }
}
