import CachedProtocol

/// What each tracking client connection has read and must be told of when it changes: the pure state of
/// client tracking (`track`), with no I/O. Events go in; it answers whom to notify of what.
///
/// A connection's entries are kept in the order they were read (reading one again moves it to the end);
/// past `maxEntries` the oldest is dropped, and the connection must be told to forget it (its changes would
/// no longer be notified). Entries are found by their Redis key, since Redis's invalidations name only keys:
/// an invalidation of a key reaches every entry under it (every field of a hash).
struct ClientTrackingTable<Connection: Hashable & Sendable>: Sendable {
    /// One connection's entries.
    struct Table {
        var maxEntries: Int
        /// Read order; a slot is live while `positions` points at it (moves and removals leave dead slots).
        private var order: [EntryAddress] = []
        private var head = 0
        private var positions: [EntryAddress: Int] = [:]
        /// The entries under each Redis key.
        private(set) var underKey: [String: Set<EntryAddress>] = [:]

        init(maxEntries: Int) { self.maxEntries = maxEntries }

        var count: Int { positions.count }

        /// Live entries, oldest first.
        var entries: [EntryAddress] {
            order.enumerated().dropFirst(head).compactMap { i, address in positions[address] == i ? address : nil }
        }

        /// Adds `address`, or moves it to the end; returns the oldest entry when that went over the bound.
        mutating func touch(_ address: EntryAddress) -> EntryAddress? {
            if let at = positions[address], at == order.count - 1 { return nil }
            if positions.updateValue(order.count, forKey: address) == nil {
                underKey[address.storeKey, default: []].insert(address)
            }
            order.append(address)
            var dropped: EntryAddress?
            if positions.count > maxEntries { dropped = popOldest() }
            compactIfNeeded()
            return dropped
        }

        /// Removes `address`; whether nothing else of its Redis key is left.
        @discardableResult
        mutating func remove(_ address: EntryAddress) -> Bool {
            guard positions.removeValue(forKey: address) != nil else { return false }
            underKey[address.storeKey]?.remove(address)
            let last = underKey[address.storeKey]?.isEmpty ?? true
            if last { underKey[address.storeKey] = nil }
            compactIfNeeded()
            return last
        }

        mutating func removeAll() {
            order.removeAll()
            head = 0
            positions.removeAll()
            underKey.removeAll()
        }

        private mutating func popOldest() -> EntryAddress? {
            while head < order.count {
                let address = order[head]
                let at = head
                head += 1
                if positions[address] == at {
                    remove(address)
                    return address
                }
            }
            return nil
        }

        /// Keeps `order` within about twice the live entries.
        private mutating func compactIfNeeded() {
            guard order.count - head > 2 * max(positions.count, 16) else { return }
            var live: [EntryAddress] = []
            live.reserveCapacity(positions.count)
            for (i, address) in order.enumerated().dropFirst(head) where positions[address] == i {
                positions[address] = live.count
                live.append(address)
            }
            order = live
            head = 0
        }
    }

    private(set) var tables: [Connection: Table] = [:]
    /// Redis key → the connections with an entry under it.
    private var byStoreKey: [String: Set<Connection>] = [:]

    /// Whether `connection` asked for tracking.
    func isTracking(_ connection: Connection) -> Bool { tables[connection] != nil }

    /// `connection` asked to be told of changes (again: its entries stay, its bound is updated; entries
    /// over a lowered bound are dropped, oldest first, and returned to be forgotten).
    mutating func start(_ connection: Connection, maxEntries: Int) -> [EntryAddress] {
        var table = tables[connection] ?? Table(maxEntries: maxEntries)
        table.maxEntries = maxEntries
        var dropped: [EntryAddress] = []
        for address in table.entries.prefix(max(0, table.count - maxEntries)) {
            if table.remove(address) { unindex(address.storeKey, connection) }
            dropped.append(address)
        }
        tables[connection] = table
        return dropped
    }

    /// `connection` stopped tracking or closed: it is told nothing more.
    mutating func stop(_ connection: Connection) {
        guard let table = tables.removeValue(forKey: connection) else { return }
        for storeKey in table.underKey.keys { unindex(storeKey, connection) }
    }

    /// `connection` is reading `address`: a change of it from now on is notified. Returns the entry dropped
    /// to stay within the bound, which the connection must be told to forget.
    mutating func read(_ address: EntryAddress, by connection: Connection) -> EntryAddress? {
        guard var table = tables[connection] else { return nil }
        let dropped = table.touch(address)
        byStoreKey[address.storeKey, default: []].insert(connection)
        if let dropped, table.underKey[dropped.storeKey] == nil { unindex(dropped.storeKey, connection) }
        tables[connection] = table
        return dropped
    }

    /// Redis key `storeKey` changed (with `field`: only that field of a hash). Returns each connection to
    /// notify and the entries it read there, which are no longer tracked (reading one again tracks it again).
    mutating func changed(_ storeKey: String, field: String? = nil) -> [(Connection, [EntryAddress])] {
        guard let connections = byStoreKey[storeKey] else { return [] }
        var result: [(Connection, [EntryAddress])] = []
        for connection in connections {
            guard var table = tables[connection], let under = table.underKey[storeKey] else { continue }
            let hit = under.filter { field == nil || $0.storeField == field }.sorted { $0.description < $1.description }
            guard !hit.isEmpty else { continue }
            for address in hit where table.remove(address) { unindex(storeKey, connection) }
            tables[connection] = table
            result.append((connection, hit))
        }
        return result
    }

    /// Nothing read so far can be vouched for: returns every tracking connection, each to be told to drop
    /// everything; their tables are emptied (they stay tracking).
    mutating func changedAll() -> [Connection] {
        for connection in Array(tables.keys) { tables[connection]?.removeAll() }
        byStoreKey.removeAll()
        return Array(tables.keys)
    }

    private mutating func unindex(_ storeKey: String, _ connection: Connection) {
        byStoreKey[storeKey]?.remove(connection)
        if byStoreKey[storeKey]?.isEmpty == true { byStoreKey[storeKey] = nil }
    }
}
