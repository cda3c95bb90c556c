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

    init(id: ConnectionID, channel: any Channel) {
        self.id = id
        self.channel = channel
    }

    var isTracking: Bool { tracking.load(ordering: .relaxed) }
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
    }

    private let state = NIOLockedValueBox(State())
    /// Tracking connections now (a write skips everything when there are none).
    private let tracking = ManagedAtomic<Int>(0)
    private let notificationsSent = ManagedAtomic<Int>(0)
    private let slowClosed = ManagedAtomic<Int>(0)
    /// How long a write's answer waits for its notifications to be written.
    static let writeDeadline = TimeAmount.seconds(1)
    let logger: Logger

    init(logger: Logger) {
        self.logger = logger
    }

    /// Whether any connection is tracking.
    var isActive: Bool { tracking.load(ordering: .relaxed) > 0 }

    /// `control`'s connection asked for tracking with at most `maxEntries` entries.
    func start(_ control: ConnectionControl, maxEntries: Int) {
        let dropped = state.withLockedValue { state -> [EntryAddress] in
            if state.controls.updateValue(control, forKey: control.id) == nil { tracking.wrappingIncrement(ordering: .relaxed) }
            return state.table.start(control.id, maxEntries: maxEntries)
        }
        control.tracking.store(true, ordering: .relaxed)
        if !dropped.isEmpty { _ = send(.entries(dropped), to: control) }
    }

    /// The connection stopped tracking, or closed.
    func stop(_ id: ConnectionID) {
        let control = state.withLockedValue { state -> ConnectionControl? in
            state.table.stop(id)
            guard let control = state.controls.removeValue(forKey: id) else { return nil }
            tracking.wrappingDecrement(ordering: .relaxed)
            return control
        }
        control?.tracking.store(false, ordering: .relaxed)
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
        let channel = control.channel
        var buffer = channel.allocator.buffer(capacity: 128)
        buffer.writeInvalidateNotification(notification)
        buffer.writeInteger(UInt8(ascii: "\n"))
        notificationsSent.wrappingIncrement(ordering: .relaxed)
        let written = channel.eventLoop.makePromise(of: Void.self)
        let finished = ManagedAtomic(false)  // the write or the deadline, whichever comes first
        let timeout = channel.eventLoop.scheduleTask(in: Self.writeDeadline) { [slowClosed, logger] in
            guard finished.compareExchange(expected: false, desired: true, ordering: .relaxed).exchanged else { return }
            // Its near cache can no longer be told: close the connection (its client drops the near cache).
            slowClosed.wrappingIncrement(ordering: .relaxed)
            logger.notice("closing a tracking connection that did not take its invalidate notification in time")
            channel.close(promise: nil)
            written.succeed()
        }
        channel.writeAndFlush(buffer).whenComplete { _ in
            // Written, or the channel is closed (nothing left to tell).
            guard finished.compareExchange(expected: false, desired: true, ordering: .relaxed).exchanged else { return }
            timeout.cancel()
            written.succeed()
        }
        return written.futureResult
    }

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
