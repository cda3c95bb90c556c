import Atomics
import CachedProtocol
import CachedRedis
import NIOConcurrencyHelpers
import NIOCore

/// Counters reported by the `stats` method and the metrics, counted per event loop and summed when read.
///
/// Each event loop that serves clients has its own ``Shard``: a connection takes its loop's shard once, and
/// every request it makes is counted there. A shard's lock is only ever contended by a completion that
/// ends on another loop or by a reader, so a hit never waits on a lock that other loops take.
public final class Stats: Sendable {
    /// Counters of one method or one key.
    public struct Counters: Sendable, Hashable {
        public var requests = 0
        public var errors = 0
        public var hits = 0
        public var misses = 0
        /// Hits answered with a stale entry (stale window or grace); also counted in `hits`.
        public var stale = 0

        var json: JSONValue {
            var members: [String: JSONValue] = [
                "requests": .number(String(requests)), "errors": .number(String(errors)),
                "hits": .number(String(hits)), "misses": .number(String(misses)),
            ]
            if stale > 0 { members["stale"] = .number(String(stale)) }
            return .object(members)
        }

        mutating func add(_ other: Counters) {
            requests += other.requests
            errors += other.errors
            hits += other.hits
            misses += other.misses
            stale += other.stale
        }
    }

    /// What happened to one request.
    public enum Outcome: Sendable {
        case ok, hit, miss
        /// A hit with a stale entry.
        case stale
        /// Answered with this JSON-RPC error code.
        case error(CachedError.Code)
    }

    /// Where a request's answer came from: the `source` of the request latency histogram.
    public enum Source: Int, Sendable, CaseIterable {
        /// The daemon's memory (the local copy or the embedded store), or no store at all (`ping`, `stats`).
        case memory
        /// A round trip to Redis (a read that found the entry, a write).
        case redis
        /// A fill: a sync handler call, a lease, a wait for another daemon's fill.
        case fill
        /// Answered with an error (whatever was tried).
        case error

        var label: String {
            switch self {
            case .memory: "memory"
            case .redis: "redis"
            case .fill: "fill"
            case .error: "error"
            }
        }

        /// Where `result` came from.
        public init(_ result: Result<MethodResult, CachedError>) {
            switch result {
            case .failure: self = .error
            case .success(.hit), .success(.nearHit), .success(.stale), .success(.pong), .success(.json), .success(.released): self = .memory
            case .success(.get(let hit, _)): self = hit ? .redis : .fill
            case .success(.fill): self = .fill
            case .success(.stored), .success(.storedRefused), .success(.deleted): self = .redis
            }
        }
    }

    /// The methods counted apart: `CachedMethod.allCases`, then `(unknown)`.
    static let methodCount = CachedMethod.allCases.count + 1

    static func methodName(_ index: Int) -> String {
        index < CachedMethod.allCases.count ? CachedMethod.allCases[index].rawValue : "(unknown)"
    }

    struct ErrorKey: Hashable {
        var method: Int
        var code: Int
    }

    struct ShardState {
        /// Per method, indexed by ``Stats/index(of:)``: no hashing per request.
        var methods = [Counters](repeating: Counters(), count: Stats.methodCount)
        var keys: [String: Counters] = [:]
        var errorCodes: [ErrorKey: Int] = [:]
        /// Per method and source: `method * Source.allCases.count + source`.
        var latency = [LatencyHistogram](repeating: LatencyHistogram(), count: Stats.methodCount * Source.allCases.count)
        var protocolErrors = 0
        var oversizedLines = 0
    }

    /// One event loop's counters.
    public final class Shard: Sendable {
        let state = NIOLockedValueBox(ShardState())

