import CachedProtocol
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOExtras
import NIOPosix

#if canImport(Glibc)
import Glibc
#endif

/// The sync handler of one key: long-lived worker processes speaking newline-delimited JSON-RPC 2.0 on
/// stdin/stdout (docs/worker-protocol.md), one call at a time each.
///
/// - Calls queue (FIFO) when every worker is busy, up to `queue_limit`; beyond it they fail with -32006.
/// - A call has `timeout` seconds from the moment it is made; past it, it fails with -32005, and if a
///   worker was running it, that worker is stopped (SIGTERM, then SIGKILL) and replaced.
/// - A worker that exits, crashes or writes garbage (not JSON, wrong id, unsolicited or over-long line)
///   fails its call with -32004 and is replaced; restarts back off exponentially when workers keep failing.
/// - Worker stderr is always drained and logged line by line (rate-limited, long lines truncated).
///
/// All mutable state is confined to one event loop; that is why the class is `@unchecked Sendable`.
public final class WorkerProcessPool: ManagedSyncHandler, @unchecked Sendable {
    public let key: String
    public let configuration: DaemonConfiguration.HandlerConfiguration
    let logger: Logger
    let loop: any EventLoop

    // MARK: Loop-confined state
    private var workers: [Worker] = []
    private var queue = CircularBuffer<Call>()
    private var stopped = false
    private var consecutiveFailures = 0
    private var pendingStarts = 0
    private var nextCallID = 0
    private var unreaped: [pid_t: NIODeadline] = [:]
    private var reaper: RepeatedTask?
    private var shutdownPromise: EventLoopPromise<Void>?
    private var lastSpawnError: String?

    // MARK: Counters, read from any thread
    private let counters = NIOLockedValueBox(Counters())

    struct Counters {
        var calls = 0
        var failures = 0
        var timeouts = 0
        var restarts = 0
        var overloaded = 0
        var alive = 0
        var busy = 0
        var queued = 0
    }

    public init(key: String, configuration: DaemonConfiguration.HandlerConfiguration, logger: Logger, eventLoop: (any EventLoop)? = nil) {
        self.key = key
        self.configuration = configuration
        var logger = logger
        logger[metadataKey: "key"] = "\(key)"
        self.logger = logger
        self.loop = eventLoop ?? MultiThreadedEventLoopGroup.singleton.any()
    }

    // MARK: Lifecycle

    /// Starts the workers (returns once they are spawned).
    public func start() async {
        try? await loop.submit {
            for _ in 0..<self.configuration.workers { self.spawnWorker() }
        }.get()
    }

    /// Stops all workers: queued and running calls fail with -32007; stdin is closed and SIGTERM sent,
    /// SIGKILL after 2 s; returns when every worker has been reaped.
    public func shutdown() async {
        let done = loop.makePromise(of: Void.self)
        loop.execute {
            self.stopped = true
            let error = CachedError(.shuttingDown, "the handler of key \(self.key) is stopping")
            while let call = self.queue.popFirst() { self.finish(call, .failure(error)) }
            for worker in self.workers {
                if case .busy(let call) = worker.state { self.finish(call, .failure(error)) }
                worker.state = .dead
                worker.channel?.close(promise: nil)
                self.terminate(worker.pid)
            }
            self.workers.removeAll()
            self.updateGauges()
            if self.unreaped.isEmpty {
                done.succeed()
            } else {
                self.shutdownPromise = done
            }
        }
        try? await done.futureResult.get()
    }

    // MARK: Calls

    /// One sync call: the value, or nil when the worker answered `null` ("no such entry").
    public func call(_ address: EntryAddress, arguments: HandlerArguments) async throws(CachedError) -> ByteBuffer? {
        let promise = loop.makePromise(of: ByteBuffer?.self)
        let params = Self.params(address, arguments)
        loop.execute { self.enqueue(params, promise) }
        do {
            return try await promise.futureResult.get()
        } catch let error as CachedError {
            throw error
        } catch {
            throw CachedError(.handlerError, "handler failed: \(error)")
        }
    }

