import CachedProtocol
import CachedTestSupport
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// A datagram socket standing in for systemd's notification socket.
final class NotifySocket: @unchecked Sendable {
    let path: String
    let fd: Int32

    init(directory: String) throws {
        path = directory + "/notify.sock"
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            let bytes = Array(path.utf8)
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard rc == 0 else { throw HarnessError("bind notify socket: errno \(errno)") }
    }

    deinit { close(fd) }

    /// The next message, or nil after `timeout`.
    func receive(timeout: Double) -> String? {
        var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&pfd, 1, Int32(timeout * 1000)) > 0 else { return nil }
        var buffer = [UInt8](repeating: 0, count: 4096)
        let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        guard n > 0 else { return nil }
        return String(decoding: buffer[..<n], as: UTF8.self)
    }

    /// Waits for a message containing `needle`; returns all messages seen meanwhile.
    func wait(for needle: String, timeout: Double) -> [String]? {
        let deadline = Date().addingTimeInterval(timeout)
        var seen: [String] = []
        while Date() < deadline {
            guard let message = receive(timeout: deadline.timeIntervalSinceNow) else { continue }
            seen.append(message)
            if message.split(separator: "\n").contains(where: { $0 == needle }) { return seen }
        }
        return nil
    }
}

@Suite("systemd integration", .serialized)
struct SystemdTests {
    @Test func socketActivationServesTheFirstConnectionAndLeavesTheSocketAlone() throws {
        let dir = try makeTemporaryDirectory("sdact")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let socketPath = dir + "/activated.sock"
        let activator = try ChildProcess(
            "/usr/bin/systemd-socket-activate",
            ["-l", socketPath, DaemonProcess.binary, "--socket", dir + "/unused.sock"],
            outputPath: dir + "/log")
        // systemd-socket-activate binds, then listens: wait for the listen, without connecting (that would start cached).
        #expect(try waitUntil(timeout: 5) { (try? String(contentsOfFile: dir + "/log", encoding: .utf8))?.contains("Listening on") == true })
        // The daemon is started by this first connection, and answers it.
        let started = Date()
        let client = try LineClient(path: socketPath)
        let answer = try client.call("ping", timeout: 15)
        let elapsed = Date().timeIntervalSince(started)
        #expect(answer["result"] == .string("pong"))
        print("socket activation: first connection answered after \(String(format: "%.1f", elapsed * 1000)) ms")
        #expect(try waitUntil(timeout: 3) {
            ((try? String(contentsOfFile: dir + "/log", encoding: .utf8)) ?? "").contains("serving the socket passed by systemd")
        })
        #expect(!FileManager.default.fileExists(atPath: dir + "/unused.sock"))
        activator.signal(SIGTERM)
        #expect(activator.wait() == 0)
        // The socket belongs to systemd: cached must not remove it.
        #expect(FileManager.default.fileExists(atPath: socketPath))
    }

    @Test func notificationsReadyWatchdogStopping() throws {
        let dir = try makeTemporaryDirectory("sdnot")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let notify = try NotifySocket(directory: dir)
        let daemon = try DaemonProcess(
            waitForReady: false, environment: ["NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "200000"])
        let ready = try #require(notify.wait(for: "READY=1", timeout: 15), "no READY=1:\n\(daemon.log())")
        #expect(ready.joined().contains("STATUS=Serving"))
        // READY=1 comes only once the socket serves.
        #expect(try daemon.client().call("ping")["result"] == .string("pong"))
        // WATCHDOG=1 at half the 200 ms interval: about 10 in a second.
        var pings = 0
        let until = Date().addingTimeInterval(1.0)
        while Date() < until {
            if let m = notify.receive(timeout: until.timeIntervalSinceNow), m.contains("WATCHDOG=1") { pings += 1 }
        }
        print("watchdog pings in 1 s at WATCHDOG_USEC=200000: \(pings)")
        #expect(pings >= 5 && pings <= 15)
        daemon.signalOnly(SIGTERM)
        #expect(notify.wait(for: "STOPPING=1", timeout: 5) != nil)
        #expect(daemon.waitForExit() == 0)
    }

    /// `STATUS=` names the master behind Sentinel and how many Sentinels answer.
    @Test func statusNamesTheSentinelMaster() throws {
        let group = try SentinelGroup()
        let master = try #require(group.master())
        let dir = try makeTemporaryDirectory("sdsen")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let notify = try NotifySocket(directory: dir)
        let daemon = try DaemonProcess(
            arguments: ["--redis", group.url], waitForReady: false, environment: ["NOTIFY_SOCKET": notify.path])
        let ready = try #require(notify.wait(for: "READY=1", timeout: 15), "no READY=1:\n\(daemon.log())")
        let status = ready.joined(separator: "\n")
        #expect(status.contains("store redis up: master 127.0.0.1:\(master.port!)"), "\(status)")
        #expect(status.contains("sentinels 3/3 reachable"), "\(status)")
    }

    @Test func sighupChangesKeySettingsWithoutDroppingConnections() throws {
        let redis = try RedisServer()
        let daemon = try DaemonProcess(config: "[keys.Student]\nttl = 100\n", arguments: ["--redis", redis.unixURL])
        let c = try daemon.client()
        _ = try c.call("set", ["key": .string("Student"), "identity": .number("1"), "value": .string("a")])
        #expect(Int(try redis.cli(["PTTL", "000STUDENT#0000000001"])) ?? 0 > 90_000)
        try "[keys.Student]\nttl = 5\n[keys.Other]\nttl = 7\nsocket_mode_typo = 1\n".write(toFile: daemon.directory + "/cached.toml", atomically: true, encoding: .utf8)
        daemon.signalOnly(SIGHUP)
        #expect(try waitUntil(timeout: 5) { daemon.log().contains("configuration not reloaded") })
        try "[keys.Student]\nttl = 5\nlog_level = \"debug\"\n".replacingOccurrences(of: "log_level = \"debug\"\n", with: "")
            .appending("[limits]\nmax_batch = 10\n")
            .write(toFile: daemon.directory + "/cached.toml", atomically: true, encoding: .utf8)
        daemon.signalOnly(SIGHUP)
        #expect(try waitUntil(timeout: 5) { daemon.log().contains("configuration reloaded") })
        #expect(daemon.log().contains("need a restart"))
        // Same connection, new TTL.
        _ = try c.call("set", ["key": .string("Student"), "identity": .number("2"), "value": .string("b")])
        let pttl = Int(try redis.cli(["PTTL", "000STUDENT#0000000002"])) ?? 0
        #expect(pttl > 0 && pttl <= 5000)
        #expect(try c.call("ping")["result"] == .string("pong"))
    }

    @Test func peersOutsideTheAllowListAreRefused() throws {
        let daemon = try DaemonProcess(config: "socket_mode = 0o666\nallow_uids = [4242]\n")
        chmod(daemon.directory, 0o755)  // let uid 65534 reach the socket file
        // The daemon's own user (root here) is always allowed.
        #expect(try daemon.client().call("ping")["result"] == .string("pong"))
        // A client running as uid 65534 is refused with one error line.
        let out = try ChildProcess.output(
            "/usr/bin/setpriv",
            ["--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/socat", "-t", "2", "-", "UNIX-CONNECT:\(daemon.socketPath)"])
        let line = String(decoding: out, as: UTF8.self)
        #expect(line.contains("\"code\":-32008"), "\(line)")
        #expect(try waitUntil(timeout: 3) { daemon.log().contains("peer not allowed") && daemon.log().contains("uid=65534") })
        #expect(daemon.log().contains("pid="))
    }

    @Test func socketModeAndGroupFollowTheConfiguration() throws {
        let daemon = try DaemonProcess(config: "socket_mode = 0o600\nsocket_group = \"nogroup\"\n")
        var info = stat()
        #expect(lstat(daemon.socketPath, &info) == 0)
        #expect(info.st_mode & 0o777 == 0o600)
        #expect(info.st_gid == getgrnam("nogroup").pointee.gr_gid)
        let defaults = try DaemonProcess()
        #expect(lstat(defaults.socketPath, &info) == 0)
        #expect(info.st_mode & 0o777 == 0o660)
    }

    @Test func sigtermAnswersWaitersStopsAcceptingAndExitsZero() throws {
        let daemon = try DaemonProcess()
        let entry: [String: JSONValue] = ["key": .string("Student"), "identity": .number("5")]
        let holder = try daemon.client()
        _ = try #require(try holder.call("get", entry)["result"]?["lease"]?.stringValue)
        let waiter = try daemon.client()
        try waiter.send(requestLine(id: .number("1"), method: "get", params: entry) + "\n")
        Thread.sleep(forTimeInterval: 0.1)
        daemon.signalOnly(SIGTERM)
        // Idle connections close at once; the holder's lease passes to the waiter, whose request completes.
        let answer = try waiter.readJSON(timeout: 5)
        #expect(answer["id"] == .number("1"))
        #expect(answer["result"]?["lease"]?.stringValue != nil)
        #expect(holder.isClosedByPeer())
        #expect(waiter.isClosedByPeer())
        #expect(daemon.waitForExit(timeout: 10) == 0)
        #expect((try? LineClient(path: daemon.socketPath)) == nil)
    }

    @Test func unitFilesVerifyAndScoreWellOnSecurity() throws {
        let dir = try makeTemporaryDirectory("units")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let repo = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        for unit in ["cached.socket", "cached.service"] {
            let text = try String(contentsOf: repo.appendingPathComponent("packaging/\(unit)"), encoding: .utf8)
                .replacingOccurrences(of: "/usr/local/bin/cached", with: DaemonProcess.binary)
            try text.write(toFile: dir + "/" + unit, atomically: true, encoding: .utf8)
        }
        let verify = try ChildProcess("/usr/bin/systemd-analyze", ["verify", dir + "/cached.socket", dir + "/cached.service"], outputPath: dir + "/verify.out")
        let status = verify.wait()
        let verifyOutput = (try? String(contentsOfFile: dir + "/verify.out", encoding: .utf8)) ?? ""
        #expect(status == 0, "\(verifyOutput)")
        #expect(verifyOutput.isEmpty, "\(verifyOutput)")
        let security = String(decoding: try ChildProcess.output(
            "/usr/bin/systemd-analyze", ["security", "--offline=yes", "--no-pager", dir + "/cached.service"]), as: UTF8.self)
        let scoreLine = try #require(security.split(separator: "\n").first { $0.contains("Overall exposure level") })
        print("systemd-analyze security: \(scoreLine)")
        let score = Double(scoreLine.split(separator: ":").last!.split(separator: " ").first!) ?? 99
        #expect(score <= 2.0)
    }
}
