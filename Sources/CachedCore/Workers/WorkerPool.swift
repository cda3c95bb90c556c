import CachedProtocol
import CachedRedis
import Logging
import NIOConcurrencyHelpers
import NIOCore
import Subprocess

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The sync handler of one key: long-lived worker processes speaking newline-delimited JSON-RPC 2.0
/// on their stdin/stdout (docs/worker-protocol.md).
///
/// Each worker runs one call at a time; calls wait in a FIFO queue (up to `queueLimit`) while all
/// workers are busy. A worker that crashes, times out or writes garbage is stopped and restarted
/// with exponential backoff. Processes are run with swift-subprocess, which spawns, monitors (pidfd)
/// and reaps them; each worker slot has a task that runs its process and restarts it.
///
/// The decisions are made by ``WorkerPoolStateMachine`` under a lock; this class performs them.
public final class WorkerPool: Sendable {
    // MARK: Types

    /// A caller waiting for its answer; resumed exactly once.
    struct PendingCall: Sendable {
        var continuation: CheckedContinuation<Result<ByteBuffer?, CachedError>, Never>
        /// The encoded `params` object.
        var params: ByteBuffer
    }

    typealias StateMachine = WorkerPoolStateMachine<PendingCall>

    /// The running process of a slot, as the pool reaches it.
    struct WorkerHandle: Sendable {
        var pid: Int32
        /// Request lines to write to the worker's stdin.
        var requests: AsyncStream<[UInt8]>.Continuation
        /// Finishing it stops the worker.
        var stop: AsyncStream<Never>.Continuation
    }

    struct State: Sendable {
        var machine: StateMachine
        var handles: [Int: WorkerHandle] = [:]
        var timers: [UInt64: Task<Void, Never>] = [:]
        /// Every call, any outcome, from submission (time queued included) to its answer.
        var durations = LatencyHistogram()
        var slotTasks: [Task<Void, Never>] = []
        var started = false
    }

    // MARK: Properties

    /// The key this pool serves.
    public let key: String
    /// Its configuration.
    public let configuration: DaemonConfiguration.HandlerConfiguration
    private let logger: Logger
    private let state: NIOLockedValueBox<State>

    /// Seconds a stopped worker gets between SIGTERM and SIGKILL.
    static let stopGracePeriod: Duration = .seconds(2)
    /// Most bytes of one stderr line that are logged.
    static let maxStderrLineBytes = 4096
    /// Most stderr lines logged per worker per second; the rest are counted and reported.
    static let maxStderrLinesPerSecond = 100
    /// Variables of the daemon's own environment that workers must not inherit.
    static let removedEnvironment = [
        "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID",
    ]

    // MARK: Life cycle

    /// Creates a pool; nothing runs before ``start()``.
    public init(key: String, configuration: DaemonConfiguration.HandlerConfiguration, logger: Logger) {
        self.key = key
        self.configuration = configuration
        var logger = logger
        logger[metadataKey: "key"] = "\(key)"
        self.logger = logger
        let machineConfiguration = StateMachine.Configuration(
            workers: max(1, configuration.workers),
            queueLimit: max(0, configuration.queueLimit),
            restartMinDelay: max(.zero, configuration.restartMinDelay),
            restartMaxDelay: max(configuration.restartMinDelay, configuration.restartMaxDelay))
        self.state = NIOLockedValueBox(State(machine: StateMachine(configuration: machineConfiguration)))
    }

    /// Starts the workers (returns once they are spawned; does not wait for any handshake).
    ///
    /// The process must ignore SIGPIPE (the `cached` executable does at start-up): a write to a worker
    /// that just exited must fail with EPIPE, not kill the process.
    public func start() async {
        let slots: Int? = state.withLockedValue { state in
            guard !state.started, !state.machine.isShuttingDown else { return nil }
            state.started = true
            state.slotTasks = state.machine.slots.indices.map { slot in Task { await self.runSlot(slot) } }
            return state.machine.slots.count
        }
        guard let slots else { return }
        // Wait (briefly) until every slot has tried its first spawn.
        for _ in 0..<500 {
            let pending = state.withLockedValue { state in
                state.machine.slots.contains { slot in
                    switch slot.state {
                    case .starting: true
                    case .backoff: slot.spawns == 0
                    default: false
                    }
                }
            }
            if !pending { break }
            try? await Task.sleep(for: .milliseconds(2))
        }
        logger.info("workers started", metadata: ["workers": "\(slots)", "command": "\(configuration.command)"])
    }

