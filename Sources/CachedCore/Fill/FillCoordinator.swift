import CachedProtocol
import NIOConcurrencyHelpers
import NIOCore

/// Makes one fill per missing entry, however many clients ask at once.
///
/// Two kinds of flight share one table, keyed by the entry's place in the store:
/// - a *handler fill*: the first miss runs the key's sync handler; later misses for the same entry
///   join it and receive its value (or its error);
/// - a *lease*: for a key without a handler, the first miss gets a token and fills the entry itself;
///   later misses wait for the value it stores. A lease ends when the holder stores with its token,
///   when the entry is written or deleted by anyone else (the token is then refused), when the holder
///   disconnects, or when it times out; in the last two cases the next waiter gets a new lease.
///
/// All state sits behind one lock; promises are completed after the lock is released.
public final class FillCoordinator: Sendable {
    /// An entry's identity in the store.
    public struct EntryKey: Hashable, Sendable {
        public var storeKey: String
        public var field: String?
        public init(_ address: EntryAddress) {
            storeKey = address.storeKey
            field = address.storeField
        }
    }

    /// What a flight produced.
    public enum FillOutcome: Sendable {
        /// The flight's own store read found the entry, or the negative cache knows it is absent (nil).
        case inStore(ByteBuffer?)
        /// The handler's value (nil = no such entry); `stored` is false when it could not be stored.
        case filled(ByteBuffer?, stored: Bool)
    }

    /// What a waiting `get` is answered with.
    public enum Answer: Sendable {
        /// The flight found the entry in the store (nil: known to be absent); no handler ran.
        case inStore(ByteBuffer?)
        /// The filled value (nil = no such entry); `cached` is false when it could not be stored.
        case value(ByteBuffer?, cached: Bool)
        /// The caller now holds the lease and should fill the entry.
        case lease(String)
    }

    struct Waiter {
        var connection: ConnectionID
        var promise: EventLoopPromise<Answer>
    }

    struct Fill {
        var waiters: [EventLoopPromise<Answer>] = []
        /// Set when the entry is written or deleted while the handler runs: its value is then not stored.
        var invalidated = false
    }

    struct Lease {
        var token: String
        var holder: ConnectionID
        /// Seconds each holder has to fill before the lease passes on.
        var timeout: Double
        var waiters: [Waiter] = []
        var expiry: Scheduled<Void>?
    }

    enum Flight {
        case fill(Fill)
        case lease(Lease)
    }

    struct State {
        var flights: [EntryKey: Flight] = [:]
        var negatives: [EntryKey: NIODeadline] = [:]
        var fallbacks: [String: Int] = [:]
        var handlerFills = 0
        var joinedFills = 0
        var leasesGranted = 0
        var leaseWaits = 0
        var leasesRefused = 0
    }

    private let state = NIOLockedValueBox(State())

    public init() {}

    // MARK: Handler fills

    /// Joins the fill in flight for `key`, or starts one with `fill` (which runs outside the lock).
    ///
    /// - Parameter fill: produces the value and whether it was stored; it is given a closure that tells
    ///   whether the fill is still valid (no write or delete of the entry happened meanwhile).
    public func handlerFill(
        _ key: EntryKey, on eventLoop: any EventLoop,
        fill: @escaping @Sendable (_ stillValid: @escaping @Sendable () -> Bool) -> EventLoopFuture<FillOutcome>
    ) -> EventLoopFuture<Answer> {
        let promise = eventLoop.makePromise(of: Answer.self)
        let start: Bool = state.withLockedValue { state in
            switch state.flights[key] {
            case .fill(var f)?:
                f.waiters.append(promise)
                state.flights[key] = .fill(f)
                state.joinedFills += 1
                return false
            case .lease?, nil:
                // A lease cannot coexist for a key with a handler; treat it as absent.
                state.flights[key] = .fill(Fill(waiters: [promise]))
                state.handlerFills += 1
                return true
            }
        }
        guard start else { return promise.futureResult }
        let stillValid: @Sendable () -> Bool = { [weak self] in
            guard let self else { return false }
            return self.state.withLockedValue { state in
                if case .fill(let f)? = state.flights[key] { return !f.invalidated }
                return false
            }
        }
        fill(stillValid).whenComplete { result in
            let waiters: [EventLoopPromise<Answer>] = self.state.withLockedValue { state in
                guard case .fill(let f)? = state.flights[key] else { return [] }
                state.flights[key] = nil
                return f.waiters
            }
            for waiter in waiters {
                switch result {
                case .success(.inStore(let value)): waiter.succeed(.inStore(value))
                case .success(.filled(let value, let stored)): waiter.succeed(.value(value, cached: stored))
                case .failure(let error): waiter.fail(error)
                }
            }
        }
        return promise.futureResult
    }