        /// Counts a request's outcome.
        public func record(method: String, key: String?, outcome: Outcome) {
            let index = Stats.index(of: method)
            state.withLockedValue { state in
                state.methods[index].apply(outcome)
                if case .error(let code) = outcome {
                    state.errorCodes[ErrorKey(method: index, code: code.rawValue), default: 0] += 1
                }
                if let key {
                    // One hash of the key for a key already tracked (every request after its first).
                    if let i = state.keys.index(forKey: key) {
                        state.keys.values[i].apply(outcome)
                    } else {
                        let name = state.keys.count < Stats.maxTrackedKeys ? key : "(other)"
                        state.keys[name, default: Counters()].apply(outcome)
                    }
                }
            }
        }

        /// Counts `times` requests of `method` answered from `source` after `nanoseconds` each.
        public func observe(method: String, source: Source, nanoseconds: Int64, times: Int = 1) {
            let index = Stats.index(of: method) * Source.allCases.count + source.rawValue
            state.withLockedValue { $0.latency[index].observe(nanoseconds: nanoseconds, times: times) }
        }

        func protocolError() {
            state.withLockedValue { $0.protocolErrors += 1 }
        }

        func oversizedLine() {
            state.withLockedValue { $0.oversizedLines += 1 }
        }
    }

    /// Distinct keys tracked per shard; further keys are counted under `"(other)"`.
    static let maxTrackedKeys = 1000

    /// The shards of the event loops seen so far.
    private let shards = NIOLockedValueBox<[ObjectIdentifier: Shard]>([:])
    /// For what is counted outside any event loop's requests (tests, configuration errors).
    public let common = Shard()
    private let connectionsCurrent = ManagedAtomic<Int>(0)
    private let connectionsTotal = ManagedAtomic<Int>(0)
    private let connectionsRefused = ManagedAtomic<Int>(0)

    public init() {}

    /// The shard of `eventLoop`, made on first use. A connection looks it up once, when it opens.
    public func shard(for eventLoop: any EventLoop) -> Shard {
        let id = ObjectIdentifier(eventLoop)
        return shards.withLockedValue { shards in
            if let shard = shards[id] { return shard }
            let shard = Shard()
            shards[id] = shard
            return shard
        }
    }

    static let methodIndex: [String: Int] = Dictionary(
        uniqueKeysWithValues: CachedMethod.allCases.enumerated().map { ($1.rawValue, $0) })

    static func index(of method: String) -> Int {
        switch method {  // the common ones without hashing
        case "get": 0
        case "set": 1
        default: methodIndex[method] ?? CachedMethod.allCases.count
        }
    }

    /// Counts a request's outcome in the common shard (``Shard/record(method:key:outcome:)`` counts it in a loop's).
    public func record(method: String, key: String?, outcome: Outcome) {
        common.record(method: method, key: key, outcome: outcome)
    }

    public func connectionOpened() {
        connectionsCurrent.wrappingIncrement(ordering: .relaxed)
        connectionsTotal.wrappingIncrement(ordering: .relaxed)
    }

    public func connectionClosed() {
        connectionsCurrent.wrappingDecrement(ordering: .relaxed)
    }

    public func connectionRefused() {
        connectionsRefused.wrappingIncrement(ordering: .relaxed)
    }

    public func protocolError() { common.protocolError() }

    public func oversizedLine() { common.oversizedLine() }

    public var currentConnections: Int { connectionsCurrent.load(ordering: .relaxed) }

    /// Every shard's counters added up.
    func total() -> ShardState {
        var all = [common] + shards.withLockedValue { Array($0.values) }
        var sum = ShardState()
        while let shard = all.popLast() {
            let s = shard.state.withLockedValue { $0 }
            for i in sum.methods.indices { sum.methods[i].add(s.methods[i]) }
            for (key, c) in s.keys {
                if let i = sum.keys.index(forKey: key) {
                    sum.keys.values[i].add(c)
                } else if sum.keys.count < Self.maxTrackedKeys || key == "(other)" {
                    sum.keys[key] = c
                } else {
                    sum.keys["(other)", default: Counters()].add(c)
                }
            }
            sum.errorCodes.merge(s.errorCodes, uniquingKeysWith: +)
            for i in sum.latency.indices { sum.latency[i].add(s.latency[i]) }
            sum.protocolErrors += s.protocolErrors
            sum.oversizedLines += s.oversizedLines
        }
        return sum
    }

