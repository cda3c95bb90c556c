import CachedProtocol
import NIOConcurrencyHelpers
import NIOCore
import NIOExtras
import NIOPosix

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// A client of the `cached` daemon.
///
/// One client holds **one** Unix socket connection and multiplexes every concurrent call over it:
/// each request gets an id, requests are pipelined (written without waiting, flushed once per
/// event-loop tick) and answers are matched by id in whatever order the daemon sends them. Share one
/// client across your whole process.
///
/// The connection is opened by ``connect()`` or lazily by the first call. If it drops, every pending
/// call fails with ``CachedClientError`` (`.connectionClosed`) and the next call reconnects.
///
/// ```swift
/// let client = CachedClient()
/// try await client.set(key: "Student", identity: 12, value: "Ada", ttl: 60)
/// let answer = try await client.get(key: "Student", identity: 12)
/// ```
public final class CachedClient: Sendable {
    // MARK: Configuration

    /// The daemon's socket.
    public let socketPath: String
    /// The event loops the connection runs on.
    public let eventLoopGroup: any EventLoopGroup
    /// The longest answer line the client buffers; a longer one closes the connection with
    /// `.protocolViolation`.
    public let maximumAnswerBytes: Int
    /// Entries kept in the near cache (0: none).
    public let nearCacheCapacity: Int
    /// The near cache, when ``nearCacheCapacity`` is above 0.
    let near: NearCache?
    /// The timeout of a call that names none (nil: the daemon's `request_timeout`, and no limit here).
    public let timeout: Duration?

    /// How much longer than a call's timeout the client waits for the daemon's answer before it gives up
    /// itself: the daemon answers -32009 at the deadline, this is only for a daemon that cannot answer.
    public static let answerGrace: Duration = .milliseconds(500)

    /// The socket used when none is given: `$CACHED_SOCKET`, else `/run/cached/cached.sock`.
    public static var defaultSocketPath: String {
        ProcessInfo.processInfo.environment["CACHED_SOCKET"] ?? "/run/cached/cached.sock"
    }

    // MARK: State

    private enum Connection {
        case idle
        case connecting(EventLoopFuture<any Channel>, generation: Int)
        case connected(any Channel)
        case closed
    }

    private struct State {
        var connection: Connection = .idle
        var generation = 0
        var nextID = 1
    }

    private let state = NIOLockedValueBox(State())

    // MARK: Lifecycle

    /// Creates a client; nothing is connected yet.
    /// - Parameters:
    ///   - socketPath: the daemon's Unix socket (default: `$CACHED_SOCKET`, else `/run/cached/cached.sock`).
    ///   - eventLoopGroup: where the connection runs (default: NIO's shared singleton group).
    ///   - maximumAnswerBytes: the longest answer line accepted (default 64 MiB).
    ///   - nearCache: keep up to this many `get` answers in the process (0, the default: none). The
    ///     connection asks the daemon to `track` it, and the daemon's `invalidate` notifications drop
    ///     what changed; only answers the daemon marks with `nearTTL` are kept, at most that long. See
    ///     docs/protocol.md (`track`).
    ///   - timeout: how long a call that names no timeout of its own may take (sent as its `timeout`: the
    ///     daemon answers -32009 at that deadline and stops working for it); nil, the default: the daemon's
    ///     `request_timeout`.
    public init(
        socketPath: String = CachedClient.defaultSocketPath,
        eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        maximumAnswerBytes: Int = 64 << 20,
        nearCache: Int = 0,
        timeout: Duration? = nil
    ) {
        self.timeout = timeout
        self.socketPath = socketPath
        self.eventLoopGroup = eventLoopGroup
        self.maximumAnswerBytes = maximumAnswerBytes
        self.nearCacheCapacity = max(0, nearCache)
        self.near = nearCache > 0 ? NearCache(capacity: nearCache) : nil
    }

    deinit {
        if case .connected(let channel) = state.withLockedValue({ $0.connection }) {
            channel.close(promise: nil)
        }
    }

