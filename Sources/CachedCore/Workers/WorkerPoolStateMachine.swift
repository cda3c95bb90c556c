import CachedProtocol
import NIOCore

/// The state of a ``WorkerPool``, without processes, clocks or locks.
///
/// Every event (a call submitted, a worker spawned, an answer, a timeout, an exit, shutdown) is a
/// mutating method that returns what the pool must do next (dispatch a call to a worker, fail calls,
/// stop a worker, restart after a delay). The pool runs it under a lock and performs the returned
/// actions outside it. `Call` is what a waiting caller is (a continuation in the pool, a number in tests).
///
/// Each worker slot goes through: `starting` → `idle` ⇄ `busy` → (`stopping`) → `backoff` → `starting` …,
/// and ends `stopped` after shutdown. Each spawn of a slot is an *incarnation*: events from an older
/// incarnation (a late line from a process already replaced) are ignored.
///
/// Every accepted call gets its request id at once; its timeout runs from then, queueing included: it
/// fails a queued call (no worker is touched) or the call a worker is running (that worker is stopped).
struct WorkerPoolStateMachine<Call> {
    // MARK: Types

    /// Settings the state machine needs.
    struct Configuration {
        var workers: Int
        var queueLimit: Int
        var restartMinDelay: Duration
        var restartMaxDelay: Duration
        /// A worker that lived this long counts as healthy (its exit resets the backoff).
        var healthyUptime: Duration = .seconds(5)
    }

    /// Identifies one spawn of one slot.
    typealias Incarnation = UInt64

    /// A call with its request id: waiting in the queue, or sent to a worker and waiting for its answer.
    struct InFlight {
        var requestID: UInt64
        var call: Call
    }

    /// A call to send to a worker now.
    struct Dispatch {
        var slot: Int
        var incarnation: Incarnation
        var requestID: UInt64
        var call: Call
    }

    /// A call that ends with an error.
    struct Failure {
        var requestID: UInt64
        var call: Call
        var error: CachedError
    }

    /// What a slot is doing.
    enum SlotState {
        /// Being spawned.
        case starting(Incarnation)
        /// Running, no call.
        case idle(Incarnation, pid: Int32)
        /// Running a call.
        case busy(Incarnation, pid: Int32, InFlight)
        /// Asked to stop (timeout, garbage, shutdown); waiting for it to exit. An in-flight call is kept
        /// only at shutdown (it may still be answered before the worker exits).
        case stopping(Incarnation, pid: Int32, InFlight?)
        /// Exited; waiting out the restart delay.
        case backoff
        /// Shut down.
        case stopped
    }

    struct Slot {
        var state: SlotState = .backoff
        /// Spawns so far.
        var spawns = 0
        /// Exits without having been healthy, in a row.
        var consecutiveFailures = 0
        /// Whether the current incarnation answered a call.
        var answered = false
        /// Why the last spawn failed, while the slot waits to retry.
        var spawnError: String?
    }

    // MARK: Actions

    enum SubmitAction {
        /// Send it to a worker now (and start its timer).
        case dispatch(Dispatch)
        /// It waits in the queue (start its timer).
        case enqueued(requestID: UInt64)
        case reject(CachedError)
    }

    /// What to do after a worker answered, misbehaved or timed out.
    struct CallOutcome {
        /// The call that ends, and how.
        var completed: (call: Call, result: Result<ByteBuffer?, CachedError>)?
        /// The request id whose timer can be cancelled.
        var finishedRequestID: UInt64?
        /// The next call for this worker.
        var next: Dispatch?
        /// Stop the worker of this slot (close stdin, SIGTERM, SIGKILL).
        var stopSlot: Int?
        var stopWorker: Bool { stopSlot != nil }
    }

    /// What to do after a worker process ended (or could not be spawned).
    struct ExitAction {
        /// Calls to fail: the one in flight, and the queue when no worker can start.
        var failed: [Failure] = []
        /// When to spawn the slot again; nil after shutdown.
        var restartDelay: Duration?
        /// Consecutive failures, for the log.
        var consecutiveFailures = 0
    }

