import CachedProtocol
import NIOConcurrencyHelpers
import NIOCore

/// An in-process store with Redis's semantics for what `cached` uses (strings with TTLs, hashes),
/// bounded by a memory budget with least-recently-used eviction.
public final class EmbeddedStore: CacheStore {
    private let state: NIOLockedValueBox<LRUStore>

    /// - Parameter maxBytes: budget for keys, fields, values and per-entry overhead.
    public init(maxBytes: Int) {
        self.state = NIOLockedValueBox(LRUStore(maxBytes: maxBytes))
    }

    public func cachedValue(_ address: EntryAddress) -> EncodedValue? {
        let now = NIODeadline.now()
        return state.withLockedValue { $0.get(address.storeKey, field: address.storeField, now: now) }
    }

    public func get(_ address: EntryAddress, on eventLoop: any EventLoop) -> EventLoopFuture<ByteBuffer?> {
        let now = NIODeadline.now()
        let value = state.withLockedValue { $0.get(address.storeKey, field: address.storeField, now: now) }
        return eventLoop.makeSucceededFuture(value?.raw)
    }

    public func set(_ address: EntryAddress, value: ByteBuffer, ttl: Duration, on eventLoop: any EventLoop) -> EventLoopFuture<Void> {
        let now = NIODeadline.now()
        let expiry: NIODeadline? = (ttl > .zero && address.storeField == nil) ? now + TimeAmount(ttl) : nil
        var encoded = EncodedValue(value)
        encoded.expiresAt = expiry ?? .distantFuture
        state.withLockedValue { $0.set(address.storeKey, field: address.storeField, value: encoded, expiry: expiry, now: now) }
        return eventLoop.makeSucceededVoidFuture()
    }

    public func fill(_ address: EntryAddress, value: ByteBuffer, ttl: Duration, on eventLoop: any EventLoop) -> EventLoopFuture<Bool> {
        let now = NIODeadline.now()
        let expiry: NIODeadline? = (ttl > .zero && address.storeField == nil) ? now + TimeAmount(ttl) : nil
        var encoded = EncodedValue(value)
        encoded.expiresAt = expiry ?? .distantFuture
        let stored = state.withLockedValue { store -> Bool in
            guard store.get(address.storeKey, field: address.storeField, now: now) == nil else { return false }
            store.set(address.storeKey, field: address.storeField, value: encoded, expiry: expiry, now: now)
            return true
        }
        return eventLoop.makeSucceededFuture(stored)
    }

    public func delete(_ address: EntryAddress, on eventLoop: any EventLoop) -> EventLoopFuture<Int> {
        let now = NIODeadline.now()
        let n = state.withLockedValue { $0.delete(address.storeKey, field: address.storeField, now: now) }
        return eventLoop.makeSucceededFuture(n)
    }

    public func deleteHash(_ hash: HashAddress, on eventLoop: any EventLoop) -> EventLoopFuture<Int> {
        let now = NIODeadline.now()
        let n = state.withLockedValue { $0.delete(hash.storeKey, field: nil, now: now) }
        return eventLoop.makeSucceededFuture(n)
    }

    /// The embedded store changes only through this daemon, whose own writes the fills already see: no
    /// change ever comes from elsewhere.
    public func changeMark() -> UInt64 { 0 }
    public func unchanged(_ address: EntryAddress, since mark: UInt64) -> Bool { true }

    /// The embedded store is the data itself: it changes only through this daemon, and is always fresh.
    public func proveFreshness(now: NIODeadline) -> NIODeadline { now }

    public func status() -> StoreStatus {
        let (count, bytes, max, evictions) = state.withLockedValue { ($0.count, $0.usedBytes, $0.maxBytes, $0.evictions) }
        return StoreStatus(
            kind: "embedded", available: true,
            detail: [
                "keys": .number(String(count)), "bytes": .number(String(bytes)),
                "maxBytes": .number(String(max)), "evictions": .number(String(evictions)),
            ])
    }
}

// MARK: - LRU

/// The embedded store's data: a dictionary plus an intrusive doubly linked list in recency order.
///
/// `@unchecked Sendable`: its nodes are reference types, but they never leave the store, and the store
/// is only ever reached through ``EmbeddedStore``'s lock.
struct LRUStore: @unchecked Sendable {
    enum Value {
        case string(EncodedValue)
        case hash([String: EncodedValue])
    }

    final class Node {
        let key: String
        var value: Value
        var expiry: NIODeadline?
        var size: Int
        /// Used since it was last linked at the head (the CLOCK algorithm's reference bit).
        var referenced = false
        var prev: Node?
        var next: Node?
        init(key: String, value: Value, expiry: NIODeadline?, size: Int) {
            self.key = key
            self.value = value
            self.expiry = expiry
            self.size = size
        }
    }

    /// Per-entry bookkeeping estimate, in bytes.
    static let entryOverhead = 96
    static let fieldOverhead = 48