    public var callCount: Int { counters.withLockedValue { $0.calls } }

    public var status: JSONValue {
        let c = counters.withLockedValue { $0 }
        func n(_ i: Int) -> JSONValue { .number(String(i)) }
        return .object([
            "workers": n(configuration.workers), "alive": n(c.alive), "busy": n(c.busy), "queued": n(c.queued),
            "calls": n(c.calls), "failures": n(c.failures), "timeouts": n(c.timeouts), "restarts": n(c.restarts),
            "overloaded": n(c.overloaded),
        ])
    }

    static func params(_ address: EntryAddress, _ arguments: HandlerArguments) -> JSONValue {
        var members: [String: JSONValue] = [
            "key": .string(address.key), "identity": address.identity.jsonValue,
            "args": .array(arguments.args), "kwargs": .object(arguments.kwargs),
        ]
        if let hash = address.hash {
            members["hashKey"] = .string(hash.hashKey)
            members["hashId"] = hash.hashId.jsonValue
        }
        return .object(members)
    }

    private func enqueue(_ params: JSONValue, _ promise: EventLoopPromise<ByteBuffer?>) {
        counters.withLockedValue { $0.calls += 1 }
        guard !stopped else {
            promise.fail(CachedError(.shuttingDown, "the handler of key \(key) is stopping"))
            return
        }
        nextCallID += 1
        let call = Call(id: nextCallID, params: params, promise: promise)
        call.timeout = loop.scheduleTask(in: .nanoseconds(Int64(configuration.timeout * 1e9))) { self.timedOut(call) }
        if let worker = workers.first(where: { $0.isIdle }) {
            run(call, on: worker)
            return
        }
        guard queue.count < configuration.queueLimit else {
            counters.withLockedValue { $0.overloaded += 1 }
            finish(call, .failure(CachedError(.overloaded, "the handler of key \(key) has \(queue.count) calls waiting (queue_limit)")))
            return
        }
        if workers.isEmpty, pendingStarts == 0, let lastSpawnError {
            finish(call, .failure(CachedError(.handlerError, "no worker is running for key \(key): \(lastSpawnError)")))
            return
        }
        queue.append(call)
        updateGauges()
    }

    private func dispatch() {
        while let worker = workers.first(where: { $0.isIdle }), let call = queue.popFirst() {
            if call.isDone { continue }
            run(call, on: worker)
        }
        updateGauges()
    }

    private func run(_ call: Call, on worker: Worker) {
        guard let channel = worker.channel else { return }
        worker.state = .busy(call)
        call.worker = worker
        var line = channel.allocator.buffer(capacity: 256)
        line.writeJSONValue(.object(["jsonrpc": .string("2.0"), "id": .number(String(call.id)), "method": .string("sync"), "params": call.params]))
        line.writeInteger(UInt8(ascii: "\n"))
        channel.writeAndFlush(line).whenFailure { error in
            self.workerFailed(worker, reason: "cannot write to the worker: \(error)")
        }
        updateGauges()
    }

    private func finish(_ call: Call, _ result: Result<ByteBuffer?, CachedError>) {
        guard !call.isDone else { return }
        call.isDone = true
        call.timeout?.cancel()
        switch result {
        case .success(let value): call.promise.succeed(value)
        case .failure(let error):
            counters.withLockedValue { $0.failures += 1 }
            call.promise.fail(error)
        }
    }

    private func timedOut(_ call: Call) {
        guard !call.isDone else { return }
        counters.withLockedValue { $0.timeouts += 1 }
        finish(call, .failure(CachedError(.handlerTimeout, "the handler of key \(key) did not answer within \(configuration.timeout) s")))
        if let worker = call.worker, case .busy(let running) = worker.state, running === call {
            logger.warning("worker timed out; replacing it", metadata: ["pid": "\(worker.pid)", "timeout": "\(configuration.timeout)"])
            retire(worker, failure: false)
        } else {
            queue.removeAll { $0 === call }
            updateGauges()
        }
    }

