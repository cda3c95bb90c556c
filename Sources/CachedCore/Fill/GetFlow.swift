import CachedProtocol
import NIOCore

/// What one `get` goes through after it missed the daemon's memory, as a pure machine: which read, flight
/// or wait comes next, when a miss that a write overtook is read again, when an entry's phase (stale,
/// grace, expired) decides the answer, and when the request's deadline stops it.
///
/// The entry's shared state (its flight and waiters, its lease, write epochs, the fleet lock behind a
/// lease, negative entries, the fallback cap, refresh backoff) is ``FillStateMachine``'s; this machine is
/// the request's own half: it holds only how far the request got. The dispatcher's executor
/// (`RequestDispatcher+getFlow.swift`) runs each ``Step``, turns what came back into an ``Event``, and asks
/// for the next step, until one answers.
struct GetFlow: Sendable {
    /// How many times a miss is read again after a write overtook it before it is answered as a plain
    /// miss (lease flow) or the handler is called anyway (handler flight).
    static let maximumRereads = 3

    /// What the key is, for this request.
    struct Key: Sendable, Equatable {
        /// The key has a sync handler (its misses are filled by the daemon).
        var hasHandler: Bool
        /// The key has a stale window, grace or early refresh (and a handler to refresh it): its get reads
        /// the entry's age first.
        var aged: Bool
        /// The request may take a lease (`lease`, default true).
        var mayLease: Bool
    }

    /// What the executor does next.
    enum Step: Sendable {
        /// One aged read (value, `PTTL`, delta) of the entry: then ``Event/agedRead(_:)``, or
        /// ``Event/agedReadFailed(storeDown:)``.
        case readAged
        /// Join the handler flight under way for the entry; with none, start one when `start` (then
        /// ``Event/flightAnswered(_:)``), else ``Event/noFlight``.
        case flight(start: Bool)
        /// A store read; on a miss, the fill machine's lease, wait or plain miss (`mayLease`): then
        /// ``Event/leaseAnswered(_:)``, or ``Event/stored(_:)`` when the read found the entry.
        case leaseRead(mayLease: Bool)
        /// The entry is in grace: wait for one refresh (``Event/refreshAnswered(_:)``, or
        /// ``Event/refreshFailed``), answering the old value if it fails.
        case refreshInGrace(stale: EncodedValue)
        /// Answer now. `refresh`: start one background refresh too (stale, or early by XFetch).
        case answer(MethodResult, refresh: Refresh?)
        /// The old value in grace, unless the entry changed since the grace read: the executor checks
        /// (``Event/graceChecked(unchanged:)``).
        case checkGrace(stale: EncodedValue)
        /// The request's deadline passed before its next read: -32009.
        case deadlinePassed
    }

    /// A background refresh to start with an answer.
    struct Refresh: Sendable {
        var expected: ByteBuffer
        var early: Bool
    }

    /// What came back from a step.
    enum Event: Sendable {
        /// The aged read: the entry (with its age when it has one), or nil.
        case agedRead(EncodedValue?)
        /// The aged read failed: `storeDown` (-32000), else another store error.
        case agedReadFailed(storeDown: Bool)
        /// No flight under way and the key has no handler.
        case noFlight
        /// The handler flight's verdict.
        case flightAnswered(FillCoordinator.Verdict)
        /// The lease read found the entry.
        case stored(ByteBuffer)
        /// The lease read missed: the fill machine's verdict.
        case leaseAnswered(FillCoordinator.Verdict)
        /// The refresh waited for in grace.
        case refreshAnswered(FillCoordinator.Verdict)
        /// The refresh waited for in grace failed.
        case refreshFailed
        /// Whether the entry is unchanged since the grace read.
        case graceChecked(unchanged: Bool)
    }

    let key: Key
    /// Reads asked again so far (a write overtook them).
    private(set) var attempt = 0
    /// The next pass starts with the aged read (false once it missed or the store was down for it).
    private var agedFirst = true
    /// In the lease loop: a re-read stays a lease read.
    private var inLeaseLoop = false

    init(_ key: Key) {
        self.key = key
    }

    /// The first step.
    mutating func start() -> Step {
        decide(deadlinePassed: false)
    }