    struct ShutdownAction {
        var failed: [Failure] = []
        /// Slots whose running worker must be stopped.
        var stop: [Int] = []
    }

    // MARK: State

    let configuration: Configuration
    private(set) var slots: [Slot]
    private(set) var queue = CircularBuffer<InFlight>()
    private(set) var isShuttingDown = false
    private var nextIncarnation: Incarnation = 1
    private var nextRequestID: UInt64 = 1

    // Counters for `stats`.
    /// Calls sent to a worker that ended (any outcome).
    private(set) var calls = 0
    /// Calls that ended with an error (at a worker or timed out in the queue).
    private(set) var failures = 0
    private(set) var restarts = 0
    private(set) var timeouts = 0
    private(set) var exits = 0

    init(configuration: Configuration) {
        self.configuration = configuration
        self.slots = Array(repeating: Slot(), count: max(1, configuration.workers))
    }

    // MARK: Queries

    /// Workers with a live process.
    var alive: Int {
        slots.count { slot in
            switch slot.state {
            case .idle, .busy, .stopping: true
            case .starting, .backoff, .stopped: false
            }
        }
    }

    /// Workers running a call.
    var busy: Int {
        slots.count { if case .busy = $0.state { true } else { false } }
    }

    // MARK: Events

    /// A caller wants a sync call.
    mutating func submit(_ call: Call) -> SubmitAction {
        if isShuttingDown { return .reject(CachedError(.shuttingDown, "the handler is shutting down")) }
        for index in slots.indices {
            if case .idle(let incarnation, let pid) = slots[index].state {
                let inFlight = InFlight(requestID: makeRequestID(), call: call)
                slots[index].state = .busy(incarnation, pid: pid, inFlight)
                return .dispatch(Dispatch(slot: index, incarnation: incarnation, requestID: inFlight.requestID, call: call))
            }
        }
        if let error = slots.allSatisfy({ $0.spawnError != nil }) ? slots.first?.spawnError : nil {
            return .reject(CachedError(.handlerError, "handler error: cannot start worker: \(error)"))
        }
        if queue.count >= configuration.queueLimit {
            return .reject(
                CachedError(.overloaded, "handler queue is full (\(configuration.queueLimit) calls waiting)"))
        }
        let requestID = makeRequestID()
        queue.append(InFlight(requestID: requestID, call: call))
        return .enqueued(requestID: requestID)
    }

    /// The slot's task is about to spawn a process: its incarnation, or nil when shutting down.
    mutating func spawnStarting(slot: Int) -> Incarnation? {
        if isShuttingDown {
            slots[slot].state = .stopped
            return nil
        }
        let incarnation = nextIncarnation
        nextIncarnation += 1
        if slots[slot].spawns > 0 { restarts += 1 }
        slots[slot].spawns += 1
        slots[slot].answered = false
        slots[slot].state = .starting(incarnation)
        return incarnation
    }

    /// The process is running. Returns the first call for it, or `.stop` when shutting down meanwhile.
    mutating func spawned(slot: Int, incarnation: Incarnation, pid: Int32) -> SpawnedAction {
        guard case .starting(incarnation) = slots[slot].state else { return .none }
        slots[slot].spawnError = nil
        if isShuttingDown {
            slots[slot].state = .stopping(incarnation, pid: pid, nil)
            return .stop
        }
        if let next = queue.popFirst() {
            slots[slot].state = .busy(incarnation, pid: pid, next)
            return .dispatch(Dispatch(slot: slot, incarnation: incarnation, requestID: next.requestID, call: next.call))
        }
        slots[slot].state = .idle(incarnation, pid: pid)
        return .none
    }

    enum SpawnedAction {
        case none
        case dispatch(Dispatch)
        case stop
    }

