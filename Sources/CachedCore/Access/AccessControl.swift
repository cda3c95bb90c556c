import Atomics
import CachedProtocol
import Logging
import NIOConcurrencyHelpers
import NIOCore

/// Per-key access for the whole daemon: the `[[access]]` rules in force (replaced by a reload), what was
/// refused, and a rate-limited log of refusals. Each connection keeps its peer's permissions
/// (``ConnectionAccess``) and works them out again when the rules' generation moved.
final class AccessControl: Sendable {
    private struct Current: Sendable {
        var generation: UInt64
        var rules: AccessRules
    }

    private let current: NIOLockedValueBox<Current>
    /// Moves with every change of the rules; a connection compares it on each request (one atomic load).
    let generation = ManagedAtomic<UInt64>(1)
    private let refusals = NIOLockedValueBox(Refusals())
    let logger: Logger

    struct Refusals {
        /// By the peer's rules, then by key (`(admin)` for admin methods, `(any)` for a peer no rule names).
        var counts: [String: [String: Int]] = [:]
        var total = 0
        /// The rate limit of the log: lines in the current window, and refusals left out of it.
        var windowStart = NIODeadline.uptimeNanoseconds(0)
        var logged = 0
        var suppressed = 0
    }

    /// At most this many refusals are logged per ``logWindow``; the rest are counted in the next line.
    static let logBurst = 10
    static let logWindow = TimeAmount.seconds(10)

    init(rules: [AccessRule], logger: Logger) {
        let compiled = AccessRules(rules)
        for line in compiled.unknown { logger.warning("\(line): the rule cannot match it") }
        self.current = NIOLockedValueBox(Current(generation: 1, rules: compiled))
        self.logger = logger
    }

    /// Whether any rule is configured.
    var isRestricted: Bool { current.withLockedValue { !$0.rules.isEmpty } }

    /// New rules (a reload): open connections use them for their next request. Answers whether they changed.
    @discardableResult
    func update(_ rules: [AccessRule]) -> Bool {
        let compiled = AccessRules(rules)
        for line in compiled.unknown { logger.warning("\(line): the rule cannot match it") }
        return current.withLockedValue { state in
            guard Self.differ(state.rules, compiled) else { return false }
            state.rules = compiled
            state.generation += 1
            generation.store(state.generation, ordering: .releasing)
            return true
        }
    }

    private static func differ(_ a: AccessRules, _ b: AccessRules) -> Bool {
        guard a.rules.count == b.rules.count else { return true }
        return zip(a.rules, b.rules).contains { x, y in
            x.name != y.name || x.uids != y.uids || x.gids != y.gids || x.read != y.read || x.write != y.write || x.admin != y.admin
        }
    }

    /// The permissions of a peer under the rules in force, and their generation.
    func permissions(uid: UInt32, groups: () -> Set<UInt32>) -> (UInt64, Permissions) {
        current.withLockedValue { ($0.generation, $0.rules.permissions(uid: uid, groups: groups)) }
    }

    /// A request was refused: counted, logged (rate-limited), and answered with this error.
    func refuse(_ need: AccessNeed, method: String, peer: PeerCredentials?, permissions: Permissions) -> CachedError {
        let uid = peer.map { "uid \($0.uid)" } ?? "a peer without credentials"
        let label = permissions.label
        let key: String
        let message: String
        switch need {
        case .read(let k), .write(let k):
            key = k
            message = "\(uid) may not \(need.verb) \(k)"
        case .admin:
            key = "(admin)"
            message = "\(uid) may not call \(method) (it needs admin)"
        case .nothing, .anyRule:
            key = "(any)"
            message = "\(uid) may not call \(method) (no access rule names it)"
        }
        let now = NIODeadline.now()
        let (log, suppressed) = refusals.withLockedValue { r -> (Bool, Int) in
            r.counts[label, default: [:]][key, default: 0] += 1
            r.total += 1
            if now - r.windowStart >= Self.logWindow {
                r.windowStart = now
                r.logged = 0
            }
            guard r.logged < Self.logBurst else {
                r.suppressed += 1
                return (false, 0)
            }
            r.logged += 1
            defer { r.suppressed = 0 }
            return (true, r.suppressed)
        }
        if log {
            var metadata: Logger.Metadata = ["method": "\(method)", "rule": "\(label)", "key": "\(key)"]
            if let peer {
                metadata["pid"] = "\(peer.pid)"
                metadata["uid"] = "\(peer.uid)"
                metadata["gid"] = "\(peer.gid)"
            }
            if suppressed > 0 { metadata["refusals_not_logged_before"] = "\(suppressed)" }
            logger.warning("request refused: \(message)", metadata: metadata)
        }
        var data: [String: JSONValue] = ["method": .string(method), "need": .string(need.verb)]
        if let peer { data["uid"] = .number(String(peer.uid)) }
        if case .read(let k) = need { data["key"] = .string(k) }
        if case .write(let k) = need { data["key"] = .string(k) }
        return CachedError(.accessRefused, message, data: .object(data))
    }

    /// `stats.access`: the rules in force and what was refused, by the peer's rules and key.
    var status: JSONValue {
        let rules = current.withLockedValue { $0.rules.rules.map(\.name) }
        let r = refusals.withLockedValue { $0 }
        return .object([
            "rules": .array(rules.map(JSONValue.string)),
            "refused": .number(String(r.total)),
            "refusedBy": .object(r.counts.mapValues { keys in .object(keys.mapValues { .number(String($0)) }) }),
        ])
    }
}

