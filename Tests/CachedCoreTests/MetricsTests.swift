import CachedProtocol
import CachedRedis
import NIOCore
import NIOEmbedded
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

    @Test func histogramsBucketSumAndReadQuantiles() {
        var h = LatencyHistogram()
        #expect(h.quantile(0.99) == nil)
        h.observe(nanoseconds: 40_000)  // <= 50 µs
        h.observe(nanoseconds: 50_000)  // the bound itself: same bucket (le is "less or equal")
        h.observe(nanoseconds: 700_000, times: 3)  // (500 µs, 1 ms]
        h.observe(nanoseconds: 20_000_000_000)  // past 10 s: +Inf
        #expect(h.count == 6)
        #expect(h.buckets[0] == 2 && h.buckets[4] == 3 && h.buckets.last == 1)
        #expect(h.sumNanoseconds == 40_000 + 50_000 + 2_100_000 + 20_000_000_000)
        #expect(h.quantile(0.3) == 0.00005)
        #expect(h.quantile(0.5) == 0.001)
        #expect(h.quantile(1) == 10)  // +Inf reports the last finite bound
        var sum = LatencyHistogram()
        sum.add(h)
        sum.add(h)
        #expect(sum.count == 12 && sum.buckets[4] == 6)
    }

    @Test func histogramExpositionIsCumulativeAndEndsWithCount() {
        var h = LatencyHistogram()
        h.observe(nanoseconds: 80_000)
        h.observe(nanoseconds: 3_000_000, times: 2)
        let text = String(
            decoding: MetricsExporter(topKeys: 1).exposition(
                snapshot(getRequests: 1, keys: [:], calls: 0),
                histograms: [.init(name: "x_seconds", help: "h", series: [([("method", "get"), ("source", "memory")], h)])]),
            as: UTF8.self)
        #expect(text.contains("# TYPE x_seconds histogram"))
        #expect(sample(text, #"x_seconds_bucket{method="get",source="memory",le="5e-05"}"#) == 0)
        #expect(sample(text, #"x_seconds_bucket{method="get",source="memory",le="0.0001"}"#) == 1)
        #expect(sample(text, #"x_seconds_bucket{method="get",source="memory",le="0.005"}"#) == 3)
        #expect(sample(text, #"x_seconds_bucket{method="get",source="memory",le="+Inf"}"#) == 3)
        #expect(sample(text, #"x_seconds_count{method="get",source="memory"}"#) == 3)
        #expect(sample(text, #"x_seconds_sum{method="get",source="memory"}"#) == 0.00608)
    }

    @Test func statsShardsAddUpWithErrorCodesAndLatency() throws {
        let stats = Stats()
        let loops = [EmbeddedEventLoop(), EmbeddedEventLoop()]
        let a = stats.shard(for: loops[0])
        let b = stats.shard(for: loops[1])
        #expect(a !== b && stats.shard(for: loops[0]) === a)  // one shard per loop, made once
        a.record(method: "get", key: "Student", outcome: .hit)
        b.record(method: "get", key: "Student", outcome: .miss)
        b.record(method: "get", key: nil, outcome: .error(.invalidParams))
        stats.record(method: "set", key: "Student", outcome: .error(.storeUnavailable))
        a.observe(method: "get", source: .memory, nanoseconds: 30_000, times: 4)
        b.observe(method: "get", source: .redis, nanoseconds: 400_000)
        let json = stats.snapshot(store: StoreStatus(kind: "embedded", available: true, detail: [:]), uptimeSeconds: 1)
        guard case .object(let s) = json, case .object(let methods)? = s["methods"], case .object(let keys)? = s["keys"],
            case .object(let latency)? = s["latency"]
        else { Issue.record("no stats object"); return }
        #expect(s["requests"] == .number("4"))
        #expect(methods["get"] == .object([
            "requests": .number("3"), "errors": .number("1"), "hits": .number("1"), "misses": .number("1"),
            "errorCodes": .object(["-32602": .number("1")]),
        ]))
        #expect(keys["Student"] == .object(["requests": .number("3"), "errors": .number("1"), "hits": .number("1"), "misses": .number("1")]))
        guard case .object(let get)? = latency["get"] else { Issue.record("no get latency"); return }
        func buckets(_ at: Int, _ n: Int) -> JSONValue {
            .array((0...LatencyHistogram.boundsNanoseconds.count).map { .number($0 == at ? String(n) : "0") })
        }
        #expect(get["memory"] == .object(["count": .number("4"), "p50": .number("5e-05"), "p99": .number("5e-05"), "buckets": buckets(0, 4)]))
        #expect(get["redis"] == .object(["count": .number("1"), "p50": .number("0.0005"), "p99": .number("0.0005"), "buckets": buckets(3, 1)]))
        for loop in loops { try loop.syncShutdownGracefully() }
    }
}
