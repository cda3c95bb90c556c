import CachedProtocol
import NIOConcurrencyHelpers
import NIOCore

/// The Swift client's near cache (``CachedClient/init(socketPath:eventLoopGroup:maximumAnswerBytes:nearCache:)``):
/// `get` answers kept in the process, dropped by the daemon's `invalidate` notifications (docs/protocol.md,
/// `track`). Only answers that carry `nearTTL` are kept, for at most that long; an answer that a
/// notification about its entry overtook while its `get` was in flight is not kept. Past `capacity` the
/// entry kept longest ago goes first.
final class NearCache: Sendable {
    struct Kept {
        var result: GetResult
        var deadline: NIODeadline
    }

    struct State {
        var entries: [EntryAddress: Kept] = [:]
        /// Insertion order from `head` on, for the bound (an address may appear again after it was dropped
        /// and kept anew).
        var order: [EntryAddress] = []
        var head = 0
        /// Gets in flight per address, and whether a notification about it came meanwhile.
        var inFlight: [EntryAddress: (count: Int, invalidated: Bool)] = [:]
        /// The connection the entries came from; a new connection starts empty.
        var connection = 0
        var hits = 0
        var misses = 0
    }

    let capacity: Int
    private let state = NIOLockedValueBox(State())

    init(capacity: Int) {
        self.capacity = capacity
    }

    /// The kept answer, if any and not past its `nearTTL`.
    func lookup(_ address: EntryAddress) -> GetResult? {
        let now = NIODeadline.now()
        return state.withLockedValue { state in
            guard let kept = state.entries[address] else {
                state.misses += 1
                return nil
            }
            guard now < kept.deadline else {
                state.entries[address] = nil
                state.misses += 1
                return nil
            }
            state.hits += 1
            return kept.result
        }
    }

    /// A `get` of `address` is about to be sent on `connection`; pass the result to ``finish(_:token:answer:nearTTL:)``.
    func begin(_ address: EntryAddress) -> Int {
        state.withLockedValue { state in
            state.inFlight[address, default: (0, false)].count += 1
            return state.connection
        }
    }

    /// The `get` ended (`answer` nil: it failed). Keeps the answer when the daemon allows it (`nearTTL`
    /// milliseconds), no notification about the entry came while it was in flight, and the connection is
    /// the one the `get` went out on.
    func finish(_ address: EntryAddress, token: Int, answer: GetResult?, nearTTL: Int64?) {
        let now = NIODeadline.now()
        state.withLockedValue { state in
            guard var flight = state.inFlight[address] else { return }
            flight.count -= 1
            state.inFlight[address] = flight.count > 0 ? flight : nil
            guard !flight.invalidated, token == state.connection, let answer, answer.hit, answer.value != nil,
                let nearTTL, nearTTL > 0
            else { return }
            if state.entries.updateValue(Kept(result: answer, deadline: now + .milliseconds(nearTTL)), forKey: address) == nil {
                state.order.append(address)
            }
            while state.entries.count > capacity, state.head < state.order.count {
                state.entries[state.order[state.head]] = nil
                state.head += 1
            }
            if state.order.count - state.head > 2 * max(capacity, 16) || state.head > 4096 {
                state.order = state.order[state.head...].filter { state.entries[$0] != nil }
                state.head = 0
            }
        }
    }

    /// Applies a notification.
    func apply(_ notification: InvalidateNotification) {
        state.withLockedValue { state in
            switch notification {
            case .all:
                Self.dropAll(&state)
            case .entries(let addresses):
                for address in addresses {
                    state.entries[address] = nil
                    if state.inFlight[address] != nil { state.inFlight[address]!.invalidated = true }
                }
            }
        }
    }

    /// A connection ended, or a new one begins: nothing kept can be vouched for.
    func newConnection() {
        state.withLockedValue { state in
            state.connection &+= 1
            Self.dropAll(&state)
        }
    }

    private static func dropAll(_ state: inout State) {
        state.entries.removeAll()
        state.order.removeAll()
        state.head = 0
        for key in state.inFlight.keys { state.inFlight[key]!.invalidated = true }
    }

    var counts: (hits: Int, misses: Int, entries: Int) {
        state.withLockedValue { ($0.hits, $0.misses, $0.entries.count) }
    }
}