    /// Stops all workers: close stdin, SIGTERM, then SIGKILL after a grace period (~2 s); waits until
    /// they are reaped; fails queued calls with `.shuttingDown`.
    public func shutdown() async {
        let (action, tasks, handles): (StateMachine.ShutdownAction, [Task<Void, Never>], [WorkerHandle]) =
            state.withLockedValue { state in
                let action = state.machine.shutdown()
                return (action, state.slotTasks, action.stop.compactMap { state.handles[$0] })
            }
        for failure in action.failed { failure.call.continuation.resume(returning: .failure(failure.error)) }
        for handle in handles { handle.stop.finish() }
        // Wakes slots waiting out a restart delay; running workers are being stopped already.
        for task in tasks { task.cancel() }
        for task in tasks { await task.value }
        let timers = state.withLockedValue { state in
            defer { state.timers.removeAll() }
            return Array(state.timers.values)
        }
        for timer in timers { timer.cancel() }
        if !tasks.isEmpty { logger.info("workers stopped") }
    }

    // MARK: Calls

    /// One sync call: the value bytes, or nil when the worker answered `null` ("no such entry").
    ///
    /// Throws only ``CachedError``: `.handlerError` (worker error answer, crash mid-call, garbage or
    /// over-long line, wrong id, spawn failure), `.handlerTimeout` (past `configuration.timeout`; that
    /// worker is then stopped SIGTERM→SIGKILL and replaced), `.overloaded` (more than
    /// `configuration.queueLimit` calls already waiting for a free worker), `.shuttingDown` (pool stopped).
    public func call(_ address: EntryAddress, arguments: HandlerArguments) async throws(CachedError) -> ByteBuffer? {
        let params = WorkerProtocol.encodeParams(key: key, address: address, arguments: arguments)
        let start = NIODeadline.now()
        let result = await withCheckedContinuation { (continuation: CheckedContinuation<Result<ByteBuffer?, CachedError>, Never>) in
            let call = PendingCall(continuation: continuation, params: params)
            let (action, handle): (StateMachine.SubmitAction, WorkerHandle?) = state.withLockedValue { state in
                let action = state.machine.submit(call)
                switch action {
                case .dispatch(let dispatch):
                    armTimer(dispatch.requestID, in: &state)
                    return (action, state.handles[dispatch.slot])
                case .enqueued(let requestID):
                    armTimer(requestID, in: &state)
                    return (action, nil)
                case .reject:
                    return (action, nil)
                }
            }
            switch action {
            case .dispatch(let dispatch):
                send(dispatch, to: handle)
            case .enqueued:
                break
            case .reject(let error):
                continuation.resume(returning: .failure(error))
            }
        }
        let elapsed = NIODeadline.now() - start
        state.withLockedValue { $0.durations.observe(elapsed) }
        return try result.get()
    }

    /// How long calls took, from submission (time queued included) to their answer, any outcome.
    public var callDurations: LatencyHistogram? {
        state.withLockedValue { $0.durations }
    }

    /// For `stats`: workers alive, busy, queued, calls, failures, restarts, timeouts.
    public var status: JSONValue {
        state.withLockedValue { state in
            let machine = state.machine
            func number(_ n: Int) -> JSONValue { .number(String(n)) }
            return .object([
                "workers": number(machine.slots.count),
                "alive": number(machine.alive),
                "busy": number(machine.busy),
                "queued": number(machine.queue.count),
                "calls": number(machine.calls),
                "failures": number(machine.failures),
                "restarts": number(machine.restarts),
                "timeouts": number(machine.timeouts),
                "exits": number(machine.exits),
            ])
        }
    }

    /// Total sync calls answered so far (any outcome) — tests use it to count handler calls.
    ///
    /// Counts the calls that were sent to a worker, once they end (value, null, error, crash, timeout);
    /// calls that never reached a worker (overloaded, timed out in the queue, shutting down) are not counted.
    public var callCount: Int {
        state.withLockedValue { $0.machine.calls }
    }