    /// Connects now (otherwise the first call does). Also reopens a client after ``close()``.
    /// - Throws: ``CachedClientError`` `.connectionFailed` if the socket cannot be connected.
    public func connect() async throws {
        state.withLockedValue { state in
            if case .closed = state.connection { state.connection = .idle }
        }
        _ = try await channel()
    }

    /// Closes the connection. Pending calls fail with `.connectionClosed`; later calls fail with
    /// `.clientClosed` until ``connect()`` is called again.
    public func close() async {
        let previous = state.withLockedValue { state in
            let previous = state.connection
            state.connection = .closed
            return previous
        }
        switch previous {
        case .connected(let channel):
            try? await channel.close()
        case .connecting(let future, _):
            if let channel = try? await future.get() { try? await channel.close() }
        case .idle, .closed:
            break
        }
    }

    // MARK: Connection

    /// The open channel, connecting (or reconnecting) if needed. Concurrent callers share one attempt.
    private func channel() async throws(CachedClientError) -> any Channel {
        enum Step {
            case ready(any Channel)
            case wait(EventLoopFuture<any Channel>)
            case closed
        }
        let step: Step = state.withLockedValue { state in
            switch state.connection {
            case .connected(let channel) where channel.isActive:
                return .ready(channel)
            case .connecting(let future, _):
                return .wait(future)
            case .closed:
                return .closed
            case .idle, .connected:
                state.generation += 1
                let generation = state.generation
                let future = makeConnection()
                state.connection = .connecting(future, generation: generation)
                future.whenComplete { [self] result in
                    self.state.withLockedValue { state in
                        guard case .connecting(_, let g) = state.connection, g == generation else {
                            // Closed while connecting.
                            if case .success(let channel) = result { channel.close(promise: nil) }
                            return
                        }
                        switch result {
                        case .success(let channel): state.connection = .connected(channel)
                        case .failure: state.connection = .idle
                        }
                    }
                }
                return .wait(future)
            }
        }
        switch step {
        case .ready(let channel):
            return channel
        case .closed:
            throw CachedClientError(.clientClosed, "the client was closed; call connect() to reopen it")
        case .wait(let future):
            do {
                return try await future.get()
            } catch {
                throw .connectionFailed("cannot connect to \(socketPath): \(error)")
            }
        }
    }