    // MARK: Answers

    /// A line from a worker's stdout.
    func received(_ line: ByteBuffer, from worker: Worker) {
        guard case .busy(let call) = worker.state else {
            workerFailed(worker, reason: "unsolicited output")
            return
        }
        let answer: Result<ByteBuffer?, CachedError>
        do {
            answer = try Self.parseAnswer(line, expecting: call.id, pid: worker.pid)
        } catch {
            finish(call, .failure(CachedError(.handlerError, "the worker of key \(key) wrote an invalid answer: \(error.message)")))
            worker.state = .idle  // so that workerFailed does not fail the call twice
            workerFailed(worker, reason: error.message)
            return
        }
        finish(call, answer)
        worker.state = .idle
        worker.answered += 1
        consecutiveFailures = 0
        dispatch()
    }

    /// Maps an answer line to a value, "no entry", or the worker's error; throws for garbage.
    static func parseAnswer(_ line: ByteBuffer, expecting id: Int, pid: pid_t) throws(CachedError) -> Result<ByteBuffer?, CachedError> {
        let value: JSONValue
        do {
            value = try line.withUnsafeReadableBytes { bytes throws(JSONParseError) in try JSONParser.parse(bytes, maxDepth: 64) }
        } catch {
            throw CachedError(.handlerError, "not JSON (\(error))")
        }
        guard case .object(let members) = value else { throw CachedError(.handlerError, "not a JSON-RPC answer object") }
        guard members["id"] == .number(String(id)) else {
            throw CachedError(.handlerError, "answer for id \(members["id"].map { "\($0)" } ?? "none"), expected \(id)")
        }
        if let error = members["error"] {
            let fields = error.objectValue ?? [:]
            let message = fields["message"]?.stringValue ?? "unknown error"
            var data: [String: JSONValue] = ["worker": .number(String(pid))]
            if let code = fields["code"] { data["code"] = code }
            if let detail = fields["data"] { data["data"] = detail }
            return .failure(CachedError(.handlerError, "handler error: \(message)", data: .object(data)))
        }
        guard let result = members["result"] else { throw CachedError(.handlerError, "neither result nor error") }
        switch result {
        case .null:
            return .success(nil)
        case .string(let s):
            return .success(ByteBuffer(string: s))
        case .object(let o):
            guard case .string(let s)? = o["value"] else { throw CachedError(.handlerError, "result object without a string \"value\"") }
            let encoding: ValueEncoding
            switch o["encoding"] {
            case nil, .string("utf8")?: encoding = .utf8
            case .string("base64")?: encoding = .base64
            default: throw CachedError(.handlerError, "unknown encoding")
            }
            do {
                return .success(try ValueEncoding.decode(s, encoding: encoding))
            } catch {
                throw CachedError(.handlerError, "invalid base64 value")
            }
        default:
            throw CachedError(.handlerError, "result must be a string, {value, encoding} or null")
        }
    }

    // MARK: Workers

