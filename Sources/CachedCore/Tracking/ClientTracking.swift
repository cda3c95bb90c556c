import Atomics
import CachedProtocol
import Logging
import NIOConcurrencyHelpers
import NIOCore

/// What a client connection shares with the daemon for tracking: its channel (where notifications are
/// written) and whether it asked for tracking.
public final class ConnectionControl: Sendable {
    public let id: ConnectionID
    let channel: any Channel
    /// Set by `track`: its gets are tracked and its hits carry `nearTTL`.
    let tracking = ManagedAtomic<Bool>(false)
    /// With `track {separate: true}`: the connection that carries this one's notifications once it has
    /// claimed them (`notifications {token}`); until then they are dropped (its client keeps nothing yet).
    let notifier = NIOLockedValueBox<Notifier>(.own)

    enum Notifier {
        /// On this connection.
        case own
        /// On another connection, once one claims `token`.
        case waiting(token: String)
        case on(ConnectionControl)
    }

    /// The peer's permissions (`[[access]]`); nil: not from a client socket (everything allowed).
    let access: ConnectionAccess?

    init(id: ConnectionID, channel: any Channel, access: ConnectionAccess? = nil) {
        self.id = id
        self.channel = channel
        self.access = access
    }

    var isTracking: Bool { tracking.load(ordering: .relaxed) }

    /// Where its notifications go now (nil: nowhere yet).
    var notificationChannel: (any Channel)? {
        switch notifier.withLockedValue({ $0 }) {
        case .own: channel
        case .waiting: nil
        case .on(let other): other.channel
        }
    }
}

/// Client tracking (`track`): which connections asked to be told of changes, what each read, and the
/// `invalidate` notifications (``InvalidateNotification``) they are sent. The state is the pure
/// ``ClientTrackingTable``; this shell holds its lock and writes the notifications.
///
/// A change made through this daemon (`set`, `delete`, `deleteHash`) is notified before the write is
/// answered: its answer waits until the notification lines were written to every tracking socket (at most
/// ``writeDeadline``; a connection that cannot take them by then is closed, and its client drops its near
/// cache with the connection). Changes made elsewhere reach the daemon as Redis invalidations and are passed
/// on as they arrive; when the daemon's own invalidation source goes down or comes back, or Redis is flushed,
/// every tracking connection is told `all`.
public final class ClientTracking: Sendable {
    struct State {
        var table = ClientTrackingTable<ConnectionID>()
        var controls: [ConnectionID: ConnectionControl] = [:]
        /// `track {separate: true}` tokens not yet claimed, and the connections that claimed one (the
        /// notification connection → the tracked one).
        var unclaimed: [String: ConnectionControl] = [:]
        var notifiers: [ConnectionID: ConnectionControl] = [:]
    }

    private let state = NIOLockedValueBox(State())
    /// Tracking connections now (a write skips everything when there are none).
    private let tracking = ManagedAtomic<Int>(0)
    private let notificationsSent = ManagedAtomic<Int>(0)
    private let slowClosed = ManagedAtomic<Int>(0)
    /// Notification lines not yet handed to their socket (the proof publisher vouches for nothing while any
    /// is: its client could not have read it).
    private let unwritten = ManagedAtomic<Int>(0)
    /// How long a write's answer waits for its notifications to be written.
    static let writeDeadline = TimeAmount.seconds(1)
    let logger: Logger

    init(logger: Logger) {
        self.logger = logger
    }

    /// Whether any connection is tracking.
    var isActive: Bool { tracking.load(ordering: .relaxed) > 0 }

    /// `control`'s connection asked for tracking with at most `maxEntries` entries; with `separate`, its
    /// notifications go to the connection that claims the returned token (``claim(_:by:)``).
    func start(_ control: ConnectionControl, maxEntries: Int, separate: Bool = false) -> String? {
        var token: String?
        if separate {
            var bytes = SystemRandomNumberGenerator()
            token = (0..<4).map { _ in String(bytes.next() as UInt32, radix: 16) }.joined(separator: "-")
        }
        let dropped = state.withLockedValue { state -> [EntryAddress] in
            if state.controls.updateValue(control, forKey: control.id) == nil { tracking.wrappingIncrement(ordering: .relaxed) }
            if let token {
                // A new token: whatever connection carried the notifications before no longer does.
                control.notifier.withLockedValue { $0 = .waiting(token: token) }
                state.unclaimed[token] = control
            }
            return state.table.start(control.id, maxEntries: maxEntries)
        }
        control.tracking.store(true, ordering: .relaxed)
        if !dropped.isEmpty { _ = send(.entries(dropped), to: control) }
        return token
    }

    /// `notifier`'s connection claims the notifications of the connection that got `token`. False when no
    /// connection is waiting for that token.
    func claim(_ token: String, by notifier: ConnectionControl) -> Bool {
        state.withLockedValue { state in
            guard let tracked = state.unclaimed[token] else { return false }
            // Another peer's notifications would name entries only the tracked connection's peer may read.
            guard tracked.access?.peer?.uid == notifier.access?.peer?.uid else { return false }
            state.unclaimed[token] = nil
            guard case .waiting(let waiting) = tracked.notifier.withLockedValue({ $0 }), waiting == token else { return false }
            tracked.notifier.withLockedValue { $0 = .on(notifier) }
            state.notifiers[notifier.id] = tracked
            return true
        }
    }

