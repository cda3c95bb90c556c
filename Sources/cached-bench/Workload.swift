import CachedProtocol
import NIOCore

/// One kind of request the benchmark sends.
enum BenchOperation: String, Sendable, CaseIterable {
    /// `get` of an identity in the keyspace, expected to hit (`--warmup` fills the keyspace first).
    case getHit = "get-hit"
    /// `get` of an identity never used before, on a key with a sync handler: every request is a fill.
    case getMiss = "get-miss"
    /// `set` of an identity in the keyspace, with `--value-size` bytes and no TTL.
    case set
}

/// A weighted mix of operations: `get-hit`, or `get-hit:90,set:10`.
struct Mix: Sendable, CustomStringConvertible {
    struct Entry: Sendable {
        var operation: BenchOperation
        var weight: Int
    }

    var entries: [Entry]
    /// Running totals of the weights, for picking an operation from one random number.
    var cumulative: [Int]
    var totalWeight: Int

    init(entries: [Entry]) {
        self.entries = entries
        var running = 0
        var cumulative: [Int] = []
        for e in entries {
            running += e.weight
            cumulative.append(running)
        }
        self.cumulative = cumulative
        self.totalWeight = running
    }

    init?(parsing text: String) {
        var entries: [Entry] = []
        for part in text.split(separator: ",") {
            let pieces = part.split(separator: ":", maxSplits: 1).map { $0.trimmingCharacters() }
            guard let op = BenchOperation(rawValue: pieces[0]) else { return nil }
            var weight = 1
            if pieces.count == 2 {
                guard let w = Int(pieces[1]), w > 0 else { return nil }
                weight = w
            }
            entries.append(Entry(operation: op, weight: weight))
        }
        guard !entries.isEmpty else { return nil }
        self.init(entries: entries)
    }

    /// The operation for a random number.
    @inline(__always)
    func pick(_ random: UInt64) -> BenchOperation {
        if entries.count == 1 { return entries[0].operation }
        let r = Int(random % UInt64(totalWeight))
        for (i, c) in cumulative.enumerated() where r < c { return entries[i].operation }
        return entries[entries.count - 1].operation
    }

    func contains(_ op: BenchOperation) -> Bool { entries.contains { $0.operation == op } }

    var description: String {
        entries.count == 1 ? entries[0].operation.rawValue : entries.map { "\($0.operation.rawValue):\($0.weight)" }.joined(separator: ",")
    }
}

extension Substring {
    fileprivate func trimmingCharacters() -> String {
        String(self.drop { $0 == " " }.reversed().drop { $0 == " " }.reversed())
    }
}

/// Request lines, pre-encoded around the two numbers that change per request (id and identity).
///
/// `{"jsonrpc":"2.0","id":` ID `,"method":"get","params":{"key":"Bench","identity":` IDENTITY `}}\n`
struct RequestEncoder: Sendable {
    let head: [UInt8]
    let getMiddle: [UInt8]
    let getTail: [UInt8]
    let setMiddle: [UInt8]
    let setTail: [UInt8]
    /// The largest line, for reserving capacity.
    let maxLineBytes: Int

    init(key: String, valueSize: Int) {
        func bytes(_ build: (inout ByteBuffer) -> Void) -> [UInt8] {
            var buffer = ByteBufferAllocator().buffer(capacity: 64 + valueSize)
            build(&buffer)
            return buffer.readBytes(length: buffer.readableBytes) ?? []
        }
        head = bytes { $0.writeStaticString("{\"jsonrpc\":\"2.0\",\"id\":") }
        getMiddle = bytes {
            $0.writeStaticString(",\"method\":\"get\",\"params\":{\"key\":")
            $0.writeJSONString(key)
            $0.writeStaticString(",\"identity\":")
        }
        getTail = bytes { $0.writeStaticString("}}\n") }
        setMiddle = bytes {
            $0.writeStaticString(",\"method\":\"set\",\"params\":{\"key\":")
            $0.writeJSONString(key)
            $0.writeStaticString(",\"identity\":")
        }
        setTail = bytes {
            $0.writeStaticString(",\"value\":")
            $0.writeJSONString(RequestEncoder.value(size: valueSize))
            $0.writeStaticString(",\"ttl\":0}}\n")
        }
        maxLineBytes = head.count + setMiddle.count + setTail.count + 40
    }

    /// The value every `set` stores: `valueSize` printable ASCII bytes that need no JSON escaping.
    static func value(size: Int) -> String {
        let alphabet = Array("abcdefghijklmnopqrstuvwxyz0123456789".utf8)
        return String(decoding: (0..<size).map { alphabet[$0 % alphabet.count] }, as: UTF8.self)
    }

    @inline(__always)
    func write(_ op: BenchOperation, id: UInt64, identity: Int64, into buffer: inout ByteBuffer) {
        buffer.writeBytes(head)
        buffer.writeDecimal(id)
        switch op {
        case .getHit, .getMiss:
            buffer.writeBytes(getMiddle)
            buffer.writeDecimal(identity)
            buffer.writeBytes(getTail)
        case .set:
            buffer.writeBytes(setMiddle)
            buffer.writeDecimal(identity)
            buffer.writeBytes(setTail)
        }
    }
}

extension ByteBuffer {
    /// Writes an unsigned integer in decimal, without allocating.
    @inline(__always)
    mutating func writeDecimal(_ value: UInt64) {
        var digits: (UInt64, UInt64, UInt64) = (0, 0, 0)  // 24 bytes of scratch, enough for 20 digits
        let written = withUnsafeMutableBytes(of: &digits) { raw -> Int in
            var v = value
            var i = raw.count
            repeat {
                i -= 1
                raw[i] = UInt8(truncatingIfNeeded: v % 10) &+ UInt8(ascii: "0")
                v /= 10
            } while v != 0
            let count = raw.count - i
            self.writeBytes(UnsafeRawBufferPointer(rebasing: raw[i...]))
            return count
        }
        _ = written
    }

    @inline(__always)
    mutating func writeDecimal(_ value: Int64) {
        if value < 0 {
            self.writeInteger(UInt8(ascii: "-"))
            self.writeDecimal(value.magnitude)
        } else {
            self.writeDecimal(UInt64(value))
        }
    }
}

/// xorshift64*: a fast per-connection random number generator (no locking, no system calls).
struct FastRandom {
    private var state: UInt64

    init(seed: UInt64) { state = seed == 0 ? 0x9E37_79B9_7F4A_7C15 : seed }

    @inline(__always)
    mutating func next() -> UInt64 {
        state ^= state >> 12
        state ^= state << 25
        state ^= state >> 27
        return state &* 0x2545_F491_4F6C_DD1D
    }
}
