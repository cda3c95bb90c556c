import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Silent network faults for tests: `iptables` rules on loopback that drop packets (closing nothing), each
/// tagged with a comment naming this process, all removed by ``removeAll()`` and when the filter goes away,
/// so a failed test leaves nothing behind. Only ever matches loopback TCP ports the test chose.
public final class PacketFilter: @unchecked Sendable {
    private var rules: [[String]] = []
    private let tag = "cached-test-\(getpid())"

    public init() {}

    deinit { removeAll() }

    /// Why rules cannot be added here (not root, no iptables, no netfilter), or nil when they can.
    public static let unavailableReason: String? = {
        guard getuid() == 0 else { return "silent-fault tests need root for iptables" }
        guard let iptables = iptablesPath else { return "iptables is not installed (scripts/install-deps.sh installs it)" }
        // A harmless rule on a port nobody uses, added and removed.
        let probe = ["-p", "tcp", "-d", "127.0.0.1", "--dport", "9", "-m", "comment", "--comment", "cached-test-probe", "-j", "DROP"]
        guard run(iptables, ["-w", "-I", "INPUT"] + probe) == 0 else { return "iptables cannot add a rule here (no netfilter?)" }
        _ = run(iptables, ["-w", "-D", "INPUT"] + probe)
        return nil
    }()

    static let iptablesPath: String? = ["/usr/sbin/iptables", "/sbin/iptables", "/usr/bin/iptables"].first {
        FileManager.default.isExecutableFile(atPath: $0)
    }

    /// Drops every packet to and from loopback TCP `port` (both directions of every flow).
    public func blackhole(port: Int) throws {
        try add(["-p", "tcp", "-d", "127.0.0.1", "--dport", String(port)])
        try add(["-p", "tcp", "-s", "127.0.0.1", "--sport", String(port)])
    }

    /// Drops the packets of one flow only: between local port `client` and `port`.
    public func blackhole(flowFrom client: Int, to port: Int) throws {
        try add(["-p", "tcp", "--sport", String(client), "--dport", String(port)])
        try add(["-p", "tcp", "--sport", String(port), "--dport", String(client)])
    }

    /// Drops `probability` of the packets to and from `port`.
    public func loss(port: Int, probability: Double) throws {
        let random = ["-m", "statistic", "--mode", "random", "--probability", String(probability)]
        try add(["-p", "tcp", "-d", "127.0.0.1", "--dport", String(port)] + random)
        try add(["-p", "tcp", "-s", "127.0.0.1", "--sport", String(port)] + random)
    }

    private func add(_ match: [String]) throws {
        guard let iptables = Self.iptablesPath else { throw HarnessError("iptables is not installed") }
        let rule = match + ["-m", "comment", "--comment", tag, "-j", "DROP"]
        guard Self.run(iptables, ["-w", "-I", "INPUT"] + rule) == 0 else { throw HarnessError("iptables refused \(rule)") }
        rules.append(rule)
    }

    /// Removes every rule this filter added.
    public func removeAll() {
        guard let iptables = Self.iptablesPath else { return }
        for rule in rules.reversed() { _ = Self.run(iptables, ["-w", "-D", "INPUT"] + rule) }
        rules.removeAll()
    }

    @discardableResult
    static func run(_ path: String, _ arguments: [String]) -> Int32 {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: path)
        process.arguments = arguments
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        do { try process.run() } catch { return -1 }
        process.waitUntilExit()
        return process.terminationStatus
    }
}