    /// Joins the handler fill in flight for `key`, if there is one: a miss that arrives while the
    /// handler runs waits for its value without reading the store first.
    public func joinFill(_ key: EntryKey, on eventLoop: any EventLoop) -> EventLoopFuture<Answer>? {
        state.withLockedValue { state -> EventLoopFuture<Answer>? in
            guard case .fill(var f)? = state.flights[key] else { return nil }
            let promise = eventLoop.makePromise(of: Answer.self)
            f.waiters.append(promise)
            state.flights[key] = .fill(f)
            state.joinedFills += 1
            return promise.futureResult
        }
    }

    // MARK: Leases

    /// A miss on a key without a handler: a lease for the first asker, a wait for the others.
    public func leaseMiss(_ key: EntryKey, context: RequestContext, leaseTimeout: Double) -> EventLoopFuture<Answer> {
        let promise = context.eventLoop.makePromise(of: Answer.self)
        var abandoned: Scheduled<Void>?
        let granted: String? = state.withLockedValue { state in
            if case .lease(var lease)? = state.flights[key] {
                if lease.holder == context.connection {
                    // The holder asks again: it gave up its fill. A new token for it; the old one is refused.
                    abandoned = lease.expiry
                    lease.token = Self.makeToken()
                    lease.expiry = nil
                    state.flights[key] = .lease(lease)
                    state.leasesGranted += 1
                    return lease.token
                }
                lease.waiters.append(Waiter(connection: context.connection, promise: promise))
                state.flights[key] = .lease(lease)
                state.leaseWaits += 1
                return nil
            }
            if case .fill(var f)? = state.flights[key] {  // a handler fill in flight (key reconfigured): join it
                f.waiters.append(promise)
                state.flights[key] = .fill(f)
                return nil
            }
            let token = Self.makeToken()
            state.flights[key] = .lease(Lease(token: token, holder: context.connection, timeout: leaseTimeout))
            state.leasesGranted += 1
            return token
        }
        abandoned?.cancel()
        if let granted {
            scheduleExpiry(key, token: granted, after: leaseTimeout, on: context.eventLoop)
            promise.succeed(.lease(granted))
        }
        return promise.futureResult
    }

    /// A `set` with a lease token: whether the token is the live lease of this entry. If it is, the
    /// lease ends and its waiters are returned to be woken with the stored value.
    public func redeemLease(_ key: EntryKey, token: String) -> (accepted: Bool, waiters: [EventLoopPromise<Answer>]) {
        let result: (Bool, [EventLoopPromise<Answer>], Scheduled<Void>?) = state.withLockedValue { state in
            guard case .lease(let lease)? = state.flights[key], lease.token == token else {
                state.leasesRefused += 1
                return (false, [], nil)
            }
            state.flights[key] = nil
            state.negatives[key] = nil
            return (true, lease.waiters.map(\.promise), lease.expiry)
        }
        result.2?.cancel()
        return (result.0, result.1)
    }

