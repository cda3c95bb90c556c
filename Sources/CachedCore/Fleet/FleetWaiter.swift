import CachedProtocol
import NIOConcurrencyHelpers
import NIOCore


/// Runs one ``FleetWaitStateMachine``: looks with ``FleetLocks/acquire(_:token:lease:requireAbsent:on:)``,
/// wakes on the entry's invalidations (``FleetLocks/watch(_:_:)``) and on poll timers.
final class FleetWaiter: Sendable {
    typealias Machine = FleetWaitStateMachine<ByteBuffer>

    /// The first poll comes after this; each next one waits half as long again, up to `maxPoll`.
    static let firstPoll = TimeAmount.milliseconds(25)
    static let maxPoll = TimeAmount.milliseconds(250)

    private let locks: any FleetLocks
    private let location: StoreLocation
    private let token: String
    private let lease: Duration
    private let eventLoop: any EventLoop
    private let promise: EventLoopPromise<Machine.Outcome>
    private let machine: NIOLockedValueBox<Machine>
    private let watches = NIOLockedValueBox<[KeyWatchers.Watch]?>(nil)

    /// Waits for the entry or its lock; gives up after `timeout`.
    static func wait(
        _ locks: any FleetLocks, _ location: StoreLocation, token: String, lease: Duration, timeout: Duration,
        on eventLoop: any EventLoop
    ) -> EventLoopFuture<Machine.Outcome> {
        let waiter = FleetWaiter(locks, location, token: token, lease: lease, timeout: timeout, on: eventLoop)
        waiter.begin()
        return waiter.promise.futureResult
    }

    private init(
        _ locks: any FleetLocks, _ location: StoreLocation, token: String, lease: Duration, timeout: Duration,
        on eventLoop: any EventLoop
    ) {
        self.locks = locks
        self.location = location
        self.token = token
        self.lease = lease
        self.eventLoop = eventLoop
        self.promise = eventLoop.makePromise()
        self.machine = NIOLockedValueBox(
            Machine(
                now: Self.now(), timeout: UInt64(max(0, TimeAmount(timeout).nanoseconds)),
                firstPoll: UInt64(Self.firstPoll.nanoseconds), maxPoll: UInt64(Self.maxPoll.nanoseconds)))
    }

    private static func now() -> UInt64 { NIODeadline.now().uptimeNanoseconds }

    private func begin() {
        let watches = locks.watch(location) { [self] in
            self.run(self.machine.withLockedValue { $0.changed() })
        }
        self.watches.withLockedValue { $0 = watches }
        // A wake-up may have ended the wait before the watches were stored: then remove them here.
        if machine.withLockedValue({ $0.isDone }) { unwatch() }
        run(machine.withLockedValue { $0.start() })
    }

    private func unwatch() {
        if let watches = watches.withLockedValue({ w -> [KeyWatchers.Watch]? in defer { w = [] }; return w }) {
            locks.unwatch(watches)
        }
    }

    private func run(_ action: Machine.Action) {
        switch action {
        case .none:
            break
        case .look:
            // A look Redis did not run (a slot migrating under the two-key script) is answered `.held`:
            // look again at the next poll.
            locks.waiterLook(location, token: token, lease: lease, on: eventLoop).whenComplete { result in
                let look: Machine.Look
                switch result {
                case .success(.won): look = .won
                case .success(.held): look = .held
                case .success(.present(let value)): look = .present(value)
                case .failure(let error): look = .failed(error)
                }
                self.run(self.machine.withLockedValue { $0.lookEnded(look, now: Self.now()) })
            }
        case .schedulePoll(let generation, let delay):
            eventLoop.scheduleTask(in: .nanoseconds(Int64(delay))) {
                self.run(self.machine.withLockedValue { $0.pollFired(generation, now: Self.now()) })
            }
        case .finish(let outcome):
            unwatch()
            promise.succeed(outcome)
        }
    }
}
