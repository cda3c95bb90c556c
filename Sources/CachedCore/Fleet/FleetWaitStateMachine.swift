/// A daemon waiting for another daemon's fill of an entry, as a pure state machine: events in, actions out.
///
/// The waiter lost the entry's fill lock. It looks again (one round trip: the entry if present, else the
/// lock if free) whenever Redis reports that the entry changed (the look registers tracking, so the
/// holder's store is reported) and on a poll timer that backs off from `firstPoll` to `maxPoll`, the
/// fallback when no report comes (no tracking, a lost invalidation). It ends with the entry's value, with
/// the lock won (the holder failed, died or released it), with the store's error, or, past `deadline`,
/// by giving up. At most one look is in flight; a report during a look makes another look follow it.
/// Time is passed in (nanoseconds on any monotonic clock).
struct FleetWaitStateMachine<Value> {
    enum Look {
        case present(Value)
        case won
        case held
        case failed(any Error)
    }

    enum Outcome {
        case value(Value)
        case won
        case failed(any Error)
        case gaveUp
    }

    enum Action {
        /// Send one look.
        case look
        /// Call ``pollFired(_:now:)`` with `generation` after `delay` nanoseconds.
        case schedulePoll(generation: UInt64, delay: UInt64)
        /// The wait is over.
        case finish(Outcome)
        case none
    }

    private enum State {
        case idle
        case looking(again: Bool)
        case done
    }

    private var state = State.idle
    private var generation: UInt64 = 0
    private var nextPoll: UInt64
    private let maxPoll: UInt64
    private let deadline: UInt64
    private(set) var looks = 0

    init(now: UInt64, timeout: UInt64, firstPoll: UInt64, maxPoll: UInt64) {
        self.deadline = now + timeout
        self.nextPoll = firstPoll
        self.maxPoll = max(firstPoll, maxPoll)
    }

    var isDone: Bool {
        if case .done = state { return true }
        return false
    }

    /// The wait begins right after a look found the lock held: the first poll is scheduled.
    mutating func start() -> Action {
        schedule()
    }

    /// Redis reported a change of the entry (or of everything).
    mutating func changed() -> Action {
        switch state {
        case .idle:
            state = .looking(again: false)
            looks += 1
            return .look
        case .looking:
            state = .looking(again: true)
            return .none
        case .done:
            return .none
        }
    }

    /// A poll timer fired; stale generations (a look ran since it was set) are ignored.
    mutating func pollFired(_ generation: UInt64, now: UInt64) -> Action {
        guard generation == self.generation, case .idle = state else { return .none }
        if now >= deadline {
            state = .done
            return .finish(.gaveUp)
        }
        return changed()
    }

    mutating func lookEnded(_ look: Look, now: UInt64) -> Action {
        guard case .looking(let again) = state else { return .none }
        switch look {
        case .present(let value):
            state = .done
            return .finish(.value(value))
        case .won:
            state = .done
            return .finish(.won)
        case .failed(let error):
            state = .done
            return .finish(.failed(error))
        case .held:
            if now >= deadline {
                state = .done
                return .finish(.gaveUp)
            }
            if again {
                state = .looking(again: false)
                looks += 1
                return .look
            }
            state = .idle
            return schedule()
        }
    }

    private mutating func schedule() -> Action {
        generation += 1
        let delay = nextPoll
        nextPoll = min(maxPoll, nextPoll + nextPoll / 2)
        return .schedulePoll(generation: generation, delay: delay)
    }
}

extension FleetWaitStateMachine.Outcome: Sendable where Value: Sendable {}
