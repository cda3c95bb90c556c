import CachedProtocol
import NIOConcurrencyHelpers

/// Counters reported by the `stats` method.
public final class Stats: Sendable {
    /// Counters of one method or one key.
    public struct Counters: Sendable, Hashable {
        public var requests = 0
        public var errors = 0
        public var hits = 0
        public var misses = 0

        var json: JSONValue {
            .object([
                "requests": .number(String(requests)), "errors": .number(String(errors)),
                "hits": .number(String(hits)), "misses": .number(String(misses)),
            ])
        }
    }

    /// What happened to one request.
    public enum Outcome: Sendable {
        case ok, hit, miss, error
    }

    struct State {
        /// Per method, indexed like `CachedMethod.allCases`, then "(unknown)": no hashing per request.
        var methods = [Counters](repeating: Counters(), count: CachedMethod.allCases.count + 1)
        var keys: [String: Counters] = [:]
        var connectionsCurrent = 0
        var connectionsTotal = 0
        var connectionsRefused = 0
        var protocolErrors = 0
        var oversizedLines = 0
    }

    /// Distinct keys tracked; further keys are counted under `"(other)"`.
    static let maxTrackedKeys = 1000

    private let state = NIOLockedValueBox(State())

    public init() {}

    static let methodIndex: [String: Int] = Dictionary(
        uniqueKeysWithValues: CachedMethod.allCases.enumerated().map { ($1.rawValue, $0) })

    static func index(of method: String) -> Int {
        switch method {  // the common ones without hashing
        case "get": 0
        case "set": 1
        default: methodIndex[method] ?? CachedMethod.allCases.count
        }
    }

    public func record(method: String, key: String?, outcome: Outcome) {
        let index = Self.index(of: method)
        state.withLockedValue { state in
            state.methods[index].apply(outcome)
            if let key {
                // One hash of the key for a key already tracked (every request after its first).
                if let index = state.keys.index(forKey: key) {
                    state.keys.values[index].apply(outcome)
                } else {
                    let name = state.keys.count < Self.maxTrackedKeys ? key : "(other)"
                    state.keys[name, default: Counters()].apply(outcome)
                }
            }
        }
    }

    public func connectionOpened() {
        state.withLockedValue {
            $0.connectionsCurrent += 1
            $0.connectionsTotal += 1
        }
    }

    public func connectionClosed() {
        state.withLockedValue { $0.connectionsCurrent -= 1 }
    }

    public func connectionRefused() {
        state.withLockedValue { $0.connectionsRefused += 1 }
    }

    public func protocolError() {
        state.withLockedValue { $0.protocolErrors += 1 }
    }

    public func oversizedLine() {
        state.withLockedValue { $0.oversizedLines += 1 }
    }

    public var currentConnections: Int { state.withLockedValue { $0.connectionsCurrent } }

    /// Total requests so far.
    public var totalRequests: Int {
        state.withLockedValue { $0.methods.reduce(0) { $0 + $1.requests } }
    }

    /// The `stats` result.
    public func snapshot(store: StoreStatus, uptimeSeconds: Double) -> JSONValue {
        let s = state.withLockedValue { $0 }
        var storeJSON = store.detail
        storeJSON["kind"] = .string(store.kind)
        storeJSON["available"] = .bool(store.available)
        return .object([
            "uptimeSeconds": .number(String(format3(uptimeSeconds))),
            "requests": .number(String(s.methods.reduce(0) { $0 + $1.requests })),
            "methods": .object(Dictionary(uniqueKeysWithValues: s.methods.enumerated().compactMap { i, c in
                c.requests == 0 ? nil : (i < CachedMethod.allCases.count ? CachedMethod.allCases[i].rawValue : "(unknown)", c.json)
            })),
            "keys": .object(s.keys.mapValues(\.json)),
            "connections": .object([
                "current": .number(String(s.connectionsCurrent)), "total": .number(String(s.connectionsTotal)),
                "refused": .number(String(s.connectionsRefused)),
            ]),
            "protocolErrors": .number(String(s.protocolErrors)),
            "oversizedLines": .number(String(s.oversizedLines)),
            "store": .object(storeJSON),
        ])
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
        case .miss: misses += 1
        case .error: errors += 1
        }
    }
}