    /// A well-formed answer line (a result or an error object) with `requestID` (nil: not one of ours).
    mutating func answerReceived(
        slot: Int, incarnation: Incarnation, requestID: UInt64?, result: Result<ByteBuffer?, CachedError>
    ) -> CallOutcome {
        switch slots[slot].state {
        case .busy(incarnation, let pid, let inFlight) where inFlight.requestID == requestID:
            finish(result)
            slots[slot].answered = true
            slots[slot].consecutiveFailures = 0
            var outcome = CallOutcome(completed: (inFlight.call, result), finishedRequestID: inFlight.requestID)
            if let next = queue.popFirst() {
                slots[slot].state = .busy(incarnation, pid: pid, next)
                outcome.next = Dispatch(slot: slot, incarnation: incarnation, requestID: next.requestID, call: next.call)
            } else {
                slots[slot].state = .idle(incarnation, pid: pid)
            }
            return outcome
        case .stopping(incarnation, let pid, let inFlight?) where inFlight.requestID == requestID:
            // Answered while stopping at shutdown: the caller still gets it.
            finish(result)
            slots[slot].state = .stopping(incarnation, pid: pid, nil)
            return CallOutcome(completed: (inFlight.call, result), finishedRequestID: inFlight.requestID)
        case .busy(incarnation, _, _), .idle(incarnation, _):
            let reason = requestID.map { "an answer with id \($0), not the id of the call" } ?? "an answer with a wrong id"
            return protocolViolation(slot: slot, incarnation: incarnation, reason: reason)
        default:
            return CallOutcome()
        }
    }

    /// The worker wrote something that is not a valid answer (not JSON, wrong shape, too long, unsolicited).
    mutating func protocolViolation(slot: Int, incarnation: Incarnation, reason: String) -> CallOutcome {
        stopMisbehaving(slot: slot, incarnation: incarnation, message: "worker sent an invalid answer: \(reason)")
    }

    /// Writing the request to the worker's stdin failed.
    mutating func writeFailed(slot: Int, incarnation: Incarnation, reason: String) -> CallOutcome {
        stopMisbehaving(slot: slot, incarnation: incarnation, message: "cannot write to worker: \(reason)")
    }

    /// Fails the slot's call (if any) with a handler error and stops the worker.
    private mutating func stopMisbehaving(slot: Int, incarnation: Incarnation, message: String) -> CallOutcome {
        switch slots[slot].state {
        case .busy(incarnation, let pid, let inFlight):
            let error = CachedError(
                .handlerError, "handler error: \(message)",
                data: .object(["worker": .number(String(pid))]))
            finish(.failure(error))
            slots[slot].state = .stopping(incarnation, pid: pid, nil)
            return CallOutcome(
                completed: (inFlight.call, .failure(error)), finishedRequestID: inFlight.requestID, stopSlot: slot)
        case .idle(incarnation, let pid):
            slots[slot].state = .stopping(incarnation, pid: pid, nil)
            return CallOutcome(stopSlot: slot)
        default:
            return CallOutcome()
        }
    }

    /// The timer of `requestID` fired: the call fails, wherever it is (queued, or at a worker, which is stopped).
    mutating func timedOut(requestID: UInt64, timeout: Duration) -> CallOutcome {
        let error = CachedError(.handlerTimeout, "handler did not answer within \(timeout / .seconds(1)) s")
        if let index = queue.firstIndex(where: { $0.requestID == requestID }) {
            let queued = queue.remove(at: index)
            // Not a handler call (`calls` counts those), but a failed call all the same.
            timeouts += 1
            failures += 1
            return CallOutcome(completed: (queued.call, .failure(error)), finishedRequestID: requestID)
        }
        for slot in slots.indices {
            guard case .busy(let incarnation, let pid, let inFlight) = slots[slot].state, inFlight.requestID == requestID else {
                continue
            }
            timeouts += 1
            var error = error
            error.data = .object(["worker": .number(String(pid))])
            finish(.failure(error))
            slots[slot].state = .stopping(incarnation, pid: pid, nil)
            return CallOutcome(completed: (inFlight.call, .failure(error)), finishedRequestID: requestID, stopSlot: slot)
        }
        return CallOutcome()
    }