    /// Total requests so far.
    public var totalRequests: Int {
        total().methods.reduce(0) { $0 + $1.requests }
    }

    /// The request latency histograms with anything in them, by method and source.
    func latencyHistograms(_ s: ShardState) -> [(method: String, source: Source, histogram: LatencyHistogram)] {
        var result: [(String, Source, LatencyHistogram)] = []
        for (i, h) in s.latency.enumerated() where h.count > 0 {
            let sources = Source.allCases.count
            result.append((Self.methodName(i / sources), Source(rawValue: i % sources)!, h))
        }
        return result
    }

    /// The `stats` result, and the latency histograms it summarises (for the metrics).
    public func snapshot(store: StoreStatus, uptimeSeconds: Double) -> JSONValue {
        snapshotWithHistograms(store: store, uptimeSeconds: uptimeSeconds).json
    }

    func snapshotWithHistograms(
        store: StoreStatus, uptimeSeconds: Double
    ) -> (json: JSONValue, latency: [(method: String, source: Source, histogram: LatencyHistogram)]) {
        let s = total()
        var storeJSON = store.detail
        storeJSON["kind"] = .string(store.kind)
        storeJSON["available"] = .bool(store.available)
        var methods: [String: JSONValue] = [:]
        for (i, c) in s.methods.enumerated() where c.requests > 0 {
            guard case .object(var members) = c.json else { continue }
            let codes = s.errorCodes.filter { $0.key.method == i }
            if !codes.isEmpty {
                members["errorCodes"] = .object(Dictionary(uniqueKeysWithValues: codes.map { (String($0.key.code), .number(String($0.value))) }))
            }
            methods[Self.methodName(i)] = .object(members)
        }
        let latency = latencyHistograms(s)
        var latencyJSON: [String: JSONValue] = [:]
        for (method, source, h) in latency {
            guard case .object(var bySource) = latencyJSON[method] ?? .object([:]) else { continue }
            bySource[source.label] = .object([
                "count": .number(String(h.count)),
                "p50": .number(h.quantile(0.5).map { String($0) } ?? "0"),
                "p99": .number(h.quantile(0.99).map { String($0) } ?? "0"),
                "buckets": .array(h.buckets.map { .number(String($0)) }),
            ])
            latencyJSON[method] = .object(bySource)
        }
        let json = JSONValue.object([
            "uptimeSeconds": .number(String(format3(uptimeSeconds))),
            "requests": .number(String(s.methods.reduce(0) { $0 + $1.requests })),
            "methods": .object(methods),
            "keys": .object(s.keys.mapValues(\.json)),
            "latency": .object(latencyJSON),
            // The upper bounds (seconds) of `latency.*.*.buckets`; the last bucket has none (+Inf).
            "latencyBuckets": .array(LatencyHistogram.boundsNanoseconds.map { .number(String(Double($0) / 1e9)) }),
            "connections": .object([
                "current": .number(String(connectionsCurrent.load(ordering: .relaxed))),
                "total": .number(String(connectionsTotal.load(ordering: .relaxed))),
                "refused": .number(String(connectionsRefused.load(ordering: .relaxed))),
            ]),
            "protocolErrors": .number(String(s.protocolErrors)),
            "oversizedLines": .number(String(s.oversizedLines)),
            "store": .object(storeJSON),
        ])
        return (json, latency)
    }

    private func format3(_ x: Double) -> String {
        let millis = Int((x * 1000).rounded())
        let frac = millis % 1000
        return "\(millis / 1000)." + String(repeating: "0", count: 3 - String(frac).count) + String(frac)
    }
}

extension Stats.Counters {
    mutating func apply(_ outcome: Stats.Outcome) {
        requests += 1
        switch outcome {
        case .ok: break
        case .hit: hits += 1
        case .stale:
            hits += 1
            stale += 1
        case .miss: misses += 1
        case .error: errors += 1
        }
    }
}
