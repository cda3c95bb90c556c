import CachedProtocol
import Logging
import NIOCore

/// The executor of ``GetFlow``: runs each step (a store read, a flight, a lease read, a refresh in grace),
/// turns what came back into the machine's next event, and answers when the machine says so. The
/// decisions are the machine's; the entry's shared state is ``FillCoordinator``'s.
extension RequestDispatcher {
    /// A get that missed the daemon's memory.
    func get(_ params: GetParams, context: RequestContext) -> EventLoopFuture<MethodResult> {
        var flow = GetFlow(flowKey(params))
        let step = flow.start()
        return drive(flow, step, params, context)
    }

    /// A hit in the daemon's memory of an entry with an age: its phase decides (``GetFlow/phase(_:_:now:random:deadlinePassed:)``).
    func agedAnswer(_ params: GetParams, _ value: EncodedValue, _ age: EntryAge, context: RequestContext) -> Completion {
        var flow = GetFlow(flowKey(params))
        let step = flow.phase(value, age, now: .now(), random: Double.random(in: 0..<1), deadlinePassed: false)
        if case .answer(let result, let refresh) = step { return .now(answer(result, refresh: refresh, params, context)) }
        return .later(drive(flow, step, params, context))
    }

    /// What the flow needs to know of the key.
    private func flowKey(_ params: GetParams) -> GetFlow.Key {
        let hasHandler = handlers.handler(for: params.address.key) != nil
        let aged = hasHandler && currentConfiguration.key(params.address.key).aging != nil
        return GetFlow.Key(hasHandler: hasHandler, aged: aged, mayLease: params.mayLease)
    }

    /// Runs `step` and whatever follows it, until an answer.
    private func drive(_ flow: GetFlow, _ step: GetFlow.Step, _ params: GetParams, _ context: RequestContext) -> EventLoopFuture<MethodResult> {
        let eventLoop = context.eventLoop
        let entry = params.address.location
        /// Feeds `event` to the machine and runs the step it gives.
        @Sendable func then(_ event: GetFlow.Event) -> EventLoopFuture<MethodResult> {
            var flow = flow
            let next = flow.next(event, deadlinePassed: context.deadline?.hasPassed() ?? false)
            return self.drive(flow, next, params, context)
        }
        switch step {
        case .answer(let result, let refresh):
            return eventLoop.makeSucceededFuture(answer(result, refresh: refresh, params, context))

        case .deadlinePassed:
            return eventLoop.makeFailedFuture(context.deadline?.error("get") ?? CachedError(.deadlineExceeded, "get: the request's deadline passed"))

        case .readAged:
            guard let policy = currentConfiguration.key(params.address.key).aging else {
                // The key lost its age in a reload meanwhile: as a read that found nothing of it.
                return then(.agedRead(nil))
            }
            return store.readAged(params.address, policy: policy, on: eventLoop)
                .map { stored -> GetFlow.Event in
                    guard let stored else { return .agedRead(nil) }
                    var encoded = EncodedValue(stored.value)
                    encoded.age = stored.age
                    return .agedRead(encoded)
                }
                .flatMapError { error in
                    // Redis is down: the flight's fallback (the handler's value, not stored) answers.
                    guard CachedError(failure: error).code == .storeUnavailable else { return eventLoop.makeFailedFuture(error) }
                    return eventLoop.makeSucceededFuture(.agedReadFailed(storeDown: true))
                }
                .flatMap(then)

        case .flight(let start):
            if let joined = coordinator.joinFlight(entry, on: eventLoop, deadline: context.deadline) {
                // A flight for this entry is under way: wait for its answer, with no store read of our own.
                return joined.flatMap { then(.flightAnswered($0)) }
            }
            guard start, let handler = handlers.handler(for: params.address.key) else { return then(.noFlight) }
            // One flight per entry, registered before the store read, so every concurrent get of the entry
            // joins it and a stampede costs one store read and at most one handler call.
            let keyConfig = currentConfiguration.key(params.address.key)
            return coordinator.requestFlight(entry, on: eventLoop, deadline: context.deadline) { id in
                self.runFlight(id, entry, handler, params, keyConfig, on: eventLoop, attempt: 0)
            }.flatMap { then(.flightAnswered($0)) }

        case .leaseRead(let mayLease):
            // A store read; a trusted miss gets a lease, waits for the holder's value, or (`lease: false`)
            // is answered at once.
            let ticket = coordinator.readStarted(entry)
            return read(params.address, currentConfiguration.key(params.address.key), on: eventLoop).flatMapError { error in
                self.coordinator.readFinished(entry, ticket)
                return eventLoop.makeFailedFuture(error)
            }.flatMap { value -> EventLoopFuture<MethodResult> in
                if let value {
                    self.coordinator.readFinished(entry, ticket)
                    return then(.stored(value))
                }
                let keyConfig = self.currentConfiguration.key(params.address.key)
                return self.coordinator.readMissed(
                    entry, ticket, context: context, mayLease: mayLease, leaseTimeout: keyConfig.leaseTimeout,
                    deadline: context.deadline, fleetWide: self.fleetWide(keyConfig)
                ).flatMap { then(.leaseAnswered($0)) }
            }

        case .refreshInGrace(let stale):
            // In grace: wait for one refresh; if it fails (or another daemon is refreshing), the old value,
            // unless the entry changed meanwhile (a delete through another daemon).
            guard let handler = handlers.handler(for: params.address.key) else { return eventLoop.makeSucceededFuture(.stale(stale)) }
            let mark = store.changeMark()
            @Sendable func afterRefresh(_ event: GetFlow.Event) -> EventLoopFuture<MethodResult> {
                var flow = flow
                let passed = context.deadline?.hasPassed() ?? false
                var next = flow.next(event, deadlinePassed: passed)
                if case .checkGrace = next {
                    next = flow.next(.graceChecked(unchanged: self.store.unchanged(params.address, since: mark)), deadlinePassed: passed)
                }
                return self.drive(flow, next, params, context)
            }
            // A refresh of this entry failed a moment ago: the old value at once, not another call right away.
            if coordinator.isBackingOff(entry) { return afterRefresh(.refreshFailed) }
            let keyConfig = currentConfiguration.key(params.address.key)
            return coordinator.requestFlight(entry, on: eventLoop, overwrite: true) { id in
                self.fleetStats.count { $0.refreshes += 1 }
                self.runRefresh(id, entry, handler, params, keyConfig, expected: stale.raw, on: eventLoop)
            }
            .map { GetFlow.Event.refreshAnswered($0) }
            .recover { error in
                self.logger.debug("answering a stale entry in grace after a failed refresh", metadata: ["entry": "\(entry)", "error": "\(error)"])
                return .refreshFailed
            }
            .flatMap(afterRefresh)

        case .checkGrace:
            preconditionFailure("a grace check follows a refresh in grace, inside its step")
        }
    }

    /// An answer of the flow: starts the background refresh it asks for, and counts stale and grace answers.
    private func answer(_ result: MethodResult, refresh: GetFlow.Refresh?, _ params: GetParams, _ context: RequestContext) -> MethodResult {
        if let refresh {
            if !refresh.early { fleetStats.count { $0.staleAnswers += 1 } }
            startRefresh(params, expected: refresh.expected, early: refresh.early, context: context)
        } else if case .stale = result {
            fleetStats.count { $0.graceAnswers += 1 }
        }
        return result
    }
}