    /// The entry was written without a lease: a lease in flight ends (its token will be refused) and
    /// its waiters are returned to be woken with the value; a handler fill in flight will not be stored.
    public func entryWritten(_ key: EntryKey) -> [EventLoopPromise<Answer>] {
        let (waiters, expiry): ([EventLoopPromise<Answer>], Scheduled<Void>?) = state.withLockedValue { state in
            state.negatives[key] = nil
            switch state.flights[key] {
            case .lease(let lease)?:
                state.flights[key] = nil
                return (lease.waiters.map(\.promise), lease.expiry)
            case .fill(var f)?:
                f.invalidated = true
                state.flights[key] = .fill(f)
                return ([], nil)
            case nil:
                return ([], nil)
            }
        }
        expiry?.cancel()
        return waiters
    }

    /// The entry was deleted: a lease in flight is revoked (a late `set` with it is refused) and handed
    /// to the next waiter; a handler fill in flight will not be stored.
    public func entryDeleted(_ key: EntryKey) {
        revoke { $0 == key }
    }

    /// A whole hash was deleted: as ``entryDeleted(_:)`` for each of its fields.
    public func hashDeleted(_ storeKey: String) {
        revoke { $0.storeKey == storeKey && $0.field != nil }
    }

    /// A client connection closed: its leases pass to the next waiter, its waits are dropped.
    public func connectionClosed(_ connection: ConnectionID) {
        var handOvers: [(EntryKey, Waiter, String, Double)] = []
        var dropped: [EventLoopPromise<Answer>] = []
        var cancelled: [Scheduled<Void>] = []
        state.withLockedValue { state in
            for (key, flight) in state.flights {
                guard case .lease(var lease) = flight else { continue }
                let mine = lease.waiters.filter { $0.connection == connection }
                if !mine.isEmpty {
                    dropped += mine.map(\.promise)
                    lease.waiters.removeAll { $0.connection == connection }
                }
                if lease.holder == connection {
                    Self.passOn(key, lease, in: &state, handOvers: &handOvers, cancelled: &cancelled)
                } else {
                    state.flights[key] = .lease(lease)
                }
            }
        }
        cancelled.forEach { $0.cancel() }
        for promise in dropped { promise.fail(CachedError(.shuttingDown, "connection closed")) }
        deliver(handOvers)
    }

    /// Answers each new lease holder, after its lease's expiry is scheduled (outside the lock).
    private func deliver(_ handOvers: [(EntryKey, Waiter, String, Double)]) {
        for (key, waiter, token, timeout) in handOvers {
            scheduleExpiry(key, token: token, after: timeout, on: waiter.promise.futureResult.eventLoop)
            waiter.promise.succeed(.lease(token))
        }
    }

    // MARK: Negative entries

    /// Remembers that the handler said "no such entry", for `seconds`.
    public func rememberAbsent(_ key: EntryKey, for seconds: Double) {
        guard seconds > 0 else { return }
        let deadline = NIODeadline.now() + .nanoseconds(Int64(seconds * 1e9))
        state.withLockedValue { state in
            if state.negatives.count > 100_000 { state.negatives.removeAll() }  // bounded
            state.negatives[key] = deadline
        }
    }

    /// Whether the handler recently said "no such entry".
    public func isKnownAbsent(_ key: EntryKey) -> Bool {
        state.withLockedValue { state in
            guard let deadline = state.negatives[key] else { return false }
            if deadline <= .now() {
                state.negatives[key] = nil
                return false
            }
            return true
        }
    }

    // MARK: Fallback cap

    /// Takes a slot for a handler call while the store is down; false if `limit` are already running.
    public func acquireFallback(_ key: String, limit: Int) -> Bool {
        state.withLockedValue { state in
            let n = state.fallbacks[key, default: 0]
            guard n < limit else { return false }
            state.fallbacks[key] = n + 1
            return true
        }
    }

    public func releaseFallback(_ key: String) {
        state.withLockedValue { state in
            state.fallbacks[key, default: 1] -= 1
        }
    }

    // MARK: Stats

