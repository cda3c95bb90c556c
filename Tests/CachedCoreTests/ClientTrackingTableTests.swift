import CachedProtocol
import Testing

@testable import CachedCore

/// The pure state of client tracking: who read what, the bound, and whom a change reaches.
@Suite("Client tracking table")
struct ClientTrackingTableTests {
    static func plain(_ identity: Int) -> EntryAddress { EntryAddress(key: "Student", identity: .integer(String(identity)), hash: nil) }
    static func field(_ identity: Int) -> EntryAddress {
        EntryAddress(key: "Student", identity: .integer(String(identity)), hash: HashAddress(hashKey: "Class", hashId: .integer("3")))
    }

    @Test func onlyTrackingConnectionsAreToldAndOnlyOfWhatTheyRead() {
        var table = ClientTrackingTable<Int>()
        #expect(table.read(Self.plain(1), by: 7) == nil)  // not tracking: nothing kept
        #expect(table.start(1, maxEntries: 10).isEmpty)
        #expect(table.start(2, maxEntries: 10).isEmpty)
        _ = table.read(Self.plain(1), by: 1)
        _ = table.read(Self.plain(1), by: 2)
        _ = table.read(Self.plain(2), by: 2)
        let told = table.changed(Self.plain(1).storeKey).sorted { $0.0 < $1.0 }
        #expect(told.map(\.0) == [1, 2] && told.allSatisfy { $0.1 == [Self.plain(1)] })
        // Told once: untracked until read again.
        #expect(table.changed(Self.plain(1).storeKey).isEmpty)
        _ = table.read(Self.plain(1), by: 1)
        #expect(table.changed(Self.plain(1).storeKey).map(\.0) == [1])
        #expect(table.changed("000STUDENT#0000000009").isEmpty)
        // Stopped: told nothing more.
        table.stop(2)
        #expect(!table.isTracking(2))
        #expect(table.changed(Self.plain(2).storeKey).isEmpty)
    }

    @Test func aHashChangeReachesItsFieldsAndAFieldChangeOnlyThatField() {
        var table = ClientTrackingTable<Int>()
        _ = table.start(1, maxEntries: 10)
        _ = table.read(Self.field(1), by: 1)
        _ = table.read(Self.field(2), by: 1)
        #expect(table.changed(Self.field(1).storeKey, field: Self.field(2).storeField).first?.1 == [Self.field(2)])
        _ = table.read(Self.field(2), by: 1)
        let all = table.changed(Self.field(1).storeKey)
        #expect(Set(all.first?.1 ?? []) == [Self.field(1), Self.field(2)])
        #expect(table.tables[1]?.count == 0)
    }

    @Test func theBoundDropsTheLeastRecentlyReadFirst() {
        var table = ClientTrackingTable<Int>()
        _ = table.start(1, maxEntries: 2)
        #expect(table.read(Self.plain(1), by: 1) == nil)
        #expect(table.read(Self.plain(2), by: 1) == nil)
        #expect(table.read(Self.plain(1), by: 1) == nil)  // read again: now the newest
        #expect(table.read(Self.plain(3), by: 1) == Self.plain(2))
        #expect(table.changed(Self.plain(2).storeKey).isEmpty, "a dropped entry is not notified")
        // Lowering the bound drops the oldest at once.
        #expect(table.start(1, maxEntries: 1) == [Self.plain(1)])
        #expect(table.tables[1]?.entries == [Self.plain(3)])
        // Many reads of a few entries keep the bookkeeping small.
        for i in 0..<3_000 { _ = table.read(Self.plain(i % 3), by: 1) }
        #expect(table.tables[1]?.count == 1)
    }

    @Test func everythingChangedEmptiesEveryTableButKeepsTracking() {
        var table = ClientTrackingTable<Int>()
        _ = table.start(1, maxEntries: 5)
        _ = table.start(2, maxEntries: 5)
        _ = table.read(Self.plain(1), by: 1)
        #expect(Set(table.changedAll()) == [1, 2])
        #expect(table.isTracking(1) && table.tables[1]?.count == 0)
        #expect(table.changed(Self.plain(1).storeKey).isEmpty)
        _ = table.read(Self.plain(1), by: 1)
        #expect(table.changed(Self.plain(1).storeKey).map(\.0) == [1])
    }
}
