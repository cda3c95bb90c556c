import CachedProtocol
import CachedTestSupport
import Foundation
import Testing

/// `rediss://`: TLS to a real redis-server with certificates made by openssl for the test.
@Suite("Redis over TLS", .serialized)
struct TLSTests {
    static let entry = params(["key": .string("Student"), "identity": int(5)])

    static func tlsConfig(_ certs: TestCertificates, serverName: String? = "localhost", client: Bool = false) -> String {
        var lines = ["[redis_options]", "tls_ca_file = \"\(certs.caCertificate)\""]
        if let serverName { lines.append("tls_server_name = \"\(serverName)\"") }
        if client {
            lines.append("tls_cert_file = \"\(certs.clientCertificate)\"")
            lines.append("tls_key_file = \"\(certs.clientKey)\"")
        }
        return lines.joined(separator: "\n") + "\n"
    }

    /// Writes, reads, hits from the local copy (the invalidation listener is on TLS too) and invalidation
    /// by a write made directly in Redis.
    @Test(arguments: [("localhost", false), (nil, false), ("localhost", true)])
    func everyMethodWorksOverTLS(serverName: String?, clientCertificate: Bool) throws {
        let certs = try TestCertificates()
        let redis = try RedisServer(tls: certs, tlsAuthClients: clientCertificate)
        // Without a server name the URL's host (127.0.0.1) is verified against the certificate's IP entry.
        let daemon = try DaemonProcess(
            config: Self.tlsConfig(certs, serverName: serverName, client: clientCertificate), arguments: ["--redis", redis.tlsURL])
        let c = try daemon.client()
        #expect(try waitUntil(timeout: 5) { (try? c.call("stats"))?["result"]?["store"]?["available"] == .bool(true) })
        #expect(try c.call("set", Self.entry.merging(["value": .string("secret")]) { $1 })["result"]?["stored"] == .bool(true))
        #expect(try redis.cli(["GET", "000STUDENT#0000000005"]) == "secret")
        #expect(try c.call("get", Self.entry)["result"]?["value"] == .string("secret"))
        #expect(try c.call("get", Self.entry)["result"]?["value"] == .string("secret"))
        let local = try c.call("stats")["result"]?["store"]?["localCache"]
        #expect(local?["enabled"] == .bool(true))
        #expect((local?["hits"]?.intValue ?? 0) >= 1, "the second get is a local hit")
        try redis.cli(["SET", "000STUDENT#0000000005", "changed"])
        #expect(try waitUntil(timeout: 2, interval: 0.005) { try c.call("get", Self.entry)["result"]?["value"] == .string("changed") })
        // The TLS clients Redis sees are the daemon's.
        let clients = try redis.cli(["CLIENT", "LIST"])
        #expect(clients.split(separator: "\n").count >= 3)
    }

    /// A certificate problem never crashes the daemon: it starts degraded (requests fail fast, -32000),
    /// says why in its log, and recovers by itself once the problem is gone.
    @Test func anUntrustedServerIsRefusedAndLoggedAndTheDaemonStartsDegraded() throws {
        let certs = try TestCertificates()
        let other = try TestCertificates(name: "another CA")
        let redis = try RedisServer(tls: certs)
        let daemon = try DaemonProcess(config: Self.tlsConfig(other), arguments: ["--redis", redis.tlsURL])
        let c = try daemon.client()
        #expect(try c.call("ping")["result"] == .string("pong"))
        #expect(try c.call("get", Self.entry)["error"]?["code"] == int(-32000))
        #expect(try waitUntil(timeout: 5) { daemon.log().contains("cannot connect to Redis") })
        let log = daemon.log().lowercased()
        #expect(log.contains("certificate") || log.contains("handshake"), "the log says why: \(daemon.log().suffix(600))")
        #expect(daemon.isRunning)
    }

    /// The certificate must name the server: `tls_server_name`, or the URL's host. (As swift-nio-ssl does,
    /// a certificate that lists the connected IP address matches too, so this one names only `localhost`.)
    @Test func aCertificateForAnotherNameIsRefused() throws {
        let certs = try TestCertificates(serverNames: "DNS:localhost")
        let redis = try RedisServer(tls: certs)
        let wrong = try DaemonProcess(config: Self.tlsConfig(certs, serverName: "redis.example"), arguments: ["--redis", redis.tlsURL])
        let c = try wrong.client()
        #expect(try c.call("get", Self.entry)["error"]?["code"] == int(-32000))
        #expect(try waitUntil(timeout: 5) { wrong.log().contains("cannot connect to Redis") })
        let byAddress = try DaemonProcess(config: Self.tlsConfig(certs, serverName: nil), arguments: ["--redis", redis.tlsURL])
        #expect(try byAddress.client().call("get", Self.entry)["error"]?["code"] == int(-32000))
        let right = try DaemonProcess(config: Self.tlsConfig(certs, serverName: "localhost"), arguments: ["--redis", redis.tlsURL])
        let r = try right.client()
        #expect(try waitUntil(timeout: 5) { (try? r.call("stats"))?["result"]?["store"]?["available"] == .bool(true) })
        #expect(try r.call("set", Self.entry.merging(["value": .string("v")]) { $1 })["result"]?["stored"] == .bool(true))
    }

    @Test func aMissingCertificateFileIsNamedInTheLog() throws {
        let certs = try TestCertificates()
        let redis = try RedisServer(tls: certs)
        let daemon = try DaemonProcess(
            config: "[redis_options]\ntls_ca_file = \"/nonexistent/ca.pem\"\n", arguments: ["--redis", redis.tlsURL])
        #expect(try waitUntil(timeout: 5) { daemon.log().contains("/nonexistent/ca.pem") })
        #expect(try daemon.client().call("ping")["result"] == .string("pong"))
    }

    /// TLS settings with a plain URL are a configuration error: never plain when TLS was asked for.
    @Test func tlsSettingsWithAPlainURLAreRefused() throws {
        let certs = try TestCertificates()
        let redis = try RedisServer(tcp: true)
        let daemon = try DaemonProcess(config: Self.tlsConfig(certs), arguments: ["--redis", redis.tcpURL], waitForReady: false)
        #expect(daemon.waitForExit(timeout: 10) != 0)
        #expect(daemon.log().contains("rediss://"))
    }
}
