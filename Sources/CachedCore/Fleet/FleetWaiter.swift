import CachedProtocol
import NIOCore


/// Runs one ``FleetWaitStateMachine``: looks with ``FleetLocks/acquire(_:token:lease:requireAbsent:on:)``,
/// wakes on the entry's invalidations (``FleetLocks/watch(_:_:)``) and on poll timers.
///
/// Confined to its event loop: the machine and the watches are touched only there (an invalidation, which
/// arrives on the listener's loop, and a look's reply hop to it first), so they need no lock.
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
    private let machine: NIOLoopBoundBox<Machine>
    private let watches: NIOLoopBoundBox<[KeyWatchers.Watch]?>

    /// Waits for the entry or its lock; gives up after `timeout`.
    static func wait(
        _ locks: any FleetLocks, _ location: StoreLocation, token: String, lease: Duration, timeout: Duration,
        on eventLoop: any EventLoop
    ) -> EventLoopFuture<Machine.Outcome> {
        let now = Self.now()
        return eventLoop.flatSubmit {
            let waiter = FleetWaiter(locks, location, token: token, lease: lease, timeout: timeout, since: now, on: eventLoop)
            waiter.begin()
            return waiter.promise.futureResult
        }
    }

    private init(
        _ locks: any FleetLocks, _ location: StoreLocation, token: String, lease: Duration, timeout: Duration, since now: UInt64,
        on eventLoop: any EventLoop
    ) {
        eventLoop.preconditionInEventLoop()
        self.locks = locks
        self.location = location
        self.token = token
        self.lease = lease
        self.eventLoop = eventLoop
        self.promise = eventLoop.makePromise()
        self.machine = NIOLoopBoundBox(
            Machine(
                now: now, timeout: UInt64(max(0, TimeAmount(timeout).nanoseconds)),
                firstPoll: UInt64(Self.firstPoll.nanoseconds), maxPoll: UInt64(Self.maxPoll.nanoseconds)),
            eventLoop: eventLoop)
        self.watches = NIOLoopBoundBox(nil, eventLoop: eventLoop)
    }

    private static func now() -> UInt64 { NIODeadline.now().uptimeNanoseconds }

    private func begin() {
        let eventLoop = self.eventLoop
        let watches = locks.watch(location) { [self] in
            // An invalidation, on the listener's loop: handled on this waiter's.
            eventLoop.execute { self.run(self.machine.value.changed()) }
        }
        self.watches.value = watches
        run(machine.value.start())
    }

    private func unwatch() {
        if let watches = watches.value {
            locks.unwatch(watches)
            self.watches.value = []
        }
    }

    private func run(_ action: Machine.Action) {
        switch action {
        case .none:
            break
        case .look:
            locks.acquire(location, token: token, lease: lease, requireAbsent: true, on: eventLoop).hop(to: eventLoop).whenComplete { result in
                let look: Machine.Look
                switch result {
                case .success(.won): look = .won
                case .success(.held): look = .held
                case .success(.present(let value)): look = .present(value)
                // A slot migrating under the two-key look: look again at the next poll.
                case .success(.notRun): look = .held
                case .failure(let error): look = .failed(error)
                }
                self.run(self.machine.value.lookEnded(look, now: Self.now()))
            }
        case .schedulePoll(let generation, let delay):
            eventLoop.scheduleTask(in: .nanoseconds(Int64(delay))) {
                self.run(self.machine.value.pollFired(generation, now: Self.now()))
            }
        case .finish(let outcome):
            unwatch()
            promise.succeed(outcome)
        }
    }
}