    // MARK: Performing actions

    /// Starts the timeout of an accepted call (under the lock): it runs from the call, queueing included.
    private func armTimer(_ requestID: UInt64, in state: inout State) {
        let timeout = configuration.timeout
        guard timeout > .zero else { return }
        state.timers[requestID] = Task {
            do {
                try await Task.sleep(for: timeout)
            } catch {
                return
            }
            self.timedOut(requestID: requestID)
        }
    }

    /// Writes a dispatched call's request to its worker.
    private func send(_ dispatch: StateMachine.Dispatch, to handle: WorkerHandle?) {
        let line = WorkerProtocol.requestLine(id: dispatch.requestID, params: dispatch.call.params)
        if let handle {
            handle.requests.yield(line)
        } else {
            // Cannot happen: a slot is idle or busy only while its handle is registered.
            apply(
                state.withLockedValue {
                    $0.machine.writeFailed(slot: dispatch.slot, incarnation: dispatch.incarnation, reason: "no worker process")
                })
        }
    }

    /// Performs the outcome of an answer, a violation, a write failure or a timeout.
    private func apply(_ outcome: StateMachine.CallOutcome) {
        let (handle, nextHandle): (WorkerHandle?, WorkerHandle?) = state.withLockedValue { state in
            if let id = outcome.finishedRequestID, let timer = state.timers.removeValue(forKey: id) { timer.cancel() }
            return (outcome.stopSlot.flatMap { state.handles[$0] }, outcome.next.flatMap { state.handles[$0.slot] })
        }
        if let (call, result) = outcome.completed { call.continuation.resume(returning: result) }
        if outcome.stopWorker { handle?.stop.finish() }
        if let next = outcome.next { send(next, to: nextHandle) }
    }

    private func timedOut(requestID: UInt64) {
        let timeout = configuration.timeout
        let (outcome, pid) = state.withLockedValue { state in
            state.timers[requestID] = nil
            let outcome = state.machine.timedOut(requestID: requestID, timeout: timeout)
            return (outcome, outcome.stopSlot.flatMap { state.handles[$0]?.pid })
        }
        if let pid {
            logger.warning("worker did not answer in time; stopping it", metadata: ["pid": "\(pid)", "timeout": "\(timeout)"])
        }
        apply(outcome)
    }

    // MARK: Running a worker slot

    /// Runs the processes of one slot, one after the other, until shutdown.
    private func runSlot(_ slot: Int) async {
        while true {
            guard let incarnation = state.withLockedValue({ $0.machine.spawnStarting(slot: slot) }) else { return }
            let startedAt = ContinuousClock.now
            var pid: Int32?
            var status = "not started"
            var spawnError: String?
            do {
                let result = try await Subprocess.run(
                    processConfiguration(),
                    input: .inputWriter,
                    output: .sequence,
                    error: .sequence
                ) { execution in
                    await self.drive(execution, slot: slot, incarnation: incarnation)
                }
                pid = result.processIdentifier.value
                status = Self.describe(result.terminationStatus)
            } catch {
                spawnError = "\(error)"
                status = "spawn failed: \(error)"
            }
            if pid == nil {
                // The body may have run (and registered the pid) even if `run` threw afterwards.
                pid = state.withLockedValue { $0.handles[slot]?.pid }
                if pid != nil { spawnError = nil }
            }
            let uptime = ContinuousClock.now - startedAt
            let action = state.withLockedValue { state in
                state.handles[slot] = nil
                let action = state.machine.exited(
                    slot: slot, incarnation: incarnation, pid: pid, status: status, uptime: uptime, spawnError: spawnError)
                for failure in action.failed { state.timers.removeValue(forKey: failure.requestID)?.cancel() }
                return action
            }
            for failure in action.failed { failure.call.continuation.resume(returning: .failure(failure.error)) }
            guard let delay = action.restartDelay else {
                logger.debug("worker exited", metadata: ["pid": "\(pid.map(String.init) ?? "-")", "status": "\(status)"])
                return
            }
            logger.warning(
                "worker exited; restarting",
                metadata: [
                    "pid": "\(pid.map(String.init) ?? "-")", "status": "\(status)",
                    "delay": "\(Self.seconds(delay))", "failures": "\(action.consecutiveFailures)",
                ])
            try? await Task.sleep(for: delay)
        }
    }

