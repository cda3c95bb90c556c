import CachedProtocol
import Logging
import NIOCore
import NIOEmbedded
import Testing

@testable import CachedCore

#if canImport(Glibc)
import Glibc
#endif

/// The `[[access]]` rules without sockets: patterns, permissions, the configuration file, what each method
/// needs, and a connection's permissions across a reload.
@Suite("Per-key access")
struct AccessTests {
    @Test func anExactNameMatchesEverySpellingOfTheSameRedisEntryAndNothingElse() throws {
        let student = try KeyPattern("Student")
        for spelling in ["Student", "student", "STUDENT", "0Student", "000Student"] { #expect(student.matches(spelling), "\(spelling)") }
        for other in ["Students", "StudentX", "Teacher", "0000000000Student"] { #expect(!student.matches(other), "\(other)") }
        let bill = try KeyPattern("Bill*")
        #expect(bill.matches("Billing") && bill.matches("bill") && bill.matches("BILLS"))
        #expect(!bill.matches("Bil") && !bill.matches("0Billing") && !bill.matches("Student"))
        #expect(try KeyPattern("*").matches("Anything"))
        for bad in ["", "*x", "Stu dent", "no*where", "ab", "é*"] {
            #expect(throws: ConfigurationError.self) { try KeyPattern(bad) }
        }
    }

    static func rules() throws -> [AccessRule] {
        var readers = AccessRule(name: "readers")
        readers.users = ["4242"]
        readers.read = [try KeyPattern("Student")]
        var billing = AccessRule(name: "billing")
        billing.groups = ["4343"]
        billing.write = [try KeyPattern("Class")]
        billing.read = [try KeyPattern("Bill*")]
        var ops = AccessRule(name: "ops")
        ops.users = ["4444"]
        ops.admin = true
        return [readers, billing, ops]
    }

    @Test func permissionsAreTheUnionOfTheRulesThatNameThePeer() throws {
        let rules = AccessRules(try Self.rules())
        let reader = rules.permissions(uid: 4242, groups: { [1] })
        #expect(reader.rules == ["readers"] && reader.access("Student") == .read && reader.access("Class") == .none && !reader.admin)
        let both = rules.permissions(uid: 4242, groups: { [4343] })
        #expect(both.rules == ["readers", "billing"] && both.label == "readers+billing")
        #expect(both.access("Student") == .read && both.access("Class") == .write && both.access("Billing") == .read)
        let nobody = rules.permissions(uid: 1, groups: { [1] })
        #expect(nobody.rules.isEmpty && nobody.label == "(none)" && nobody.access("Student") == .none)
        #expect(rules.permissions(uid: 4444, groups: { [] }).admin)
        // Without any rule, everything is allowed (the socket's mode and allow_uids are the gate).
        let open = AccessRules([]).permissions(uid: 1, groups: { [] })
        #expect(!open.restricted && open.access("Anything") == .write && open.admin)
    }

    @Test func theConfigurationFileReadsRulesAndRefusesMistakes() throws {
        let configuration = try DaemonConfiguration(toml: """
            [[access]]
            name = "web"
            users = ["www-data", 33]
            groups = ["billing"]
            read = ["Student", "Bill*"]
            write = ["Session"]
            admin = false

            [[access]]
            users = ["root"]
            admin = true
            """)
        let access = configuration.live.access
        #expect(access.map(\.name) == ["web", "access[1]"])
        #expect(access[0].users == ["www-data", "33"] && access[0].groups == ["billing"])
        #expect(access[0].read.map(\.text) == ["Student", "Bill*"] && access[0].write.map(\.text) == ["Session"] && !access[0].admin)
        #expect(access[1].admin)
        for bad in [
            "[[access]]\nread = [\"Student\"]",  // for nobody
            "[[access]]\nusers = [\"root\"]\nread = [\"Stu dent\"]",
            "[[access]]\nusers = [\"root\"]\nreed = [\"Student\"]",  // a typo
            "[[access]]\nname = \"a\"\nusers = [\"root\"]\n[[access]]\nname = \"a\"\nusers = [\"root\"]",
            "access = 1",
        ] {
            #expect(throws: ConfigurationError.self, "\(bad)") { try DaemonConfiguration(toml: bad) }
        }
    }

    @Test func checkConfigReportsUnknownNamesAndKeysNoRuleNames() throws {
        let configuration = try DaemonConfiguration(toml: """
            [keys.Student]
            ttl = 60
            [keys.Class]
            ttl = 60
            [[access]]
            name = "web"
            users = ["cached-no-such-user", "0"]
            groups = ["cached-no-such-group"]
            read = ["Student", "Teacher*"]
            """)
        let (problems, notes) = configuration.accessReport()
        #expect(problems == ["access web: no user cached-no-such-user", "access web: no group cached-no-such-group"])
        #expect(notes == ["access web: read names Teacher*, which no [keys.X] configures", "keys.Class: no access rule names it (no peer may read or write it)"])
        #expect(DaemonConfiguration().accessReport() == ([], []))
    }

    /// Every method declares what it needs: a peer that may only read `Student` passes exactly the reads of
    /// `Student`, `ping`, `track` and `notifications`; everything that writes, deletes, releases or reports is
    /// checked for write or admin.
    @Test func everyMethodDeclaresWhatItNeeds() throws {
        let address: [String: JSONValue] = ["key": .string("Student"), "identity": .number("12")]
        let params: [CachedMethod: JSONValue?] = [
            .get: .object(address),
            .set: .object(address.merging(["value": .string("v")]) { a, _ in a }),
            .delete: .object(address),
            .deleteHash: .object(["hashKey": .string("Student"), "hashId": .number("1")]),
            .release: .object(address.merging(["lease": .string("t")]) { a, _ in a }),
            .ping: nil,
            .stats: nil,
            .metrics: nil,
            .track: nil,
            .notifications: .object(["token": .string("t")]),
        ]
        let expected: [CachedMethod: AccessNeed] = [
            .get: .read(key: "Student"), .set: .write(key: "Student"), .delete: .write(key: "Student"),
            .deleteHash: .write(key: "Student"), .release: .write(key: "Student"), .ping: .nothing, .stats: .admin,
            .metrics: .admin, .track: .anyRule, .notifications: .anyRule,
        ]
        #expect(Set(CachedMethod.allCases) == Set(expected.keys), "a new method needs its line here")
        for method in CachedMethod.allCases {
            let handler = try #require(MethodRegistry.byMethod[method])
            #expect(try handler.need(params[method] ?? nil) == expected[method], "\(method)")
        }
    }

    @Test func aConnectionGetsTheNewRulesForItsNextRequest() throws {
        let loop = EmbeddedEventLoop()
        let control = AccessControl(rules: try Self.rules(), logger: Logger(label: "test"))
        let connection = ConnectionAccess(peer: PeerCredentials(pid: 1, uid: 4242, gid: 1), control: control, eventLoop: loop)
        #expect(connection.access("Student") == .read)
        #expect(connection.check(.read(key: "Student"), method: "get") == nil)
        let refusal = try #require(connection.check(.write(key: "Student"), method: "set"))
        #expect(refusal.code == .accessRefused && refusal.message == "uid 4242 may not write Student")
        #expect(connection.check(.admin, method: "stats")?.message == "uid 4242 may not call stats (it needs admin)")
        #expect(connection.mayRead(fromAnyThread: "Student") && !connection.mayRead(fromAnyThread: "Class"))
        // The reload takes Student away and gives Class: the next request (the same key, memoized) sees it.
        var rules = try Self.rules()
        rules[0].read = [try KeyPattern("Class")]
        #expect(control.update(rules))
        #expect(!control.update(rules), "the same rules again change nothing")
        #expect(connection.access("Student") == .none && connection.access("Class") == .read)
        #expect(!connection.mayRead(fromAnyThread: "Student") && connection.mayRead(fromAnyThread: "Class"))
        // Counted by the peer's rules and key.
        guard case .object(let status) = control.status, case .object(let by)? = status["refusedBy"] else {
            Issue.record("no refusedBy")
            return
        }
        #expect(status["refused"] == .number("2"))
        #expect(by["readers"] == .object(["Student": .number("1"), "(admin)": .number("1")]))
    }

    @Test func aPeerWithoutCredentialsMayOnlyPingOnceRulesExist() throws {
        let loop = EmbeddedEventLoop()
        let restricted = ConnectionAccess(peer: nil, control: AccessControl(rules: try Self.rules(), logger: Logger(label: "t")), eventLoop: loop)
        #expect(restricted.access("Student") == .none && restricted.check(.anyRule, method: "track") != nil && restricted.check(.nothing, method: "ping") == nil)
        #expect(restricted.check(.read(key: "Student"), method: "get")?.message == "a peer without credentials may not read Student")
        let open = ConnectionAccess(peer: nil, control: AccessControl(rules: [], logger: Logger(label: "t")), eventLoop: loop)
        #expect(open.access("Student") == .write && open.check(.admin, method: "stats") == nil)
    }
}