    /// The connection stopped tracking, or closed. A tracked connection's notification connection is closed
    /// with it; a notification connection that closes closes the connection it served (its client can no
    /// longer be told of changes, and drops its near cache with the connection).
    func stop(_ id: ConnectionID) {
        let (control, served) = state.withLockedValue { state -> (ConnectionControl?, ConnectionControl?) in
            state.table.stop(id)
            let served = state.notifiers.removeValue(forKey: id)
            guard let control = state.controls.removeValue(forKey: id) else { return (nil, served) }
            tracking.wrappingDecrement(ordering: .relaxed)
            if case .waiting(let token) = control.notifier.withLockedValue({ $0 }) { state.unclaimed[token] = nil }
            return (control, served)
        }
        control?.tracking.store(false, ordering: .relaxed)
        if let control, case .on(let notifier) = control.notifier.withLockedValue({ $0 }) {
            notifier.channel.close(promise: nil)
        }
        served?.channel.close(promise: nil)
    }

    /// A tracking connection is reading `address` (called before the value is looked up, so that a change
    /// from then on is notified).
    func read(_ address: EntryAddress, by control: ConnectionControl) {
        let dropped = state.withLockedValue { $0.table.read(address, by: control.id) }
        if let dropped { _ = send(.entries([dropped]), to: control) }
    }

    /// Entries under `storeKey` (only `field`, for one field of a hash) changed. The future completes once
    /// the notifications were written (or their connections closed); nil when nobody was told.
    @discardableResult
    func changed(_ storeKey: String, field: String? = nil) -> EventLoopFuture<Void>? {
        guard isActive else { return nil }
        let targets = state.withLockedValue { state in
            state.table.changed(storeKey, field: field).compactMap { id, entries in state.controls[id].map { ($0, entries) } }
        }
        guard !targets.isEmpty else { return nil }
        let writes = targets.map { control, entries in send(.entries(entries), to: control) }
        return EventLoopFuture.andAllComplete(writes, on: writes[0].eventLoop)
    }

    /// Redis keys changed (an invalidation from Redis): notified as they come, nothing waits.
    func changed(keys: [String]) {
        guard isActive else { return }
        for key in keys { changed(key) }
    }

    /// Nothing answered before can be vouched for: every tracking connection is told `all`.
    func changedAll() {
        guard isActive else { return }
        let controls = state.withLockedValue { state in state.table.changedAll().compactMap { state.controls[$0] } }
        for control in controls { _ = send(.all, to: control) }
    }

    /// Writes one notification line; the future completes when it was written, or when the connection was
    /// closed because it could not take it within ``writeDeadline``.
    private func send(_ notification: InvalidateNotification, to control: ConnectionControl) -> EventLoopFuture<Void> {
        guard let channel = control.notificationChannel else {
            // Its notification connection has not claimed them yet: its client keeps nothing until it has.
            return control.channel.eventLoop.makeSucceededVoidFuture()
        }
        var notification = notification
        if case .entries(let entries) = notification, let access = control.access,
            !entries.allSatisfy({ access.mayRead(fromAnyThread: $0.key) })
        {
            // Never name an entry of a key the peer may not read (now: a reload can take a permission away):
            // its near cache drops everything instead, which names nothing.
            notification = .all
        }
        var buffer = channel.allocator.buffer(capacity: 128)
        buffer.writeInvalidateNotification(notification)
        buffer.writeInteger(UInt8(ascii: "\n"))
        notificationsSent.wrappingIncrement(ordering: .relaxed)
        unwritten.wrappingIncrement(ordering: .sequentiallyConsistent)
        let written = channel.eventLoop.makePromise(of: Void.self)
        let finished = ManagedAtomic(false)  // the write or the deadline, whichever comes first
        let timeout = channel.eventLoop.scheduleTask(in: Self.writeDeadline) { [slowClosed, unwritten, logger] in
            guard finished.compareExchange(expected: false, desired: true, ordering: .relaxed).exchanged else { return }
            unwritten.wrappingDecrement(ordering: .sequentiallyConsistent)
            // Its near cache can no longer be told: close the connection (its client drops the near cache).
            slowClosed.wrappingIncrement(ordering: .relaxed)
            logger.notice("closing a tracking connection that did not take its invalidate notification in time")
            channel.close(promise: nil)
            written.succeed()
        }
        channel.writeAndFlush(buffer).whenComplete { [unwritten] _ in
            // Written, or the channel is closed (nothing left to tell).
            guard finished.compareExchange(expected: false, desired: true, ordering: .relaxed).exchanged else { return }
            unwritten.wrappingDecrement(ordering: .sequentiallyConsistent)
            timeout.cancel()
            written.succeed()
        }
        return written.futureResult
    }

    /// Whether every notification line sent so far is in its socket (or its connection closed).
    var allWritten: Bool { unwritten.load(ordering: .sequentiallyConsistent) == 0 }

    /// For `stats`.
    var status: JSONValue {
        let (connections, entries) = state.withLockedValue { state in
            (state.controls.count, state.table.tables.values.reduce(0) { $0 + $1.count })
        }
        return .object([
            "connections": .number(String(connections)), "entries": .number(String(entries)),
            "notifications": .number(String(notificationsSent.load(ordering: .relaxed))),
            "slowClosed": .number(String(slowClosed.load(ordering: .relaxed))),
        ])
    }
}