    /// Runs one process: registers it, writes requests, reads answers, drains stderr; stops it when asked
    /// (or when its stdout ends). Returns once the process is gone (it is reaped by `run` after this).
    private func drive(
        _ execution: Execution<CustomWriteInput, SequenceOutput, SequenceOutput>, slot: Int,
        incarnation: StateMachine.Incarnation
    ) async {
        let pid = execution.processIdentifier.value
        let (requests, requestsContinuation) = AsyncStream.makeStream(of: [UInt8].self)
        let (stopSignal, stopContinuation) = AsyncStream.makeStream(of: Never.self)
        let handle = WorkerHandle(pid: pid, requests: requestsContinuation, stop: stopContinuation)
        let spawned = state.withLockedValue { state in
            state.handles[slot] = handle
            return state.machine.spawned(slot: slot, incarnation: incarnation, pid: pid)
        }
        logger.debug("worker started", metadata: ["pid": "\(pid)"])
        switch spawned {
        case .none: break
        case .dispatch(let dispatch): send(dispatch, to: handle)
        case .stop: stopContinuation.finish()
        }

        let writer = execution.standardInputWriter
        let output = execution.standardOutput
        let errors = execution.standardError
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                await self.drainStderr(errors, pid: pid)
            }
            group.addTask {
                await self.readAnswers(output, slot: slot, incarnation: incarnation, pid: pid)
                // Stdout ended: the worker exited (or closed it), either way it is done.
                stopContinuation.finish()
            }
            group.addTask {
                for await line in requests {
                    do {
                        _ = try await writer.write(line)
                    } catch {
                        let outcome = self.state.withLockedValue {
                            $0.machine.writeFailed(slot: slot, incarnation: incarnation, reason: "\(error)")
                        }
                        self.apply(outcome)
                        break
                    }
                }
            }
            for await _ in stopSignal {}
            requestsContinuation.finish()
            try? await writer.finish()
            await execution.teardown(using: [
                .gracefulShutDown(toProcessGroup: true, allowedDurationToNextStep: Self.stopGracePeriod)
            ])
            await group.waitForAll()
        }
    }

    /// Splits stdout into lines and hands each to the state machine; after a violation, discards the rest.
    private func readAnswers(
        _ output: SubprocessOutputSequence, slot: Int, incarnation: StateMachine.Incarnation, pid: Int32
    ) async {
        var splitter = LineSplitter(maxLineBytes: max(1, configuration.maxLineBytes))
        var healthy = true
        let overLong = "a line longer than \(configuration.maxLineBytes) bytes"
        do {
            for try await chunk in output {
                guard healthy else { continue }
                _ = chunk.withUnsafeBytes { bytes in
                    splitter.feed(bytes) { line, truncated in
                        if truncated > 0 {
                            self.violation(slot: slot, incarnation: incarnation, pid: pid, reason: overLong)
                            healthy = false
                        } else {
                            healthy = self.handleLine(line, slot: slot, incarnation: incarnation, pid: pid)
                        }
                        return healthy
                    }
                }
                if healthy && splitter.isOverLong {
                    violation(slot: slot, incarnation: incarnation, pid: pid, reason: overLong)
                    healthy = false
                }
            }
        } catch {
            // The read was cancelled (the process exited or the pool stops): nothing more to read.
        }
    }

    /// Handles one answer line; false if it was a protocol violation (the worker is being stopped).
    private func handleLine(
        _ line: UnsafeRawBufferPointer, slot: Int, incarnation: StateMachine.Incarnation, pid: Int32
    ) -> Bool {
        switch WorkerProtocol.parseAnswer(line, pid: pid) {
        case .blank:
            return true
        case .answer(let id, let result):
            let outcome = state.withLockedValue {
                $0.machine.answerReceived(slot: slot, incarnation: incarnation, requestID: id, result: result)
            }
            if outcome.stopWorker {
                logger.warning(
                    "worker sent an answer with a wrong id; replacing it",
                    metadata: ["pid": "\(pid)", "line": "\(WorkerProtocol.preview(line))"])
            }
            apply(outcome)
            return !outcome.stopWorker
        case .invalid(let reason):
            violation(slot: slot, incarnation: incarnation, pid: pid, reason: reason)
            return false
        }
    }

    private func violation(slot: Int, incarnation: StateMachine.Incarnation, pid: Int32, reason: String) {
        logger.warning("worker sent an invalid answer; replacing it", metadata: ["pid": "\(pid)", "reason": "\(reason)"])
        let outcome = state.withLockedValue {
            $0.machine.protocolViolation(slot: slot, incarnation: incarnation, reason: reason)
        }
        apply(outcome)
    }

    /// Reads the worker's stderr to its end and logs it line by line (truncated, rate-limited).
    private func drainStderr(_ errors: SubprocessOutputSequence, pid: Int32) async {
        var splitter = LineSplitter(maxLineBytes: Self.maxStderrLineBytes)
        var windowStart = ContinuousClock.now
        var logged = 0
        var suppressed = 0
        let logger = self.logger
        func emit(_ line: UnsafeRawBufferPointer, truncated: Int) {
            let now = ContinuousClock.now
            if now - windowStart >= .seconds(1) {
                if suppressed > 0 {
                    logger.warning("worker stderr: \(suppressed) lines not logged (too many)", metadata: ["pid": "\(pid)"])
                }
                windowStart = now
                logged = 0
                suppressed = 0
            }
            guard logged < Self.maxStderrLinesPerSecond else {
                suppressed += 1
                return
            }
            logged += 1
            var text = String(decoding: line, as: UTF8.self)
            if text.hasSuffix("\r") { text.removeLast() }
            if truncated > 0 { text += "… (\(truncated) more bytes)" }
            logger.info("worker stderr: \(text)", metadata: ["pid": "\(pid)"])
        }
        do {
            for try await chunk in errors {
                _ = chunk.withUnsafeBytes { bytes in
                    splitter.feed(bytes) { line, truncated in
                        emit(line, truncated: truncated)
                        return true
                    }
                }
            }
        } catch {
            // Cancelled: the process is gone.
        }
        if suppressed > 0 {
            logger.warning("worker stderr: \(suppressed) lines not logged (too many)", metadata: ["pid": "\(pid)"])
        }
    }

    // MARK: Process configuration

    /// How to run a worker: the command (argv[0] looked up in PATH), environment, directory, process group.
    private func processConfiguration() -> Subprocess.Configuration {
        let command = configuration.command
        let program = command.first ?? ""
        let executable: Executable = program.contains("/") ? .path(.init(program)) : .name(program)
        var overrides: [Environment.Key: String?] = [:]
        for (name, value) in Self.environmentOverrides(configuration) { overrides[Environment.Key(stringLiteral: name)] = value }
        var options = PlatformOptions()
        // Its own process group: a terminal's Ctrl-C reaches the daemon only (which stops workers in order),
        // and stopping a worker also stops the processes it started.
        options.processGroupID = 0
        options.teardownSequence = [
            .gracefulShutDown(toProcessGroup: true, allowedDurationToNextStep: Self.stopGracePeriod)
        ]
        return Subprocess.Configuration(
            executable: executable,
            arguments: Arguments(Array(command.dropFirst())),
            environment: Environment.inherit.updating(overrides),
            workingDirectory: configuration.workingDirectory.map { .init($0) },
            platformOptions: options)
    }

    /// Changes to the daemon's environment for a worker: socket-activation variables removed (nil),
    /// then the configured variables.
    static func environmentOverrides(_ configuration: DaemonConfiguration.HandlerConfiguration) -> [String: String?] {
        var overrides: [String: String?] = [:]
        for name in removedEnvironment { overrides[name] = String?.none }
        for (name, value) in configuration.environment { overrides[name] = value }
        return overrides
    }

    static func describe(_ status: TerminationStatus) -> String {
        switch status {
        case .exited(let code): "exit code \(code)"
        case .signaled(let signal): "killed by signal \(signal)"
        }
    }

    static func seconds(_ duration: Duration) -> String {
        let (s, attoseconds) = duration.components
        let milliseconds = s * 1000 + attoseconds / 1_000_000_000_000_000
        return "\(milliseconds / 1000).\(String(String(milliseconds % 1000 + 1000).dropFirst()))"
    }
}

extension WorkerPool: ManagedSyncHandler {}
