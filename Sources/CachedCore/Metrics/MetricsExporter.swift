import CachedProtocol
import CachedRedis
import NIOConcurrencyHelpers
import Prometheus

/// The daemon's figures in the Prometheus text format (docs/metrics.md), made from the same snapshot as
/// `stats` when scraped: nothing is counted twice and the request path does no extra work for it.
///
/// Counters are swift-prometheus `Counter`s moved by how much each figure grew since the last scrape
/// (a figure that went down, as a handler's when a reload restarts its workers, counts from zero again);
/// gauges are set. Key labels are bounded: the first `topKeys` keys seen get their own label, the rest
/// count under `key="(other)"`.
public final class MetricsExporter: Sendable {
    struct State {
        var counters: [String: (Counter, Double)] = [:]
        var gauges: [String: Gauge] = [:]
        var labeledKeys: Set<String> = []
        var other: [String: Double] = [:]
    }

    private let registry = PrometheusCollectorRegistry()
    private let state = NIOLockedValueBox(State())
    private let topKeys: Int

    public init(topKeys: Int = 50) {
        self.topKeys = topKeys
    }

    /// One histogram family: its series are written after the registry's metrics, in the same text format.
    ///
    /// They are not swift-prometheus histograms because those count each observation under a lock shared
    /// by every thread; these are summed from per-event-loop (or per-node, per-pool) counts when scraped.
    public struct Histograms: Sendable {
        public var name: String
        public var help: String
        public var series: [(labels: [(String, String)], histogram: LatencyHistogram)]

        public init(name: String, help: String, series: [(labels: [(String, String)], histogram: LatencyHistogram)]) {
            self.name = name
            self.help = help
            self.series = series
        }
    }

    /// The exposition of `snapshot` (the `stats` result) and of `histograms`.
    public func exposition(_ snapshot: JSONValue, histograms: [Histograms] = []) -> [UInt8] {
        state.withLockedValue { state in
            var sink = Sink(registry: registry, state: state)
            sink.read(snapshot, topKeys: topKeys)
            state = sink.state
        }
        var text = registry.emitToBuffer()
        for family in histograms where !family.series.isEmpty {
            Self.write(family, into: &text)
        }
        return text
    }

    /// `# HELP`, `# TYPE`, then per series its cumulative `_bucket`s, `_sum` (seconds) and `_count`.
    static func write(_ family: Histograms, into text: inout [UInt8]) {
        func line(_ s: String) { text.append(contentsOf: s.utf8); text.append(UInt8(ascii: "\n")) }
        line("# HELP \(family.name) \(family.help)")
        line("# TYPE \(family.name) histogram")
        for (labels, h) in family.series {
            let base = labels.map { "\($0.0)=\"\(escape($0.1))\"" }.joined(separator: ",")
            let prefix = base.isEmpty ? "" : base + ","
            var cumulative = 0
            for (i, bound) in LatencyHistogram.boundsNanoseconds.enumerated() {
                cumulative += h.buckets[i]
                line("\(family.name)_bucket{\(prefix)le=\"\(Double(bound) / 1e9)\"} \(cumulative)")
            }
            line("\(family.name)_bucket{\(prefix)le=\"+Inf\"} \(h.count)")
            let braces = base.isEmpty ? "" : "{\(base)}"
            line("\(family.name)_sum\(braces) \(Double(h.sumNanoseconds) / 1e9)")
            line("\(family.name)_count\(braces) \(h.count)")
        }
    }

    /// A label value as the text format wants it: `\`, `"` and newlines escaped.
    static func escape(_ value: String) -> String {
        var out = ""
        for c in value {
            switch c {
            case "\\": out += "\\\\"
            case "\"": out += "\\\""
            case "\n": out += "\\n"
            default: out.append(c)
            }
        }
        return out
    }

    /// Writes one scrape's figures into the registry.
    struct Sink {
        let registry: PrometheusCollectorRegistry
        var state: State

