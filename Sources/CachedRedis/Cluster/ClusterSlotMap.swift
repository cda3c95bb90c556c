/// Which primary serves each of the 16,384 hash slots, as read from `CLUSTER SHARDS` (Redis 7) or
/// `CLUSTER SLOTS`. Pure data: parsing and lookups, no I/O.
public struct ClusterSlotMap: Sendable, Hashable {
    public typealias Address = SentinelConfiguration.Address

    /// The primaries that serve at least one slot, sorted by address.
    public private(set) var primaries: [Address]
    /// For each slot, the index of its primary in ``primaries``, or `unowned`.
    private var owners: [UInt16]
    static let unowned = UInt16.max

    /// A map from slot ranges (`ranges[i]` served by `owners[i]`).
    init(ranges: [(ClosedRange<Int>, Address)]) {
        primaries = Array(Set(ranges.map(\.1))).sorted { ($0.host, $0.port) < ($1.host, $1.port) }
        let index = Dictionary(uniqueKeysWithValues: primaries.enumerated().map { ($1, UInt16($0)) })
        owners = Array(repeating: Self.unowned, count: HashSlot.count)
        for (range, owner) in ranges {
            for slot in range where (0..<HashSlot.count).contains(slot) {
                owners[slot] = index[owner]!
            }
        }
    }

    /// The primary serving `slot`, or nil.
    public func owner(of slot: Int) -> Address? {
        let index = owners[slot]
        return index == Self.unowned ? nil : primaries[Int(index)]
    }

    /// The index in ``primaries`` of the primary serving `slot`, or nil.
    func ownerIndex(of slot: Int) -> Int? {
        let index = owners[slot]
        return index == Self.unowned ? nil : Int(index)
    }

    /// How many slots each primary serves.
    public var slotCounts: [Address: Int] {
        var counts: [Address: Int] = [:]
        for index in owners where index != Self.unowned { counts[primaries[Int(index)], default: 0] += 1 }
        return counts
    }

    /// Slots with no primary.
    public var unownedSlots: Int { owners.lazy.filter { $0 == Self.unowned }.count }

    /// The primaries that served a slot in `old` that they do not serve here (a slot moved away from them).
    public func primariesThatLostSlots(since old: ClusterSlotMap) -> Set<Address> {
        var lost: Set<Address> = []
        for slot in 0..<HashSlot.count {
            if let before = old.owner(of: slot), before != owner(of: slot) { lost.insert(before) }
        }
        return lost
    }

    // MARK: Parsing

    /// From a `CLUSTER SHARDS` reply: each shard's slot ranges go to its master when that master's
    /// health is `online`. With `tls`, the node's `tls-port` is used.
    public static func parse(shards reply: RedisReply, tls: Bool) throws(RedisClientError) -> ClusterSlotMap {
        guard case .array(let shards) = reply else { throw RedisClientError(.protocolError, "CLUSTER SHARDS: \(reply)") }
        var ranges: [(ClosedRange<Int>, Address)] = []
        for shard in shards {
            let fields = try pairs(shard)
            guard case .array(let bounds)? = fields["slots"], case .array(let nodes)? = fields["nodes"] else {
                throw RedisClientError(.protocolError, "CLUSTER SHARDS: a shard without slots or nodes")
            }
            var master: Address?
            for node in nodes {
                let n = try pairs(node)
                guard n["role"]?.text == "master", n["health"]?.text == "online" else { continue }
                let host = n["ip"]?.text ?? n["endpoint"]?.text
                let port = tls ? n["tls-port"]?.integer : n["port"]?.integer
                if let host, let port { master = Address(host: host, port: Int(port)) }
            }
            guard let master else { continue }
            var i = 0
            while i + 1 < bounds.count {
                if let start = bounds[i].integer, let end = bounds[i + 1].integer, start <= end {
                    ranges.append((Int(start)...Int(end), master))
                }
                i += 2
            }
        }
        return ClusterSlotMap(ranges: ranges)
    }

    /// From a `CLUSTER SLOTS` reply (`[start, end, [ip, port, id], replicas...]` per range).
    public static func parse(slots reply: RedisReply) throws(RedisClientError) -> ClusterSlotMap {
        guard case .array(let items) = reply else { throw RedisClientError(.protocolError, "CLUSTER SLOTS: \(reply)") }
        var ranges: [(ClosedRange<Int>, Address)] = []
        for item in items {
            guard case .array(let parts) = item, parts.count >= 3, let start = parts[0].integer, let end = parts[1].integer,
                case .array(let master) = parts[2], master.count >= 2, let host = master[0].text, let port = master[1].integer,
                start <= end
            else { throw RedisClientError(.protocolError, "CLUSTER SLOTS: \(item)") }
            ranges.append((Int(start)...Int(end), Address(host: host, port: Int(port))))
        }
        return ClusterSlotMap(ranges: ranges)
    }

    /// A RESP2 flat array of name/value pairs as a dictionary.
    private static func pairs(_ reply: RedisReply) throws(RedisClientError) -> [String: RedisReply] {
        guard case .array(let items) = reply, items.count % 2 == 0 else {
            throw RedisClientError(.protocolError, "expected name/value pairs: \(reply)")
        }
        var result: [String: RedisReply] = [:]
        var i = 0
        while i < items.count {
            if let name = items[i].text { result[name] = items[i + 1] }
            i += 2
        }
        return result
    }
}

extension RedisReply {
    /// A bulk or status reply as text, or nil.
    var text: String? {
        switch self {
        case .bulk(let buffer): String(buffer: buffer)
        case .status(let s): s
        default: nil
        }
    }
}