    private func spawnWorker() {
        guard !stopped else { return }
        let process: SpawnedProcess
        do {
            process = try ProcessSpawner.spawn(configuration.command, environment: configuration.environment, workingDirectory: configuration.workingDirectory)
        } catch {
            lastSpawnError = error.description
            logger.error("cannot start worker", metadata: ["error": "\(error.description)"])
            if workers.isEmpty && pendingStarts == 0 {
                let failure = CachedError(.handlerError, "no worker is running for key \(key): \(error.description)")
                while let call = queue.popFirst() { finish(call, .failure(failure)) }
            }
            consecutiveFailures += 1
            scheduleRestart()
            return
        }
        lastSpawnError = nil
        let worker = Worker(pid: process.pid)
        workers.append(worker)
        logger.info("worker started", metadata: ["pid": "\(process.pid)", "command": "\(configuration.command.joined(separator: " "))"])
        let maxLine = configuration.maxLineBytes
        let loopBound = NIOLoopBound(self, eventLoop: loop)
        NIOPipeBootstrap(group: loop)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandlers([
                        ByteToMessageHandler(LineBasedFrameDecoder(), maximumBufferSize: maxLine),
                        WorkerOutputHandler(pool: loopBound.value, worker: worker),
                    ])
                }
            }
            .takingOwnershipOfDescriptors(input: process.stdout, output: process.stdin)
            .whenComplete { result in
                switch result {
                case .success(let channel):
                    worker.channel = channel
                    if case .starting = worker.state { worker.state = .idle }
                    self.dispatch()
                case .failure(let error):
                    close(process.stdout)
                    close(process.stdin)
                    self.workerFailed(worker, reason: "cannot attach to the worker's pipes: \(error)")
                }
            }
        let logger = self.logger
        NIOPipeBootstrap(group: loop)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(WorkerStderrHandler(pid: process.pid, logger: logger))
                }
            }
            .takingOwnershipOfDescriptor(input: process.stderr)
            .whenFailure { _ in close(process.stderr) }
        updateGauges()
    }

    /// The worker's stdout closed, its pipe failed, or it misbehaved: fail its call, replace it.
    func workerFailed(_ worker: Worker, reason: String) {
        if case .dead = worker.state { return }
        if case .busy(let call) = worker.state {
            finish(call, .failure(CachedError(.handlerError, "the worker of key \(key) failed during the call: \(reason)")))
        }
        logger.warning("worker failed; replacing it", metadata: ["pid": "\(worker.pid)", "reason": "\(reason)"])
        retire(worker, failure: true)
    }

    /// Stops a worker and starts a replacement (with backoff when workers keep failing).
    private func retire(_ worker: Worker, failure: Bool) {
        worker.state = .dead
        workers.removeAll { $0 === worker }
        worker.channel?.close(promise: nil)
        terminate(worker.pid)
        if failure && (worker.answered == 0 || NIODeadline.now() - worker.startedAt < .seconds(5)) {
            consecutiveFailures += 1
        }
        scheduleRestart()
        updateGauges()
    }

    private func scheduleRestart() {
        guard !stopped else { return }
        let minimum = configuration.restartMinDelay
        let delay = consecutiveFailures == 0 ? minimum : min(configuration.restartMaxDelay, minimum * pow(2, Double(min(consecutiveFailures - 1, 20))))
        pendingStarts += 1
        counters.withLockedValue { $0.restarts += 1 }
        if consecutiveFailures > 0 {
            logger.notice("restarting worker after backoff", metadata: ["delay": "\(delay)", "consecutive_failures": "\(consecutiveFailures)"])
        }
        loop.scheduleTask(in: .nanoseconds(Int64(delay * 1e9))) {
            self.pendingStarts -= 1
            if self.workers.count < self.configuration.workers { self.spawnWorker() }
        }
    }

    /// SIGTERM now, SIGKILL after 2 s if still there; reaped by the reaper.
    private func terminate(_ pid: pid_t) {
        kill(pid, SIGTERM)
        unreaped[pid] = .now() + .seconds(2)
        if reaper == nil {
            reaper = loop.scheduleRepeatedTask(initialDelay: .milliseconds(20), delay: .milliseconds(50)) { _ in self.reap() }
        }
    }

    private func reap() {
        let now = NIODeadline.now()
        for (pid, killAt) in unreaped {
            var status: CInt = 0
            let r = waitpid(pid, &status, WNOHANG)
            if r == pid || (r == -1 && errno == ECHILD) {
                unreaped[pid] = nil
                let signal = status & 0x7F
                logger.info("worker exited", metadata: ["pid": "\(pid)", signal == 0 ? "status" : "signal": "\(signal == 0 ? (status >> 8) & 0xFF : signal)"])
            } else if now >= killAt {
                kill(pid, SIGKILL)
                unreaped[pid] = now + .seconds(3600)
            }
        }
        if unreaped.isEmpty {
            reaper?.cancel()
            reaper = nil
            shutdownPromise?.succeed()
            shutdownPromise = nil
        }
    }

    private func updateGauges() {
        let alive = workers.count
        let busy = workers.filter { if case .busy = $0.state { return true } else { return false } }.count
        let queued = queue.count
        counters.withLockedValue {
            $0.alive = alive
            $0.busy = busy
            $0.queued = queued
        }
    }
}

