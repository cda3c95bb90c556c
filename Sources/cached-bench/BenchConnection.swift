import CachedProtocol
import Histogram
import NIOCore

#if canImport(Glibc)
import Glibc
#endif

/// What one connection does in one phase.
struct ConnectionPlan: Sendable {
    enum Identities: Sendable {
        /// Random identities in `0..<keyspace`.
        case random(keyspace: Int64)
        /// `first, first + stride, ...` (warm-up: every identity of the keyspace once).
        case sequence(first: Int64, stride: Int64)
    }

    var index: Int
    var requests: Int
    var pipeline: Int
    var mix: Mix
    var identities: Identities
    /// Identities for `get-miss`: `missBase + i`, never used before.
    var missBase: Int64
    var encoder: RequestEncoder
    /// When set, a `get` hit must carry a value of exactly this many bytes.
    var expectedValueSize: Int?
    var seed: UInt64
    var timeoutSeconds: Int64
}

/// What one connection measured.
struct ConnectionResult: Sendable {
    var histogram = Histogram<UInt64>(
        lowestDiscernibleValue: 1, highestTrackableValue: 120_000_000_000, numberOfSignificantValueDigits: .three)
    var completed = 0
    var hits = 0
    var misses = 0
    var stored = 0
    var errors = 0
    var unexpected = 0
    var wrongValues = 0
    var errorCodes: [Int: Int] = [:]
    var firstProblem: String?
    var startNanos: UInt64 = 0
    var endNanos: UInt64 = 0
    var failure: String?

    mutating func problem(_ text: @autoclosure () -> String) {
        if firstProblem == nil { firstProblem = text() }
    }

    mutating func merge(_ other: ConnectionResult) {
        histogram.add(other.histogram)
        completed += other.completed
        hits += other.hits
        misses += other.misses
        stored += other.stored
        errors += other.errors
        unexpected += other.unexpected
        wrongValues += other.wrongValues
        for (k, v) in other.errorCodes { errorCodes[k, default: 0] += v }
        if firstProblem == nil { firstProblem = other.firstProblem }
        if failure == nil { failure = other.failure }
        if startNanos == 0 || (other.startNanos != 0 && other.startNanos < startNanos) { startNanos = other.startNanos }
        endNanos = max(endNanos, other.endNanos)
    }
}

@inline(__always)
func monotonicNanos() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
}

