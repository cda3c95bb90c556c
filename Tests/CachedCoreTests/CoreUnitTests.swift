import CachedProtocol
@testable import CachedCore
import NIOCore
import NIOEmbedded
import Logging
import NIOExtras
import Testing
#if canImport(Glibc)
import Glibc
#endif

@Suite("Embedded store")
struct EmbeddedStoreTests {
    let loop = EmbeddedEventLoop()

    func address(_ id: Int, hash: Int? = nil) -> EntryAddress {
        EntryAddress(key: "Student", identity: .integer(String(id)), hash: hash.map { HashAddress(hashKey: "Class", hashId: .integer(String($0))) })
    }

    @Test func stringsHashesAndDeletes() throws {
        let store = EmbeddedStore(maxBytes: 1 << 20)
        try store.set(address(1), value: ByteBuffer(string: "a"), ttl: .zero, on: loop).wait()
        try store.set(address(1, hash: 3), value: ByteBuffer(string: "h"), ttl: .zero, on: loop).wait()
        #expect(try store.get(address(1), on: loop).wait() == ByteBuffer(string: "a"))
        #expect(try store.get(address(1, hash: 3), on: loop).wait() == ByteBuffer(string: "h"))
        #expect(try store.get(address(2, hash: 3), on: loop).wait() == nil)
        #expect(try store.delete(address(1, hash: 3), on: loop).wait() == 1)
        #expect(try store.delete(address(1, hash: 3), on: loop).wait() == 0)
        // Deleting the last field removes the hash, like Redis.
        #expect(try store.deleteHash(HashAddress(hashKey: "Class", hashId: .integer("3")), on: loop).wait() == 0)
        #expect(try store.delete(address(1), on: loop).wait() == 1)
        #expect(store.status().detail["keys"] == .number("0"))
    }

    @Test func expiry() throws {
        let store = EmbeddedStore(maxBytes: 1 << 20)
        try store.set(address(1), value: ByteBuffer(string: "a"), ttl: .milliseconds(50), on: loop).wait()
        #expect(try store.get(address(1), on: loop).wait() != nil)
        usleep(80_000)
        #expect(try store.get(address(1), on: loop).wait() == nil)
    }

    @Test func leastRecentlyUsedIsEvictedWithinTheBudget() throws {
        let store = EmbeddedStore(maxBytes: 10_000)
        let value = ByteBuffer(repeating: 0x61, count: 1000)
        for i in 0..<5 { try store.set(address(i), value: value, ttl: .zero, on: loop).wait() }
        _ = try store.get(address(0), on: loop).wait()  // 0 becomes most recent
        for i in 5..<20 { try store.set(address(i), value: value, ttl: .zero, on: loop).wait() }
        let status = store.status()
        #expect(Int(status.detail["bytes"].flatMap { if case .number(let n) = $0 { return n } else { return nil } } ?? "") ?? .max <= 10_000)
        #expect(try store.get(address(19), on: loop).wait() != nil)
        #expect(try store.get(address(1), on: loop).wait() == nil)
        #expect(status.detail["evictions"] != .number("0"))
    }
}

@Suite("Configuration")
struct ConfigurationTests {
    @Test func emptyFileIsValidAndDefaultsAreSafe() throws {
        let c = try DaemonConfiguration(toml: "")
        #expect(c == DaemonConfiguration())
        #expect(c.startup.socketMode == 0o660)
        #expect(c.startup.store == .embedded)
    }

    @Test func requestTimeoutIsReadAndBounded() throws {
        #expect(DaemonConfiguration().startup.limits.requestTimeout == .seconds(10))
        #expect(try DaemonConfiguration(toml: "[limits]\nrequest_timeout = 0.25\n").startup.limits.requestTimeout == .milliseconds(250))
        #expect(try DaemonConfiguration(toml: "[limits]\nrequest_timeout = 0\n").startup.limits.requestTimeout == .zero)
        #expect(throws: ConfigurationError.self) { try DaemonConfiguration(toml: "[limits]\nrequest_timeout = 90000\n") }
        #expect(throws: ConfigurationError.self) { try DaemonConfiguration(toml: "[limits]\nrequest_timeout = -1\n") }
    }

    @Test func tlsSettingsNeedARedissURL() throws {
        var c = try DaemonConfiguration(toml: "redis = \"redis://127.0.0.1:6379/0\"\n[redis_options]\ntls_ca_file = \"/ca.pem\"\n")
        #expect(throws: ConfigurationError.self) { try c.validate() }
        c.startup.store = .redis(url: "rediss://127.0.0.1:6379/0")
        try c.validate()
        c.startup.redis.tlsCertFile = "/client.pem"
        #expect(throws: ConfigurationError.self) { try c.validate() }  // a certificate without its key
        c.startup.redis.tlsKeyFile = "/client.key"
        try c.validate()
    }