// MARK: - Worker and call records

extension WorkerProcessPool {
    /// One worker process. Loop-confined: only touched on the pool's event loop.
    final class Worker: @unchecked Sendable {
        enum State {
            case starting
            case idle
            case busy(Call)
            case dead
        }

        let pid: pid_t
        let startedAt = NIODeadline.now()
        var state = State.starting
        var channel: (any Channel)?
        var answered = 0

        init(pid: pid_t) { self.pid = pid }

        var isIdle: Bool {
            if case .idle = state, channel != nil { return true }
            return false
        }
    }

    /// One sync call. Loop-confined: only touched on the pool's event loop.
    final class Call: @unchecked Sendable {
        let id: Int
        let params: JSONValue
        let promise: EventLoopPromise<ByteBuffer?>
        var timeout: Scheduled<Void>?
        var worker: Worker?
        var isDone = false

        init(id: Int, params: JSONValue, promise: EventLoopPromise<ByteBuffer?>) {
            self.id = id
            self.params = params
            self.promise = promise
        }
    }
}

// MARK: - Channel handlers

/// Hands each stdout line of a worker to its pool.
final class WorkerOutputHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    let pool: WorkerProcessPool
    let worker: WorkerProcessPool.Worker

    init(pool: WorkerProcessPool, worker: WorkerProcessPool.Worker) {
        self.pool = pool
        self.worker = worker
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        pool.received(unwrapInboundIn(data), from: worker)
    }

    func channelInactive(context: ChannelHandlerContext) {
        pool.workerFailed(worker, reason: "the worker exited (its stdout closed)")
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        let reason = error is ByteToMessageDecoderError.PayloadTooLargeError ? "answer line longer than max_line_bytes" : "\(error)"
        pool.workerFailed(worker, reason: reason)
        context.close(promise: nil)
    }
}

/// Logs a worker's stderr line by line: lines over 4 KiB are truncated, at most 100 lines a second
/// are logged (the rest are counted), and the pipe is always drained.
final class WorkerStderrHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    static let maxLine = 4096
    static let linesPerSecond = 100

    let pid: pid_t
    let logger: Logger
    private var pending: [UInt8] = []
    private var skipping = false
    private var windowStart = NIODeadline.now()
    private var loggedInWindow = 0
    private var dropped = 0

    init(pid: pid_t, logger: Logger) {
        self.pid = pid
        self.logger = logger
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = unwrapInboundIn(data)
        for byte in buffer.readableBytesView {
            if byte == UInt8(ascii: "\n") {
                if !skipping { emit(pending, truncated: false) }
                pending.removeAll(keepingCapacity: true)
                skipping = false
            } else if !skipping {
                pending.append(byte)
                if pending.count >= Self.maxLine {
                    emit(pending, truncated: true)
                    pending.removeAll(keepingCapacity: true)
                    skipping = true
                }
            }
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        if !pending.isEmpty && !skipping { emit(pending, truncated: false) }
        flushDropped()
        context.fireChannelInactive()
    }

    private func emit(_ line: [UInt8], truncated: Bool) {
        let now = NIODeadline.now()
        if now - windowStart > .seconds(1) {
            flushDropped()
            windowStart = now
            loggedInWindow = 0
        }
        guard loggedInWindow < Self.linesPerSecond else {
            dropped += 1
            return
        }
        loggedInWindow += 1
        let text = String(decoding: line, as: UTF8.self) + (truncated ? "… (truncated)" : "")
        logger.info("worker stderr: \(text)", metadata: ["pid": "\(pid)"])
    }

    private func flushDropped() {
        if dropped > 0 {
            logger.warning("worker stderr lines not logged (rate limit)", metadata: ["pid": "\(pid)", "lines": "\(dropped)"])
            dropped = 0
        }
    }
}