    public var statistics: JSONValue {
        state.withLockedValue { s in
            var leases = 0
            var fills = 0
            for flight in s.flights.values {
                switch flight {
                case .lease: leases += 1
                case .fill: fills += 1
                }
            }
            return .object([
                "flights": .number(String(s.handlerFills)), "joinedFlights": .number(String(s.joinedFills)),
                "leasesGranted": .number(String(s.leasesGranted)), "leaseWaits": .number(String(s.leaseWaits)),
                "leasesRefused": .number(String(s.leasesRefused)),
                "fillsInFlight": .number(String(fills)), "leasesOut": .number(String(leases)),
            ])
        }
    }

    // MARK: Internals

    private func revoke(_ matches: (EntryKey) -> Bool) {
        var handOvers: [(EntryKey, Waiter, String, Double)] = []
        var cancelled: [Scheduled<Void>] = []
        state.withLockedValue { state in
            for (key, flight) in state.flights where matches(key) {
                state.negatives[key] = nil
                switch flight {
                case .fill(var f):
                    f.invalidated = true
                    state.flights[key] = .fill(f)
                case .lease(let lease):
                    Self.passOn(key, lease, in: &state, handOvers: &handOvers, cancelled: &cancelled)
                }
            }
            for key in state.negatives.keys where matches(key) { state.negatives[key] = nil }
        }
        cancelled.forEach { $0.cancel() }
        deliver(handOvers)
    }

    /// Ends the current holder's lease: the first waiter gets a new one, or the flight ends when nobody waits.
    private static func passOn(
        _ key: EntryKey, _ lease: Lease, in state: inout State,
        handOvers: inout [(EntryKey, Waiter, String, Double)], cancelled: inout [Scheduled<Void>]
    ) {
        var lease = lease
        if let e = lease.expiry { cancelled.append(e) }
        if let (next, token) = handOver(&lease, in: &state) {
            handOvers.append((key, next, token, lease.timeout))
            state.flights[key] = .lease(lease)
        } else {
            state.flights[key] = nil
        }
    }

    /// Gives the lease to the first waiter (new token); nil when nobody waits.
    private static func handOver(_ lease: inout Lease, in state: inout State) -> (Waiter, String)? {
        guard !lease.waiters.isEmpty else { return nil }
        let next = lease.waiters.removeFirst()
        lease.token = makeToken()
        lease.holder = next.connection
        lease.expiry = nil
        state.leasesGranted += 1
        return (next, lease.token)
    }

    private func scheduleExpiry(_ key: EntryKey, token: String, after seconds: Double, on eventLoop: any EventLoop) {
        let task = eventLoop.scheduleTask(in: .nanoseconds(Int64(seconds * 1e9))) { [weak self] in
            guard let self else { return }
            self.expire(key, token: token)
        }
        let stale = state.withLockedValue { state -> Bool in
            guard case .lease(var lease)? = state.flights[key], lease.token == token else { return true }
            lease.expiry = task
            state.flights[key] = .lease(lease)
            return false
        }
        if stale { task.cancel() }
    }

    private func expire(_ key: EntryKey, token: String) {
        let handOver: (Waiter, String, Double)? = state.withLockedValue { state in
            guard case .lease(var lease)? = state.flights[key], lease.token == token else { return nil }
            if let (waiter, newToken) = Self.handOver(&lease, in: &state) {
                state.flights[key] = .lease(lease)
                return (waiter, newToken, lease.timeout)
            }
            state.flights[key] = nil
            return nil
        }
        if let (waiter, newToken, seconds) = handOver {
            deliver([(key, waiter, newToken, seconds)])
        }
    }

    static func makeToken() -> String {
        var rng = SystemRandomNumberGenerator()
        let a = rng.next() as UInt64
        let b = rng.next() as UInt64
        let hex = String(a, radix: 16) + String(b, radix: 16)
        return String(repeating: "0", count: max(0, 32 - hex.count)) + hex
    }
}