    let maxBytes: Int
    private(set) var usedBytes = 0
    private(set) var evictions = 0
    private var nodes: [String: Node] = [:]
    private var head: Node?  // most recent
    private var tail: Node?  // least recent

    init(maxBytes: Int) { self.maxBytes = maxBytes }

    var count: Int { nodes.count }

    mutating func get(_ key: String, field: String?, now: NIODeadline) -> EncodedValue? {
        guard let node = live(key, now: now) else { return nil }
        touch(node)
        switch (node.value, field) {
        case (.string(let v), nil): return v
        case (.hash(let fields), let field?): return fields[field]
        default: return nil  // wrong type: treated as a miss
        }
    }

    mutating func set(_ key: String, field: String?, value: EncodedValue, expiry: NIODeadline?, now: NIODeadline) {
        if let field {
            let node: Node
            if let existing = live(key, now: now), case .hash = existing.value {
                node = existing
            } else {
                remove(key)
                node = insert(key, value: .hash([:]), expiry: nil)
            }
            guard case .hash(var fields) = node.value else { return }
            let old = fields[field].map { $0.byteCount + field.utf8.count + Self.fieldOverhead } ?? 0
            node.value = .hash([:])  // drop the reference so `fields` is uniquely owned
            fields[field] = value
            node.value = .hash(fields)
            resize(node, by: value.byteCount + field.utf8.count + Self.fieldOverhead - old)
            touch(node)
        } else {
            remove(key)
            let node = insert(key, value: .string(value), expiry: expiry)
            resize(node, by: value.byteCount)
        }
        evict(keeping: key)
    }

    mutating func delete(_ key: String, field: String?, now: NIODeadline) -> Int {
        guard let node = live(key, now: now) else { return 0 }
        guard let field else {
            remove(key)
            return 1
        }
        guard case .hash(var fields) = node.value, let old = fields[field] else { return 0 }
        node.value = .hash([:])
        fields[field] = nil
        if fields.isEmpty {
            remove(key)  // like Redis: an empty hash does not exist
        } else {
            node.value = .hash(fields)
            resize(node, by: -(old.byteCount + field.utf8.count + Self.fieldOverhead))
        }
        return 1
    }

    /// Removes every value for which `matches` holds (hash fields one by one); returns how many.
    mutating func removeAll(where matches: (EncodedValue) -> Bool) -> Int {
        var removed = 0
        for (key, node) in nodes {
            switch node.value {
            case .string(let value):
                if matches(value) {
                    remove(key)
                    removed += 1
                }
            case .hash(var fields):
                let doomed = fields.filter { matches($0.value) }
                guard !doomed.isEmpty else { continue }
                node.value = .hash([:])
                for (field, value) in doomed {
                    fields[field] = nil
                    resize(node, by: -(value.byteCount + field.utf8.count + Self.fieldOverhead))
                }
                removed += doomed.count
                if fields.isEmpty { remove(key) } else { node.value = .hash(fields) }
            }
        }
        return removed
    }

    // MARK: Internals

    private mutating func live(_ key: String, now: NIODeadline) -> Node? {
        guard let node = nodes[key] else { return nil }
        if let expiry = node.expiry, expiry <= now {
            remove(key)
            return nil
        }
        return node
    }

    private mutating func insert(_ key: String, value: Value, expiry: NIODeadline?) -> Node {
        let node = Node(key: key, value: value, expiry: expiry, size: key.utf8.count + Self.entryOverhead)
        nodes[key] = node
        usedBytes += node.size
        linkAtHead(node)
        return node
    }

    private mutating func resize(_ node: Node, by delta: Int) {
        node.size += delta
        usedBytes += delta
    }

    private mutating func remove(_ key: String) {
        guard let node = nodes.removeValue(forKey: key) else { return }
        unlink(node)
        usedBytes -= node.size
    }

    private mutating func evict(keeping key: String) {
        while usedBytes > maxBytes, let victim = tail {
            if victim.key == key && victim === head { break }  // a single entry larger than the budget stays
            if victim.referenced {
                // Used since it came to the head: a second chance (each pass clears one bit, so this ends).
                unlink(victim)
                linkAtHead(victim)
                continue
            }
            remove(victim.key)
            evictions += 1
        }
    }

    /// Marks a node as used. Like the CLOCK algorithm, a hit only sets a bit (no links move, no reference
    /// counts change); eviction gives a used node at the tail a second chance at the head instead.
    private mutating func touch(_ node: Node) {
        node.referenced = true
    }

    private mutating func linkAtHead(_ node: Node) {
        node.referenced = false
        node.prev = nil
        node.next = head
        head?.prev = node
        head = node
        if tail == nil { tail = node }
    }

    private mutating func unlink(_ node: Node) {
        if let prev = node.prev { prev.next = node.next } else { head = node.next }
        if let next = node.next { next.prev = node.prev } else { tail = node.prev }
        node.prev = nil
        node.next = nil
    }
}
