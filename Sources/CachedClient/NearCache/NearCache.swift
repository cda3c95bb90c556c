import CachedProtocol
import NIOConcurrencyHelpers
import NIOCore

#if canImport(Glibc)
import Glibc
#endif

/// The Swift client's near cache (``CachedClient/init(socketPath:eventLoopGroup:maximumAnswerBytes:nearCache:)``):
/// `get` answers kept in the process, dropped by the daemon's `invalidate` notifications (docs/protocol.md,
/// `track`). Only answers that carry `nearTTL` are kept, for at most that long; an answer that a
/// notification about its entry overtook while its `get` was in flight is not kept. Past `capacity` the
/// entry kept longest ago goes first.
///
/// The notifications come on a socket of their own (`track {separate: true}`, then `notifications
/// {token}` on that socket), which no event loop reads: every lookup first reads, without blocking and
/// under the cache's lock, whatever notifications that socket holds. A notification written before a
/// writer's answer is therefore applied before any later lookup, whatever the client's event loop is doing.
///
/// Under the daemon's staleness bound (the `track` answer names a proof page), a hit is served only when the
/// page's instant is at most `maxStaleness` old, read *before* the notification socket is drained: every
/// notification the instant vouches for is then applied before the lookup. A stalled daemon, or one that lost
/// its proof from Redis, stops the instant, and the near hits lapse by themselves (they are asked of the
/// daemon instead).
final class NearCache: Sendable {
    /// What vouches for the kept answers of a connection.
    enum Proof: Sendable {
        /// The daemon gives no bound: notifications alone.
        case none
        /// The daemon's proof page, and its bound in nanoseconds.
        case page(ProofPageReader, bound: UInt64)
        /// The daemon named a bound that cannot be checked (its page is missing): nothing is served.
        case unprovable
    }

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
        /// The notification socket (non-blocking), nil while there is none: then nothing is kept.
        var notifications: Int32?
        /// Bytes read from it that do not end a line yet.
        var partial: [UInt8] = []
        var proof = Proof.none
        var hits = 0
        var misses = 0
        /// Lookups refused for want of fresh proof.
        var unproven = 0
    }

    let capacity: Int
    private let state = NIOLockedValueBox(State())

    init(capacity: Int) {
        self.capacity = capacity
    }

    /// The kept answer, if any and not past its `nearTTL` (after the notifications waiting in the socket).
    func lookup(_ address: EntryAddress) -> GetResult? {
        let now = NIODeadline.now()
        return state.withLockedValue { state in
            guard state.entries[address] != nil else {
                state.misses += 1
                return nil  // asked of the daemon
            }
            // The proof first, then the notifications it vouches for.
            let proven: Bool
            switch state.proof {
            case .none: proven = true
            case .page(let page, let bound): proven = page.isFresh(now: .now(), bound: bound)
            case .unprovable: proven = false
            }
            Self.drain(&state)
            guard proven else {
                state.unproven += 1
                state.misses += 1
                return nil
            }
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

    /// What ``begin(_:)`` hands back for ``finish(_:token:answer:nearTTL:)``: the connection the `get` went
    /// out on, and when it was sent.
    struct Token: Sendable {
        var connection: Int
        var sentAt: NIODeadline
    }

    /// A `get` of `address` is about to be sent.
    func begin(_ address: EntryAddress) -> Token {
        let now = NIODeadline.now()
        return state.withLockedValue { state in
            state.inFlight[address, default: (0, false)].count += 1
            return Token(connection: state.connection, sentAt: now)
        }
    }

    /// The `get` ended (`answer` nil: it failed). Keeps the answer when the daemon allows it (`nearTTL`
    /// milliseconds, from the send), no notification about the entry came while it was in flight, and the
    /// connection is the one the `get` went out on.
    func finish(_ address: EntryAddress, token: Token, answer: GetResult?, nearTTL: Int64?) {
        state.withLockedValue { state in
            Self.drain(&state)  // a notification about it may have come meanwhile
            guard var flight = state.inFlight[address] else { return }
            flight.count -= 1
            state.inFlight[address] = flight.count > 0 ? flight : nil
            guard !flight.invalidated, token.connection == state.connection, state.notifications != nil, let answer, answer.hit,
                answer.value != nil,
                let nearTTL, nearTTL > 0
            else { return }
            // Counted from the send: the daemon counted its nearTTL later, so the entry never outlives it.
            if state.entries.updateValue(Kept(result: answer, deadline: token.sentAt + .milliseconds(nearTTL)), forKey: address) == nil {
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

    private static func apply(_ notification: InvalidateNotification, _ state: inout State) {
        switch notification {
        case .all:
            dropAll(&state)
        case .entries(let addresses):
            for address in addresses {
                state.entries[address] = nil
                if state.inFlight[address] != nil { state.inFlight[address]!.invalidated = true }
            }
        }
    }

    /// Reads and applies every notification waiting in the socket, without blocking. A closed socket (or
    /// one that sends anything else) ends the near cache until the next connection.
    private static func drain(_ state: inout State) {
        guard let fd = state.notifications else { return }
        var chunk = [UInt8](repeating: 0, count: 16384)
        while true {
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
            if n > 0 {
                state.partial.append(contentsOf: chunk[..<n])
                continue
            }
            if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) { break }
            if n < 0 && errno == EINTR { continue }
            detach(&state)  // closed, or broken
            return
        }
        while let end = state.partial.firstIndex(of: UInt8(ascii: "\n")) {
            let line = state.partial[..<end]
            defer { state.partial.removeSubrange(...end) }
            guard let message = try? JSONParser.parse(line), let notification = InvalidateNotification(message) else {
                detach(&state)
                return
            }
            apply(notification, &state)
        }
    }

    private static func detach(_ state: inout State) {
        if let fd = state.notifications { close(fd) }
        state.notifications = nil
        state.partial.removeAll()
        dropAll(&state)
    }

    /// A new connection: `fd` carries its notifications, `pending` bytes already read from it. Returns the
    /// connection's number, for ``connectionEnded(_:)``.
    func newConnection(notifications fd: Int32, pending: [UInt8], proof: Proof = .none) -> Int {
        state.withLockedValue { state in
            Self.detach(&state)
            state.connection &+= 1
            state.notifications = fd
            state.partial = pending
            state.proof = proof
            return state.connection
        }
    }

    /// Connection `number` ended: nothing kept can be vouched for (a later connection is left alone).
    func connectionEnded(_ number: Int) {
        state.withLockedValue { state in
            guard state.connection == number else { return }
            Self.detach(&state)
            state.connection &+= 1
        }
    }

    /// Connects `path` and claims the notifications of the connection that was given `token`. Blocking,
    /// once per connection (a Unix socket, one short exchange, 5 s at most). Returns the socket, non-blocking
    /// from then on, and any bytes read past the answer.
    static func openNotifications(path: String, token: String) throws(CachedClientError) -> (Int32, [UInt8]) {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw .connectionFailed("socket() failed for the notification connection") }
        var ok = false
        defer { if !ok { close(fd) } }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else { throw .connectionFailed("socket path too long") }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (i, b) in bytes.enumerated() { raw[i] = b }
            raw[bytes.count] = 0
        }
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard connected == 0 else { throw .connectionFailed("cannot open the notification connection to \(path)") }
        var request = ByteBuffer()
        request.writeString(#"{"jsonrpc":"2.0","id":1,"method":"notifications","params":{"token":"#)
        request.writeJSONString(token)
        request.writeString("}}\n")
        let line = Array(request.readableBytesView)
        var sent = 0
        while sent < line.count {
            let n = line[sent...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard n > 0 else { throw .connectionFailed("cannot write to the notification connection") }
            sent += n
        }
        var received: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        let deadline = NIODeadline.now() + .seconds(5)
        while received.firstIndex(of: UInt8(ascii: "\n")) == nil {
            let left = (deadline - .now()).nanoseconds / 1_000_000
            guard left > 0 else { throw .connectionFailed("the daemon did not answer notifications in time") }
            var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&pfd, 1, Int32(left)) >= 0 else { continue }
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            guard n > 0 else { throw .connectionFailed("the notification connection closed") }
            received.append(contentsOf: chunk[..<n])
        }
        let end = received.firstIndex(of: UInt8(ascii: "\n"))!
        guard case .object(let answer)? = try? JSONParser.parse(received[..<end]),
            case .object(let result)? = answer["result"], result["notifications"] == .bool(true)
        else { throw .connectionFailed("the daemon refused the notification connection: \(String(decoding: received[..<end], as: UTF8.self))") }
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        ok = true
        return (fd, Array(received[(end + 1)...]))
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

    /// Lookups refused because the daemon's proof was not fresh.
    var unproven: Int { state.withLockedValue { $0.unproven } }

    /// What a `track` answer says vouches for the near hits (`proof: {path, maxStaleness}`).
    static func proof(fromTrackAnswer members: [String: JSONValue]) -> Proof {
        guard case .object(let proof)? = members["proof"] else { return .none }
        guard case .string(let path)? = proof["path"], case .number(let text)? = proof["maxStaleness"], let seconds = Double(text),
            seconds > 0, let page = ProofPageReader(path: path)
        else { return .unprovable }
        return .page(page, bound: UInt64(seconds * 1e9))
    }
}