    @Test func sentinelURLsSelectTheSentinelStoreAndItsOptionsAreChecked() throws {
        var c = try DaemonConfiguration(toml: """
            redis = "rediss-sentinel://:pw@10.0.0.1:26379,10.0.0.2/mymaster/2"
            [redis_options]
            tls_ca_file = "/ca.pem"
            sentinel_password = "sp"
            topology_refresh_interval = 2.5
            """)
        #expect(c.startup.store == .sentinel(url: "rediss-sentinel://:pw@10.0.0.1:26379,10.0.0.2/mymaster/2"))
        #expect(c.startup.store.name == "sentinel" && c.startup.store.usesTLS)
        #expect(c.startup.redis.sentinelPassword == "sp")
        #expect(c.startup.redis.topologyRefreshInterval == .milliseconds(2500))
        try c.validate()
        // TLS files need a TLS URL; a Sentinel password needs Sentinel; the URL must parse.
        c.startup.store = .sentinel(url: "redis-sentinel://10.0.0.1/mymaster")
        #expect(throws: ConfigurationError.self) { try c.validate() }
        c.startup.redis.tlsCAFile = nil
        try c.validate()
        c.startup.store = .redis(url: "redis://10.0.0.1/0")
        #expect(throws: ConfigurationError.self) { try c.validate() }
        c.startup.redis.sentinelPassword = nil
        try c.validate()
        c.startup.store = DaemonConfiguration.Store(redisURL: "redis-sentinel://10.0.0.1")
        #expect(throws: ConfigurationError.self) { try c.validate() }  // no master name
        c.startup.store = DaemonConfiguration.Store(redisURL: "redis://10.0.0.1:99999")
        #expect(throws: ConfigurationError.self) { try c.validate() }
        c.startup.store = DaemonConfiguration.Store(redisURL: "")
        #expect(c.startup.store == .embedded)
        c.startup.redis.topologyRefreshInterval = .zero
        #expect(throws: ConfigurationError.self) { try c.validate() }
    }

    @Test func fullFile() throws {
        let c = try DaemonConfiguration(toml: """
            socket = "/tmp/x.sock"
            socket_mode = 0o600
            redis = "redis://127.0.0.1:6379/0"
            log_level = "debug"
            [redis_options]
            pool_size = 4
            command_timeout = 0.5
            [limits]
            max_line_bytes = 65536
            [embedded]
            max_bytes = 1048576
            [keys.Student]
            ttl = 10
            [keys.Fast]
            ttl = 0.25
            negative_ttl = 2
            [keys.Loaded]
            handler = ["python3", "-m", "school.loaders", "student"]
            workers = 4
            timeout = 2.5
            environment = { SCHOOL_DB = "postgres://x" }
            working_directory = "/srv"
            queue_limit = 10
            """)
        #expect(c.startup.socketPath == "/tmp/x.sock")
        #expect(c.startup.socketMode == 0o600)
        #expect(c.startup.store == .redis(url: "redis://127.0.0.1:6379/0"))
        #expect(c.startup.logLevel == .debug)
        #expect(c.startup.redis.poolSize == 4)
        #expect(c.startup.redis.commandTimeout == .milliseconds(500))
        #expect(c.startup.limits.maxLineBytes == 65536)
        #expect(c.startup.embedded.maxBytes == 1_048_576)
        #expect(c.key("Student").ttl == .seconds(10))
        #expect(c.key("Fast").ttl == .milliseconds(250))
        #expect(c.key("Other").ttl == .zero)
        #expect(c.key("Fast").negativeTTL == .seconds(2))
        #expect(c.key("Student").handler == nil)
        let handler = try #require(c.key("Loaded").handler)
        #expect(handler.command == ["python3", "-m", "school.loaders", "student"])
        #expect(handler.workers == 4)
        #expect(handler.timeout == .milliseconds(2500))
        #expect(handler.environment == ["SCHOOL_DB": "postgres://x"])
        #expect(handler.workingDirectory == "/srv")
        #expect(handler.queueLimit == 10)
    }

    @Test(arguments: ["bogus = 1", "[limits]\nmax_depth = 1", "[keys.S]\nttl = \"x\"", "[keys.S]\nhandlr = []", "socket = 5", "log_level = \"loud\"", "[keys.S]\nhandler = []", "[keys.S]\nhandler = [1]", "[keys.S]\nworkers = 2"])
    func rejects(_ text: String) {
        #expect(throws: ConfigurationError.self) { try DaemonConfiguration(toml: text) }
    }
}

@Suite("Client connection handler (in-memory channel)")
struct ClientConnectionHandlerTests {
    func makeChannel(_ limits: DaemonConfiguration.Limits = .init()) throws -> EmbeddedChannel {
        let dispatcher = RequestDispatcher(store: EmbeddedStore(maxBytes: 1 << 20), configuration: DaemonConfiguration(), logger: Logger(label: "test"))
        let channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandlers([
            ClientConnectionHandler(dispatcher: dispatcher, limits: limits, logger: Logger(label: "test")),
        ])
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        return channel
    }

    func lines(_ channel: EmbeddedChannel) throws -> [String] { try channel.answerLines() }

    @Test func answersEachLine() throws {
        let channel = try makeChannel()
        try channel.writeInbound(ByteBuffer(string: "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}\r\n{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"get\",\"params\":{\"key\":\"abc\",\"identity\":1}}\n"))
        #expect(try lines(channel).map { String($0.prefix(50)) } == [
            "{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":\"pong\"}",
            "{\"jsonrpc\":\"2.0\",\"id\":2,\"result\":{\"hit\":false,\"value\":null,\"lease\":",
        ].map { String($0.prefix(50)) })
    }

    @Test func overLongLineAnswersThenCloses() throws {
        var limits = DaemonConfiguration.Limits()
        limits.maxLineBytes = 300
        let channel = try makeChannel(limits)
        _ = try? channel.writeInbound(ByteBuffer(repeating: 0x61, count: 301))
        let out = try lines(channel)
        #expect(out.count == 1)
        #expect(out.first?.contains("-32001") == true)
        #expect(!channel.isActive)
    }
}

@Suite("Method registry")
struct MethodRegistryTests {
    @Test func everyMethodHasExactlyOneHandler() {
        let methods = MethodRegistry.all.map(\.method)
        #expect(Set(methods) == Set(CachedMethod.allCases), "a CachedMethod without a handler, or a handler without a case")
        #expect(methods.count == Set(methods).count, "a method with two handlers")
    }
}
