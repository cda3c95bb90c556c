import NIOConcurrencyHelpers

/// Callbacks waiting for a change of a Redis key, fed by the invalidations of Redis client-side caching
/// (a daemon waiting for another daemon's fill learns of it this way).
public final class KeyWatchers: Sendable {
    /// One registration.
    public struct Watch: Sendable, Hashable {
        let id: UInt64
        let key: String
    }

    struct State {
        var next: UInt64 = 0
        var byKey: [String: [UInt64: @Sendable () -> Void]] = [:]
        var count = 0
    }

    private let state = NIOLockedValueBox(State())

    public init() {}

    public func add(_ key: String, _ wake: @escaping @Sendable () -> Void) -> Watch {
        state.withLockedValue { state in
            state.next += 1
            state.byKey[key, default: [:]][state.next] = wake
            state.count += 1
            return Watch(id: state.next, key: key)
        }
    }

    public func remove(_ watch: Watch) {
        state.withLockedValue { state in
            guard state.byKey[watch.key]?.removeValue(forKey: watch.id) != nil else { return }
            state.count -= 1
            if state.byKey[watch.key]?.isEmpty == true { state.byKey[watch.key] = nil }
        }
    }

    /// These keys changed.
    public func changed(_ keys: [String]) {
        let wakes: [@Sendable () -> Void] = state.withLockedValue { state in
            guard state.count > 0 else { return [] }
            return keys.flatMap { state.byKey[$0].map { Array($0.values) } ?? [] }
        }
        for wake in wakes { wake() }
    }

    /// Anything may have changed (a flush, a lost listener, a failover).
    public func changedAll() {
        let wakes = state.withLockedValue { state in state.byKey.values.flatMap(\.values) }
        for wake in wakes { wake() }
    }

    /// Watches registered now.
    public var count: Int { state.withLockedValue { $0.count } }
}