    /// The step after `event`; `deadlinePassed`: the request's deadline has passed (a re-read is not sent).
    mutating func next(_ event: Event, deadlinePassed: Bool) -> Step {
        switch event {
        case .agedRead(nil), .agedReadFailed(storeDown: true):
            // No entry, or Redis down: the flight (or its fallback, the handler's value) answers.
            agedFirst = false
            return decide(deadlinePassed: deadlinePassed)
        case .agedReadFailed(storeDown: false):
            preconditionFailure("the executor fails the request on a store error of the aged read")
        case .agedRead(let value?):
            guard let age = value.age else { return .answer(.get(hit: true, value: value.raw), refresh: nil) }
            return phase(value, age, now: .now(), random: Double.random(in: 0..<1), deadlinePassed: deadlinePassed)
        case .noFlight:
            return lease(deadlinePassed: deadlinePassed)
        case .flightAnswered(let verdict):
            switch verdict {
            case .readAgain, .busy: return again(deadlinePassed: deadlinePassed)
            default: return .answer(Self.result(of: verdict), refresh: nil)
            }
        case .stored(let value):
            return .answer(.get(hit: true, value: value), refresh: nil)
        case .leaseAnswered(let verdict):
            switch verdict {
            case .readAgain, .busy:
                attempt += 1
                return lease(deadlinePassed: deadlinePassed)
            default: return .answer(Self.result(of: verdict), refresh: nil)
            }
        case .refreshAnswered(let verdict):
            switch verdict {
            case .value(let value?, let cached): return .answer(.fill(value: value, lease: nil, cached: cached), refresh: nil)
            case .inStore(let value?): return .answer(.get(hit: true, value: value), refresh: nil)
            case .value(nil, _), .inStore(nil): return .answer(.get(hit: false, value: nil), refresh: nil)
            case .busy: return .checkGrace(stale: pendingStale!)
            case .readAgain, .miss, .lease:
                // A write of the entry overtook the refresh: what it wrote is the answer.
                return again(deadlinePassed: deadlinePassed)
            }
        case .refreshFailed:
            return .checkGrace(stale: pendingStale!)
        case .graceChecked(let unchanged):
            guard unchanged else { return again(deadlinePassed: deadlinePassed) }
            return .answer(.stale(pendingStale!), refresh: nil)
        }
    }

    /// The entry's phase decides: a plain hit (maybe with an early refresh), a stale answer with one
    /// background refresh, a wait for a refresh in grace, or (expired in between) the read again.
    mutating func phase(_ value: EncodedValue, _ age: EntryAge, now: NIODeadline, random: Double, deadlinePassed: Bool) -> Step {
        switch age.phase(at: now) {
        case .fresh:
            let early = age.beta > 0 && age.shouldRefreshEarly(at: now, random: random)
            return .answer(.hit(value), refresh: early ? Refresh(expected: value.raw, early: true) : nil)
        case .stale:
            return .answer(.stale(value), refresh: Refresh(expected: value.raw, early: false))
        case .grace:
            pendingStale = value
            return .refreshInGrace(stale: value)
        case .expired:
            // Gone from Redis by now (the local copy never outlives it; this is the instant in between).
            agedFirst = true
            return decide(deadlinePassed: deadlinePassed)
        }
    }

    /// The old value a grace wait answers if its refresh fails.
    private(set) var pendingStale: EncodedValue?

    /// A write overtook what this request waited for: it asks again (a new pass, aged read first).
    private mutating func again(deadlinePassed: Bool) -> Step {
        attempt += 1
        agedFirst = true
        return decide(deadlinePassed: deadlinePassed)
    }

    private mutating func decide(deadlinePassed: Bool) -> Step {
        if attempt > 0 && deadlinePassed { return .deadlinePassed }
        if inLeaseLoop { return lease(deadlinePassed: deadlinePassed) }
        if agedFirst && key.aged && attempt < Self.maximumRereads { return .readAged }
        if attempt >= Self.maximumRereads {
            // Writes kept overtaking the flights this get joined: one plain read, no flight, no lease.
            return lease(deadlinePassed: deadlinePassed)
        }
        return .flight(start: key.hasHandler)
    }

    private mutating func lease(deadlinePassed: Bool) -> Step {
        if attempt > 0 && deadlinePassed { return .deadlinePassed }
        inLeaseLoop = true
        // After repeated overtaken reads, a miss is still a miss that was true at some instant, but not
        // trusted enough to make someone fill: it is answered without a lease.
        return .leaseRead(mayLease: key.mayLease && attempt < Self.maximumRereads)
    }

    /// The answer of a fill machine's verdict.
    static func result(of answer: FillCoordinator.Verdict) -> MethodResult {
        switch answer {
        case .inStore(let value): .get(hit: value != nil, value: value)
        case .value(let value, let cached): .fill(value: value, lease: nil, cached: cached)
        case .lease(let token): .fill(value: nil, lease: token, cached: true)
        case .miss, .readAgain, .busy: .get(hit: false, value: nil)
        }
    }
}