/// One connection's peer and its permissions, worked out at accept and again when the rules change.
///
/// Confined to the connection's event loop, as its channel handler's fields are (the dispatcher checks each
/// request there, before anything else): the hit path's check is an atomic load of the rules' generation and
/// a comparison with the last key asked about, with no lock and no copy of the permissions. Only
/// ``mayRead(fromAnyThread:)`` (tracking notifications, sent from other loops) takes the locked copy.
final class ConnectionAccess: @unchecked Sendable {
    /// From `SO_PEERCRED` at accept (nil: none could be read; with rules, such a peer may only `ping`).
    let peer: PeerCredentials?
    /// Its primary group and the supplementary groups of its user, looked up (in the user database) the first
    /// time a rule that names groups needs them.
    private let groupsFound = NIOLockedValueBox<Set<UInt32>?>(nil)
    private let control: AccessControl
    private let eventLoop: any EventLoop
    /// The same permissions for other threads (tracking notifications), with their generation.
    private let shared: NIOLockedValueBox<(UInt64, Permissions)>

    // On `eventLoop` only (see the type's documentation); never handed out `inout`, so no run-time
    // exclusivity checks are needed.
    @exclusivity(unchecked) private var generation: UInt64
    @exclusivity(unchecked) private var permissions: Permissions
    /// The last key asked about and its answer (a connection mostly asks about the same few keys).
    @exclusivity(unchecked) private var lastKey: String?
    @exclusivity(unchecked) private var lastAccess: KeyAccess = .none

    init(peer: PeerCredentials?, control: AccessControl, eventLoop: any EventLoop) {
        self.peer = peer
        self.control = control
        self.eventLoop = eventLoop
        let groupsFound = self.groupsFound
        let groups = { Self.groups(of: peer, found: groupsFound) }
        let (generation, permissions) =
            peer.map { control.permissions(uid: $0.uid, groups: groups) }
            ?? (control.generation.load(ordering: .acquiring), Self.withoutCredentials(control))
        self.generation = generation
        self.permissions = permissions
        self.shared = NIOLockedValueBox((generation, permissions))
    }

    /// The peer's primary and supplementary gids (looked up once).
    private static func groups(of peer: PeerCredentials?, found: NIOLockedValueBox<Set<UInt32>?>) -> Set<UInt32> {
        guard let peer else { return [] }
        if let known = found.withLockedValue({ $0 }) { return known }
        let groups = ConnectionGate.groups(ofUID: peer.uid, primary: peer.gid).union([peer.gid])
        found.withLockedValue { $0 = groups }
        return groups
    }

    private var groups: () -> Set<UInt32> {
        let (peer, found) = (self.peer, groupsFound)
        return { Self.groups(of: peer, found: found) }
    }

    /// A peer whose credentials could not be read: everything without rules, only `ping` with them.
    private static func withoutCredentials(_ control: AccessControl) -> Permissions {
        control.isRestricted ? Permissions(restricted: true, rules: [], read: [], write: [], admin: false) : .unrestricted
    }

    /// The permissions under the rules in force (worked out again after a reload changed them).
    private func refreshed() -> Permissions {
        eventLoop.assertInEventLoop()
        let now = control.generation.load(ordering: .relaxed)
        if generation != now {
            (generation, permissions) =
                peer.map { control.permissions(uid: $0.uid, groups: groups) }
                ?? (now, Self.withoutCredentials(control))
            lastKey = nil
        }
        return permissions
    }

    /// What the peer may do with `key`'s entries now.
    @inline(__always)
    func access(_ key: String) -> KeyAccess {
        if generation == control.generation.load(ordering: .relaxed), lastKey == key { return lastAccess }
        return accessWorkedOut(key)
    }

    @inline(never)
    private func accessWorkedOut(_ key: String) -> KeyAccess {
        let access = refreshed().access(key)
        lastKey = key
        lastAccess = access
        return access
    }

    /// Nil when `need` is allowed; else the refusal to answer (counted and logged).
    func check(_ need: AccessNeed, method: String) -> CachedError? {
        let allowed: Bool
        switch need {
        case .nothing: return nil
        case .read(let key): allowed = access(key) >= .read
        case .write(let key): allowed = access(key) >= .write
        case .admin:
            let p = refreshed()
            allowed = !p.restricted || p.admin
        case .anyRule:
            let p = refreshed()
            allowed = !p.restricted || !p.rules.isEmpty
        }
        return allowed ? nil : refusal(need, method: method)
    }

    /// The refusal of `need` (counted and logged).
    func refusal(_ need: AccessNeed, method: String) -> CachedError {
        control.refuse(need, method: method, peer: peer, permissions: refreshed())
    }

    /// Whether a notification may name entries of `key` (from any thread, under the rules in force).
    func mayRead(fromAnyThread key: String) -> Bool {
        let generation = control.generation.load(ordering: .acquiring)
        let permissions = shared.withLockedValue { shared -> Permissions in
            if shared.0 != generation {
                shared =
                    peer.map { control.permissions(uid: $0.uid, groups: groups) }
                    ?? (generation, Self.withoutCredentials(control))
            }
            return shared.1
        }
        return permissions.access(key) >= .read
    }
}