    private func makeConnection() -> EventLoopFuture<any Channel> {
        let maximumAnswerBytes = self.maximumAnswerBytes
        let near = self.near
        let socketPath = self.socketPath
        let connected = ClientBootstrap(group: eventLoopGroup)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandlers([
                        ByteToMessageHandler(LineBasedFrameDecoder(), maximumBufferSize: maximumAnswerBytes),
                        AnswerHandler(),
                    ])
                }
            }
            .connect(unixDomainSocketPath: socketPath)
        guard let near else { return connected }
        // A near cache: the connection is tracked before anything is read on it (request id 0, which the
        // counter of ``exchange(_:asBatch:)`` never hands out), its notifications on a second socket that
        // the near cache reads itself (``NearCache``). Setting that socket up blocks this event loop for
        // one short exchange with the daemon, once per connection.
        return connected.flatMap { channel in
            var line = channel.allocator.buffer(capacity: 96)
            line.writeCachedRequestLine(
                [Request(method: "track", params: ["maxEntries": .number(String(near.capacity)), "separate": .bool(true)])],
                ids: [0], asBatch: false)
            let answer = channel.eventLoop.makePromise(of: DaemonAnswer.self)
            channel.writeAndFlush(OutgoingLine(line: line, waiters: [(0, answer)]), promise: nil)
            return answer.futureResult.flatMapThrowing { result in
                guard case .object(let members) = try result.get(), case .string(let token)? = members["token"] else {
                    throw CachedClientError.protocolViolation("track {separate: true} answered without a token")
                }
                let (fd, pending) = try NearCache.openNotifications(path: socketPath, token: token)
                let number = near.newConnection(notifications: fd, pending: pending, proof: NearCache.proof(fromTrackAnswer: members))
                channel.closeFuture.whenComplete { _ in near.connectionEnded(number) }
                return channel
            }.flatMapErrorThrowing { error in
                channel.close(promise: nil)
                throw error
            }
        }
    }


    // MARK: Sending

    /// Sends requests on one line (a batch array when `asBatch`) and waits for every answer.
    ///
    /// Each request carries its timeout (its own, else the client's): the daemon answers -32009 at that
    /// deadline. Should the daemon not answer at all, the client gives up itself ``answerGrace`` later with
    /// the same error. A cancelled task stops waiting at once and throws `CancellationError` (a late answer
    /// is dropped; the connection stays usable).
    func exchange(_ requests: [Request], asBatch: Bool) async throws -> [DaemonAnswer] {
        for request in requests { try request.validate() }
        try Task.checkCancellation()
        var requests = requests
        var longest: Duration?
        for i in requests.indices {
            guard let timeout = requests[i].timeout ?? self.timeout else { continue }
            requests[i].params = requests[i].params ?? [:]
            requests[i].params![RequestTimeout.name] = .number(String(Request.seconds(timeout)))
            longest = max(longest ?? timeout, timeout)
        }
        let channel = try await channel()
        let ids = state.withLockedValue { state in
            let first = state.nextID
            state.nextID &+= requests.count
            if state.nextID < 0 { state.nextID = 1 }
            return (0..<requests.count).map { first &+ $0 }
        }
        var line = channel.allocator.buffer(capacity: 128 * requests.count)
        line.writeCachedRequestLine(requests, ids: ids, asBatch: asBatch)
        let promises = ids.map { _ in channel.eventLoop.makePromise(of: DaemonAnswer.self) }
        let written = channel.eventLoop.makePromise(of: Void.self)
        channel.write(OutgoingLine(line: line, waiters: Array(zip(ids, promises))), promise: written)
        // A channel that closed meanwhile fails the write without reaching the handler.
        written.futureResult.whenFailure { error in
            let failure = CachedClientError.connectionClosed("write failed: \(error)")
            for promise in promises { promise.fail(failure) }
        }
        // The backstop: a daemon that cannot answer by the deadline (stalled, say) is given up on here.
        let timeouts = requests.map { ($0.method, $0.timeout ?? self.timeout) }
        let backstop = longest.map { longest in
            channel.eventLoop.scheduleTask(in: TimeAmount(longest + Self.answerGrace)) {
                for ((method, timeout), promise) in zip(timeouts, promises) {
                    let timeout = timeout ?? longest
                    promise.succeed(
                        .failure(
                            CachedError(
                                .deadlineExceeded, "\(method): no answer from cached within \(Request.seconds(timeout)) s",
                                data: .object(["timeout": .number(String(Request.seconds(timeout)))]))))
                }
            }
        }
        defer { backstop?.cancel() }
        return try await withTaskCancellationHandler {
            var answers: [DaemonAnswer] = []
            answers.reserveCapacity(promises.count)
            for promise in promises {
                do {
                    answers.append(try await promise.futureResult.get())
                } catch let error as CachedClientError {
                    throw error
                } catch let error as CancellationError {
                    throw error
                } catch {
                    throw CachedClientError.connectionClosed("\(error)")
                }
            }
            return answers
        } onCancel: {
            for promise in promises { promise.fail(CancellationError()) }
        }
    }

    /// Sends one request and returns its raw `result`.
    /// - Throws: `CachedError` for an error answer (with its JSON-RPC code), ``CachedClientError``
    ///   when the daemon cannot be reached or the connection drops.
    public func send(_ request: Request) async throws -> JSONValue {
        try await exchange([request], asBatch: false)[0].get()
    }

    /// Sends a raw request for any method and returns its `result`.
    public func call(_ method: String, params: [String: JSONValue]? = nil) async throws -> JSONValue {
        try await send(Request(method: method, params: params))
    }

    /// Sends several requests as one JSON-RPC batch (one line, one answer line) and returns the
    /// answers in the order of `requests`.
    /// - Throws: ``CachedClientError`` only (error answers are `.failure` elements). An empty batch
    ///   returns `[]` without contacting the daemon.
    public func batch(_ requests: [Request]) async throws -> [Result<JSONValue, CachedError>] {
        guard !requests.isEmpty else { return [] }
        return try await exchange(requests, asBatch: true)
    }
}
