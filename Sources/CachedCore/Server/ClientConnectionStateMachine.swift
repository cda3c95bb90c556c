import CachedProtocol

/// The life of one client connection, as a pure state machine: how many requests are in flight, whether
/// reading is held back (backpressure), and when the connection closes (half-close, quiesce, drain
/// deadline, fatal errors). ``ClientConnectionHandler`` feeds it events and does the I/O its answers ask for.
struct ClientConnectionStateMachine {
    enum State: Equatable {
        /// Reading and answering.
        case active
        /// The client half-closed: answer what is in flight, then close.
        case inputClosed
        /// The daemon is shutting down: read nothing more, answer what is in flight, then close.
        case quiescing
        /// Closing: nothing more is read or written.
        case closing
    }

    /// What the handler must do.
    enum Action: Equatable {
        case none
        /// Ask the channel for more bytes (a read that was held back).
        case read
        /// Close the connection; `flushFirst`: after writing what is pending.
        case close(flushFirst: Bool)
    }

    private(set) var state = State.active
    /// Requests (or batches) started and not yet answered.
    private(set) var inFlight = 0
    /// A read the channel asked for and that was held back.
    private(set) var readHeldBack = false
    let maxInFlight: Int
    /// The ids each request in flight will be answered with, by sequence number: the drain deadline
    /// answers them -32007.
    private var pending: [UInt64: [JSONRPCID]] = [:]
    private var sequence: UInt64 = 0

    init(maxInFlight: Int) {
        self.maxInFlight = maxInFlight
    }

    var isClosing: Bool { state == .closing }

    /// The channel asks to read: true to pass the read on; false holds it back (too many requests in
    /// flight, quiescing or closing) until ``requestFinished(_:)`` lets it through.
    mutating func readRequested() -> Bool {
        if inFlight >= maxInFlight || state == .quiescing || state == .closing {
            readHeldBack = true
            return false
        }
        return true
    }

    /// A request (or a batch) started; returns its sequence number.
    mutating func requestStarted(ids: [JSONRPCID]) -> UInt64 {
        inFlight += 1
        sequence &+= 1
        pending[sequence] = ids
        return sequence
    }

    /// A request (or batch) has its answer: whether to write it (false once the drain deadline answered
    /// it already). Then call ``requestFinished()``.
    mutating func answerReady(_ seq: UInt64) -> Bool {
        pending.removeValue(forKey: seq) != nil
    }

    /// A request (or batch) ended and its answer is written: a held-back read may go on; an idle
    /// half-closed or quiescing connection closes.
    mutating func requestFinished() -> Action {
        inFlight -= 1
        if let close = closeIfIdle() { return close }
        if readHeldBack && inFlight < maxInFlight && state == .active {
            readHeldBack = false
            return .read
        }
        return .none
    }

    /// The client half-closed its side. Bytes left without a newline are not a request: the connection
    /// closes at once; otherwise it closes once every request in flight is answered.
    mutating func inputClosed(unterminatedBytes: Bool) -> Action {
        guard state == .active || state == .quiescing else { return .none }
        if unterminatedBytes { return close(flushFirst: false) }
        if state == .active { state = .inputClosed }
        return closeIfIdle() ?? .none
    }

    /// The daemon is shutting down: stop reading, close once idle.
    mutating func quiesce() -> Action {
        guard state == .active || state == .inputClosed else { return .none }
        state = .quiescing
        return closeIfIdle() ?? .none
    }

    /// Shutdown's drain deadline passed: the ids of every request still in flight (to be answered
    /// -32007, once each), then the connection closes.
    mutating func drainDeadline() -> (unanswered: [JSONRPCID], action: Action) {
        guard state != .closing else { return ([], .none) }
        let ids = pending.keys.sorted().flatMap { pending[$0]! }
        pending.removeAll()
        return (ids, close(flushFirst: true))
    }

    /// Something fatal (a line over the limit, an output backlog, a connection error): close now.
    mutating func fail(flushFirst: Bool) -> Action {
        guard state != .closing else { return .none }
        return close(flushFirst: flushFirst)
    }

    private mutating func closeIfIdle() -> Action? {
        guard (state == .inputClosed || state == .quiescing) && inFlight == 0 else { return nil }
        return close(flushFirst: true)
    }

    private mutating func close(flushFirst: Bool) -> Action {
        state = .closing
        return .close(flushFirst: flushFirst)
    }
}