        mutating func counter(_ name: String, labels: [(String, String)] = [], _ value: Double?, help: String) {
            guard let value else { return }
            let id = name + labels.map { "\u{1}\($0.0)=\($0.1)" }.joined()
            let (counter, last) = state.counters[id] ?? (registry.makeCounter(descriptor: Self.descriptor(name, help), labels: labels), 0)
            let grown = value >= last ? value - last : value
            if grown > 0 { counter.increment(by: grown) }
            state.counters[id] = (counter, value)
        }

        mutating func gauge(_ name: String, labels: [(String, String)] = [], _ value: Double?, help: String) {
            guard let value else { return }
            let id = name + labels.map { "\u{1}\($0.0)=\($0.1)" }.joined()
            let gauge = state.gauges[id] ?? registry.makeGauge(descriptor: Self.descriptor(name, help), labels: labels)
            gauge.set(value)
            state.gauges[id] = gauge
        }

        static func descriptor(_ name: String, _ help: String) -> MetricNameDescriptor {
            MetricNameDescriptor(metricName: name, unitName: "", helpText: help)
        }

        mutating func read(_ s: JSONValue, topKeys: Int) {
            gauge("cached_uptime_seconds", s["uptimeSeconds"]?.double, help: "Seconds since the daemon started.")
            for (method, c) in s["methods"]?.members ?? [] {
                counter("cached_requests_total", labels: [("method", method)], c["requests"]?.double, help: "Requests answered, by method.")
                for (code, n) in c["errorCodes"]?.members ?? [] {
                    counter("cached_request_errors_total", labels: [("method", method), ("code", code)], n.double, help: "Requests answered with an error, by method and JSON-RPC error code.")
                }
            }
            // Hits and misses by key; keys past the first `topKeys` count under "(other)".
            var other: [String: Double] = [:]
            for (key, c) in (s["keys"]?.members ?? []).sorted(by: { $0.0 < $1.0 }) {
                if !state.labeledKeys.contains(key), state.labeledKeys.count < topKeys, key != "(other)" { state.labeledKeys.insert(key) }
                for (field, name, help) in [
                    ("hits", "cached_get_hits_total", "Gets answered with a stored value, by key."),
                    ("misses", "cached_get_misses_total", "Gets that found no stored value (filled or not), by key."),
                    ("stale", "cached_get_stale_total", "Gets answered with a stale entry (stale window or grace; also hits), by key."),
                ] {
                    guard let v = c[field]?.double ?? (field == "stale" ? 0 : nil) else { continue }
                    if state.labeledKeys.contains(key) {
                        counter(name, labels: [("key", key)], v, help: help)
                    } else {
                        other[name, default: 0] += v
                    }
                }
            }
            for (name, help) in [
                ("cached_get_hits_total", "Gets answered with a stored value, by key."),
                ("cached_get_misses_total", "Gets that found no stored value (filled or not), by key."),
                ("cached_get_stale_total", "Gets answered with a stale entry (stale window or grace; also hits), by key."),
            ] {
                // (other) only grows: keys never leave it for a label.
                let v = max(other[name] ?? 0, state.other[name] ?? 0)
                state.other[name] = v
                counter(name, labels: [("key", "(other)")], v, help: help)
            }
            let c = s["connections"]
            gauge("cached_connections", c?["current"]?.double, help: "Client connections open now.")
            counter("cached_connections_total", c?["total"]?.double, help: "Client connections accepted.")
            counter("cached_connections_refused_total", c?["refused"]?.double, help: "Client connections refused (max_connections, access lists).")
            counter("cached_protocol_errors_total", s["protocolErrors"]?.double, help: "Request lines that were not valid JSON-RPC.")
            counter("cached_oversized_lines_total", s["oversizedLines"]?.double, help: "Request lines over max_line_bytes.")

            let fills = s["fills"]
            for (field, name, help) in [
                ("flights", "cached_fill_flights_total", "Handler flights started (one per missing entry, however many ask)."),
                ("joinedFlights", "cached_fill_joined_total", "Gets that joined a flight under way."),
                ("leasesGranted", "cached_leases_granted_total", "Leases handed to clients."),
                ("leaseWaits", "cached_lease_waits_total", "Gets that waited for a lease holder's value."),
                ("leasesExpired", "cached_leases_expired_total", "Leases that passed on after lease_timeout."),
                ("leasesReleased", "cached_leases_released_total", "Leases given back with release."),
                ("leasesRefused", "cached_leases_refused_total", "Lease sets refused (the lease was no longer valid)."),
                ("readsOvertaken", "cached_reads_overtaken_total", "Store misses read again because a write overtook them."),
            ] { counter(name, fills?[field]?.double, help: help) }
            gauge("cached_fills_in_flight", fills?["fillsInFlight"]?.double, help: "Handler flights under way.")
            gauge("cached_leases_out", fills?["leasesOut"]?.double, help: "Leases held by clients now.")

            for (rule, keys) in s["access"]?["refusedBy"]?.members ?? [] {
                for (key, n) in keys.members ?? [] {
                    counter(
                        "cached_access_refused_total", labels: [("rule", rule), ("key", key)], n.double,
                        help: "Requests refused by the [[access]] rules, by the peer's rules and key ((admin): stats or metrics; (any): a peer no rule names).")
                }
            }
            let tracking = s["tracking"]
            gauge("cached_tracking_connections", tracking?["connections"]?.double, help: "Client connections that asked for tracking (near caches).")
            gauge("cached_tracking_entries", tracking?["entries"]?.double, help: "Entries tracked for those connections.")
            counter("cached_tracking_notifications_total", tracking?["notifications"]?.double, help: "invalidate notifications sent to tracking connections.")
            counter("cached_tracking_slow_closed_total", tracking?["slowClosed"]?.double, help: "Tracking connections closed because they did not take a notification within 1 s.")

            let fleet = s["fleet"]
            for (field, name, help) in [
                ("locksWon", "cached_fleet_locks_won_total", "Fill locks in Redis taken by this daemon."),
                ("locksLost", "cached_fleet_locks_lost_total", "Fill locks found held by another daemon."),
                ("waits", "cached_fleet_waits_total", "Fills that waited for another daemon's fill."),
                ("waitsGaveUp", "cached_fleet_waits_gave_up_total", "Waits that ended at their deadline (filled without the lock)."),
                ("fencedOut", "cached_fleet_fenced_out_total", "Fills whose lock ended before their store (not stored)."),
                ("unfencedFills", "cached_fleet_unfenced_fills_total", "Fills made without the fleet lock (Redis failed it, or the wait gave up): not stored."),
                ("staleAnswers", "cached_stale_answers_total", "Gets answered with a stale entry in its stale window."),
                ("graceAnswers", "cached_grace_answers_total", "Gets answered with the old value after a failed refresh (grace)."),
                ("refreshes", "cached_refreshes_total", "Background refreshes started."),
                ("refreshesFailed", "cached_refresh_failures_total", "Background refreshes that failed."),
                ("earlyRefreshes", "cached_early_refreshes_total", "Background refreshes started by the XFetch rule."),
            ] { counter(name, fleet?[field]?.double, help: help) }

            for (key, h) in s["handlers"]?.members ?? [] {
                for (field, name, help) in [
                    ("calls", "cached_handler_calls_total", "Sync handler calls answered (any outcome), by key."),
                    ("failures", "cached_handler_failures_total", "Sync handler calls that failed, by key."),
                    ("timeouts", "cached_handler_timeouts_total", "Sync handler calls past their timeout, by key."),
                    ("restarts", "cached_handler_restarts_total", "Worker processes restarted, by key."),
                ] { counter(name, labels: [("key", key)], h[field]?.double, help: help) }
                for state in ["alive", "busy", "queued"] {
                    gauge("cached_handler_workers", labels: [("key", key), ("state", state)], h[state]?.double, help: "Worker processes alive and busy, and calls queued, by key.")
                }
            }

            let store = s["store"]
            gauge("cached_store_up", store?["available"].map { $0 == .bool(true) ? 1 : 0 }, help: "1 when the store can be reached.")
            gauge("cached_redis_connections", store?["connections"]?.double, help: "Redis data connections up.")
            if case .array(let nodes)? = store?["topology"]?["nodes"] {
                for node in nodes {
                    guard let address = node["address"]?.stringValue else { continue }
                    let role = node["role"]?.stringValue ?? "unknown"
                    gauge("cached_redis_node_connections", labels: [("node", address), ("role", role)], node["connections"]?.double, help: "Data connections up, by Redis node.")
                    gauge("cached_redis_node_tracking", labels: [("node", address), ("role", role)], node["tracking"].map { $0 == .bool(true) ? 1 : 0 }, help: "1 when the node's invalidation listener is up.")
                    gauge("cached_redis_node_up", labels: [("node", address), ("role", role)], node["up"]?.double, help: "1 while a data connection to the node is up.")
                    gauge("cached_redis_node_last_change_timestamp_seconds", labels: [("node", address), ("role", role)], node["lastChange"]?.double, help: "When the node last went up or down (Unix time).")
                    counter("cached_redis_node_error_replies_total", labels: [("node", address)], node["errorReplies"]?.double, help: "Redis error replies (MOVED, OOM, READONLY...), by node.")
                    counter("cached_redis_node_timeouts_total", labels: [("node", address)], node["timeouts"]?.double, help: "Redis commands past the command timeout, by node.")
                }
            }
            if let local = store?["localCache"] {
                gauge("cached_local_cache_entries", local["keys"]?.double, help: "Entries in the local copy.")
                gauge("cached_local_cache_bytes", local["bytes"]?.double, help: "Bytes held by the local copy.")
                gauge("cached_local_cache_max_bytes", local["maxBytes"]?.double, help: "The local copy's memory budget.")
                for (reason, n) in local["flushReasons"]?.members ?? [] {
                    counter("cached_local_cache_flushes_by_reason_total", labels: [("reason", reason)], n.double, help: "Times the local copy (or a node's part) was dropped, by reason.")
                }
                for (field, name, help) in [
                    ("hits", "cached_local_cache_hits_total", "Gets answered from the local copy."),
                    ("misses", "cached_local_cache_misses_total", "Local copy lookups that found nothing."),
                    ("invalidations", "cached_local_cache_invalidations_total", "Invalidations received from Redis."),
                    ("evictions", "cached_local_cache_evictions_total", "Entries evicted to stay within the memory budget."),
                    ("flushes", "cached_local_cache_flushes_total", "Times the local copy (or a node's part) was dropped."),
                    ("connectionsLost", "cached_local_cache_connections_lost_total", "Data connections that closed while their reads were held."),
                    ("nodesRemoved", "cached_local_cache_nodes_removed_total", "Redis nodes that left the topology."),
                    ("proofLapses", "cached_local_cache_proof_lapses_total", "Data connections whose freshness proof lapsed (their entries dropped)."),
                    ("lapsedHits", "cached_local_cache_lapsed_hits_total", "Hits refused because the entry's freshness proof was older than max_staleness."),
                ] { counter(name, local[field]?.double, help: help) }
                gauge("cached_local_cache_max_staleness_seconds", local["maxStaleness"]?.double, help: "The staleness bound (0: none).")
            }
        }
    }
}

extension JSONValue {
    fileprivate subscript(_ key: String) -> JSONValue? {
        guard case .object(let members) = self else { return nil }
        return members[key]
    }

    fileprivate var members: [(String, JSONValue)]? {
        guard case .object(let members) = self else { return nil }
        return members.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }
    }

    fileprivate var double: Double? {
        switch self {
        case .number(let text): Double(text)
        case .bool(let b): b ? 1 : 0
        default: nil
        }
    }
}