    /// The process of `incarnation` ended and was reaped (`pid` nil: it could not be spawned).
    mutating func exited(
        slot: Int, incarnation: Incarnation, pid: Int32?, status: String, uptime: Duration, spawnError: String?
    ) -> ExitAction {
        var action = ExitAction()
        exits += 1
        switch slots[slot].state {
        case .busy(incarnation, _, let inFlight), .stopping(incarnation, _, let inFlight?):
            let error =
                isShuttingDown
                ? CachedError(.shuttingDown, "the handler is shutting down")
                : CachedError(
                    .handlerError, "handler error: worker exited during the call (\(status))",
                    data: pid.map { .object(["worker": .number(String($0))]) })
            finish(.failure(error))
            action.failed.append(Failure(requestID: inFlight.requestID, call: inFlight.call, error: error))
        default:
            break
        }
        if isShuttingDown {
            slots[slot].state = .stopped
            return action
        }
        slots[slot].state = .backoff
        slots[slot].spawnError = spawnError
        if slots[slot].answered || uptime >= configuration.healthyUptime {
            slots[slot].consecutiveFailures = 0
        }
        slots[slot].consecutiveFailures += 1
        action.consecutiveFailures = slots[slot].consecutiveFailures
        action.restartDelay = Self.backoff(
            failures: slots[slot].consecutiveFailures, min: configuration.restartMinDelay, max: configuration.restartMaxDelay)
        // No worker can start: waiting callers would only wait for the next failure.
        if spawnError != nil, slots.allSatisfy({ $0.spawnError != nil }) {
            let error = CachedError(.handlerError, "handler error: cannot start worker: \(spawnError!)")
            while let queued = queue.popFirst() {
                action.failed.append(Failure(requestID: queued.requestID, call: queued.call, error: error))
            }
        }
        return action
    }

    /// Stops everything: queued calls fail, running workers are stopped (their in-flight call
    /// fails when they exit, unless they answer first).
    mutating func shutdown() -> ShutdownAction {
        var action = ShutdownAction()
        guard !isShuttingDown else { return action }
        isShuttingDown = true
        let error = CachedError(.shuttingDown, "the handler is shutting down")
        while let queued = queue.popFirst() {
            action.failed.append(Failure(requestID: queued.requestID, call: queued.call, error: error))
        }
        for index in slots.indices {
            switch slots[index].state {
            case .idle(let incarnation, let pid):
                slots[index].state = .stopping(incarnation, pid: pid, nil)
                action.stop.append(index)
            case .busy(let incarnation, let pid, let inFlight):
                slots[index].state = .stopping(incarnation, pid: pid, inFlight)
                action.stop.append(index)
            case .stopping:
                action.stop.append(index)
            case .backoff:
                slots[index].state = .stopped
            case .starting, .stopped:
                break
            }
        }
        return action
    }

    // MARK: Helpers

    /// The restart delay after `failures` consecutive failures (1 = the first): `min` doubled per failure, capped.
    static func backoff(failures: Int, min: Duration, max: Duration) -> Duration {
        var delay = min
        var n = 1
        while n < failures && delay < max {
            delay *= 2
            n += 1
        }
        return delay < max ? delay : max
    }

    private mutating func makeRequestID() -> UInt64 {
        defer { nextRequestID += 1 }
        return nextRequestID
    }

    private mutating func finish(_ result: Result<ByteBuffer?, CachedError>) {
        calls += 1
        if case .failure = result { failures += 1 }
    }
}

extension WorkerPoolStateMachine: Sendable where Call: Sendable {}
extension WorkerPoolStateMachine.InFlight: Sendable where Call: Sendable {}
extension WorkerPoolStateMachine.Dispatch: Sendable where Call: Sendable {}
extension WorkerPoolStateMachine.Failure: Sendable where Call: Sendable {}
extension WorkerPoolStateMachine.SlotState: Sendable where Call: Sendable {}
extension WorkerPoolStateMachine.Slot: Sendable where Call: Sendable {}
extension WorkerPoolStateMachine.SubmitAction: Sendable where Call: Sendable {}