/// Drives one connection: keeps `pipeline` requests in flight until `requests` are answered.
///
/// Request ids encode their slot: `id = generation * pipeline + slot`, so an answer (in any order) finds
/// its send time without hashing, and a stale or unknown id is detected.
final class BenchConnection: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private struct Slot {
        var id: UInt64 = .max
        var sentAt: UInt64 = 0
        var operation: BenchOperation = .getHit
    }

    private let plan: ConnectionPlan
    private let done: EventLoopPromise<ConnectionResult>
    private var result = ConnectionResult()
    private var slots: [Slot]
    private var generation: UInt64 = 0
    private var sent = 0
    private var inFlight = 0
    private var sequenceNext: Int64 = 0
    private var missNext: Int64 = 0
    private var random: FastRandom
    private var partial: ByteBuffer?
    private var outbound: ByteBuffer
    private var context: ChannelHandlerContext?
    private var finished = false
    private var started = false

    init(plan: ConnectionPlan, done: EventLoopPromise<ConnectionResult>) {
        self.plan = plan
        self.done = done
        self.slots = Array(repeating: Slot(), count: max(1, plan.pipeline))
        self.random = FastRandom(seed: plan.seed)
        self.outbound = ByteBufferAllocator().buffer(capacity: plan.encoder.maxLineBytes * max(1, plan.pipeline))
        if case .sequence(let first, _) = plan.identities { sequenceNext = first }
        missNext = plan.missBase
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    /// Sends the first `pipeline` requests. Called on the channel's event loop.
    func start() {
        guard let context, !started else { return }
        started = true
        result.startNanos = monotonicNanos()
        if plan.requests == 0 {
            finish(context: context)
            return
        }
        let seconds = plan.timeoutSeconds
        context.eventLoop.assumeIsolated().scheduleTask(in: .seconds(seconds)) {
            guard !self.finished, let context = self.context else { return }
            self.result.failure = "timed out after \(seconds) s with \(self.inFlight) answers outstanding"
            self.finish(context: context)
            context.close(promise: nil)
        }
        for slot in 0..<slots.count where sent < plan.requests {
            send(slot: slot)
        }
        flush(context: context)
    }

    @inline(__always)
    private func send(slot: Int) {
        let op = plan.mix.pick(random.next())
        let identity: Int64
        switch op {
        case .getMiss:
            identity = missNext
            missNext += 1
        case .getHit, .set:
            switch plan.identities {
            case .random(let keyspace):
                identity = Int64(random.next() % UInt64(max(1, keyspace)))
            case .sequence(_, let stride):
                identity = sequenceNext
                sequenceNext += stride
            }
        }
        let id = generation &* UInt64(slots.count) &+ UInt64(slot)
        plan.encoder.write(op, id: id, identity: identity, into: &outbound)
        slots[slot] = Slot(id: id, sentAt: monotonicNanos(), operation: op)
        sent += 1
        inFlight += 1
    }

    private func flush(context: ChannelHandlerContext) {
        guard outbound.readableBytes > 0 else { return }
        let out = outbound
        outbound = context.channel.allocator.buffer(capacity: plan.encoder.maxLineBytes * slots.count)
        context.writeAndFlush(wrapOutboundOut(out), promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var chunk = unwrapInboundIn(data)
        if var pending = partial {
            partial = nil
            pending.writeBuffer(&chunk)
            consumeLines(&pending)
        } else {
            consumeLines(&chunk)
        }
        if !finished {
            flush(context: context)
            if sent == plan.requests && inFlight == 0 { finish(context: context) }
        }
    }

    private func consumeLines(_ buffer: inout ByteBuffer) {
        let consumed = buffer.withUnsafeReadableBytes { bytes -> Int in
            var start = 0
            let n = bytes.count
            guard let base = bytes.baseAddress else { return 0 }
            while start < n {
                guard let nl = memchr(base + start, 0x0A, n - start) else { break }
                let end = base.distance(to: UnsafeRawPointer(nl))
                handleLine(UnsafeRawBufferPointer(rebasing: bytes[start..<end]))
                start = end + 1
            }
            return start
        }
        buffer.moveReaderIndex(forwardBy: consumed)
        if buffer.readableBytes > 0 {
            partial = buffer
        }
    }

    // MARK: - Answers

    private static let responseHead = Array("{\"jsonrpc\":\"2.0\",\"id\":".utf8)
    private static let resultMember = Array(",\"result\":".utf8)
    private static let errorMember = Array(",\"error\":{\"code\":".utf8)
    private static let hitTrue = Array("{\"hit\":true,\"value\":\"".utf8)
    private static let hitFalse = Array("{\"hit\":false,".utf8)
    private static let storedTrue = Array("{\"stored\":true}".utf8)

    private func handleLine(_ line: UnsafeRawBufferPointer) {
        let now = monotonicNanos()
        var pos = 0
        guard line.hasPrefix(Self.responseHead, at: 0) else {
            return unmatched(line)
        }
        pos = Self.responseHead.count
        var id: UInt64 = 0
        let idStart = pos
        while pos < line.count, line[pos] >= UInt8(ascii: "0"), line[pos] <= UInt8(ascii: "9") {
            id = id &* 10 &+ UInt64(line[pos] &- UInt8(ascii: "0"))
            pos += 1
        }
        guard pos > idStart else { return unmatched(line) }
        let slotIndex = Int(id % UInt64(slots.count))
        guard slots[slotIndex].id == id else {
            result.unexpected += 1
            result.problem("answer for an unknown id \(id): \(String(decoding: line, as: UTF8.self))")
            return
        }
        let slot = slots[slotIndex]
        slots[slotIndex].id = .max
        inFlight -= 1
        result.completed += 1
        _ = result.histogram.record(now &- slot.sentAt)

        if line.hasPrefix(Self.resultMember, at: pos) {
            pos += Self.resultMember.count
            switch slot.operation {
            case .getHit, .getMiss:
                if line.hasPrefix(Self.hitTrue, at: pos) {
                    result.hits += 1
                    if slot.operation == .getMiss {
                        result.unexpected += 1
                        result.problem("get-miss answered by a hit: \(String(decoding: line, as: UTF8.self))")
                    } else if let expected = plan.expectedValueSize {
                        let valueStart = pos + Self.hitTrue.count
                        // The value has no escapes: it ends at the next quote.
                        var end = valueStart
                        while end < line.count, line[end] != UInt8(ascii: "\"") { end += 1 }
                        if end - valueStart != expected {
                            result.wrongValues += 1
                            result.problem("value of \(end - valueStart) bytes, expected \(expected)")
                        }
                    }
                } else if line.hasPrefix(Self.hitFalse, at: pos) {
                    result.misses += 1
                    if slot.operation == .getHit {
                        result.problem("get-hit answered by a miss: \(String(decoding: line, as: UTF8.self))")
                    }
                } else {
                    result.unexpected += 1
                    result.problem("unexpected get result: \(String(decoding: line, as: UTF8.self))")
                }
            case .set:
                if line.hasPrefix(Self.storedTrue, at: pos) {
                    result.stored += 1
                } else {
                    result.unexpected += 1
                    result.problem("unexpected set result: \(String(decoding: line, as: UTF8.self))")
                }
            }
        } else if line.hasPrefix(Self.errorMember, at: pos) {
            pos += Self.errorMember.count
            var negative = false
            if pos < line.count, line[pos] == UInt8(ascii: "-") {
                negative = true
                pos += 1
            }
            var code = 0
            while pos < line.count, line[pos] >= UInt8(ascii: "0"), line[pos] <= UInt8(ascii: "9") {
                code = code * 10 + Int(line[pos] - UInt8(ascii: "0"))
                pos += 1
            }
            result.errors += 1
            result.errorCodes[negative ? -code : code, default: 0] += 1
            result.problem("error answer: \(String(decoding: line, as: UTF8.self))")
        } else {
            result.unexpected += 1
            result.problem("unexpected answer: \(String(decoding: line, as: UTF8.self))")
        }

        if sent < plan.requests && !finished {
            generation &+= 1
            send(slot: slotIndex)
        }
    }

    /// A line that is not a plain answer with a numeric id: fall back to the full JSON parser to describe it.
    private func unmatched(_ line: UnsafeRawBufferPointer) {
        result.unexpected += 1
        let text = String(decoding: line, as: UTF8.self)
        if let value = try? JSONParser.parse(line, maxDepth: 64), case .object(let members) = value,
            let error = members["error"]
        {
            result.errors += 1
            if case .object(let e) = error, case .number(let code)? = e["code"], let c = Int(code) {
                result.errorCodes[c, default: 0] += 1
            }
        }
        result.problem("answer without a known id: \(text)")
    }

    // MARK: - End

    private func finish(context: ChannelHandlerContext) {
        guard !finished else { return }
        finished = true
        result.endNanos = monotonicNanos()
        done.succeed(result)
    }

    func channelInactive(context: ChannelHandlerContext) {
        if !finished {
            if started {
                result.failure = "connection closed by the daemon with \(inFlight) answers outstanding"
            } else {
                result.failure = "connection closed by the daemon before the run started"
                result.startNanos = monotonicNanos()
            }
            finish(context: context)
        }
        self.context = nil
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if !finished {
            result.failure = "connection error: \(error)"
            if !started { result.startNanos = monotonicNanos() }
            finish(context: context)
        }
        context.close(promise: nil)
    }
}

extension UnsafeRawBufferPointer {
    @inline(__always)
    fileprivate func hasPrefix(_ prefix: [UInt8], at offset: Int) -> Bool {
        guard count - offset >= prefix.count else { return false }
        return prefix.withUnsafeBytes { p in memcmp(self.baseAddress! + offset, p.baseAddress!, prefix.count) == 0 }
    }
}
