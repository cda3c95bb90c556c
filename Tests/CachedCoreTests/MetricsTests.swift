import CachedProtocol
import Testing

@testable import CachedCore

@Suite("Metrics exposition")
struct MetricsTests {
    func snapshot(getRequests: Int, keys: [String: Int], calls: Int) -> JSONValue {
        func n(_ v: Int) -> JSONValue { .number(String(v)) }
        return .object([
            "uptimeSeconds": .number("1.5"),
            "methods": .object(["get": .object(["requests": n(getRequests), "errors": n(0), "hits": n(0), "misses": n(0)])]),
            "keys": .object(keys.mapValues { .object(["requests": n($0), "errors": n(0), "hits": n($0), "misses": n(0)]) }),
            "connections": .object(["current": n(3), "total": n(7), "refused": n(0)]),
            "handlers": .object(["Student": .object(["calls": n(calls), "alive": n(2), "busy": n(1), "queued": n(0)])]),
            "store": .object(["available": .bool(true), "connections": n(2)]),
        ])
    }

    /// The value of the sample line `name{labels} value`.
    func sample(_ text: String, _ series: String) -> Double? {
        for line in text.split(separator: "\n") where line.hasPrefix(series + " ") {
            return Double(line.dropFirst(series.count + 1))
        }
        return nil
    }

    @Test func countersFollowTheSnapshotsAndKeyLabelsAreBounded() {
        let exporter = MetricsExporter(topKeys: 1)
        var text = String(decoding: exporter.exposition(snapshot(getRequests: 5, keys: ["Alpha": 2, "Beta": 3], calls: 4)), as: UTF8.self)
        #expect(text.contains("# TYPE cached_requests_total counter"))
        #expect(sample(text, #"cached_requests_total{method="get"}"#) == 5)
        #expect(sample(text, #"cached_get_hits_total{key="Alpha"}"#) == 2)  // the first key seen
        #expect(sample(text, #"cached_get_hits_total{key="(other)"}"#) == 3)  // past top_keys
        #expect(sample(text, #"cached_get_hits_total{key="Beta"}"#) == nil)
        #expect(sample(text, "cached_connections") == 3)
        #expect(sample(text, "cached_store_up") == 1)
        #expect(sample(text, #"cached_handler_workers{key="Student",state="busy"}"#) == 1)

        text = String(decoding: exporter.exposition(snapshot(getRequests: 9, keys: ["Alpha": 2, "Beta": 5, "Gamma": 1], calls: 1)), as: UTF8.self)
        #expect(sample(text, #"cached_requests_total{method="get"}"#) == 9)
        #expect(sample(text, #"cached_get_hits_total{key="(other)"}"#) == 6)
        // A figure that went down (a reload restarted the handler's workers) counts from zero again.
        #expect(sample(text, #"cached_handler_calls_total{key="Student"}"#) == 5)
    }

    @Test func listenAddressesAreChecked() throws {
        var c = try DaemonConfiguration(toml: "[metrics]\nlisten = \"127.0.0.1:9464\"\ntop_keys = 10")
        #expect(c.startup.metrics.listen == "127.0.0.1:9464" && c.startup.metrics.topKeys == 10)
        try c.validate()
        c.startup.metrics.listen = "/run/cached/metrics.sock"
        try c.validate()
        c.startup.metrics.listen = "[::1]:9464"
        try c.validate()
        for bad in ["nonsense", "host:99999", ":9464", "relative/path.sock"] {
            c.startup.metrics.listen = bad
            #expect(throws: ConfigurationError.self) { try c.validate() }
        }
        #expect(throws: ConfigurationError.self) { try DaemonConfiguration(toml: "[metrics]\nlisten = 5") }
    }
}
