import CachedFuzzCheck
import NIOCore
import CachedTestSupport
import Testing
@testable import CachedCore

/// The daemon's request framing, fed without sockets, checked against the reference framing model of the
/// fuzz check (`LineFramer`, written independently from `docs/protocol.md`).
@Suite("Request line framing")
struct RequestLineFramerTests {
    enum Event: Equatable {
        case line([UInt8])
        case tooLong
    }

    /// Feeds `chunks` one by one, taking every line after each, like `ClientConnectionHandler` does.
    func frame(_ chunks: [[UInt8]], max: Int) -> (events: [Event], leftover: Int) {
        var framer = RequestLineFramer(maxLineBytes: max)
        var events: [Event] = []
        for chunk in chunks {
            framer.append(ByteBuffer(bytes: chunk))
            loop: while true {
                switch framer.next() {
                case .line(let line): events.append(.line(Array(line.readableBytesView)))
                case .needMore: break loop
                case .tooLong: return (events + [.tooLong], 0)
                }
            }
        }
        return (events, framer.unterminatedBytes)
    }

    @Test func linesAcrossReadsAndCarriageReturns() {
        let (events, leftover) = frame([Array("ab\r\ncd".utf8), Array("e\n\nf".utf8), Array("g\r".utf8)], max: 10)
        #expect(events == [.line(Array("ab".utf8)), .line(Array("cde".utf8)), .line([])])
        #expect(leftover == 3)  // "fg\r": no newline yet
    }

    @Test func theLimitIsExact() {
        // maxLineBytes bytes (plus "\r\n") pass, one more does not, whether the line arrives whole or trickles.
        let atLimit = [UInt8](repeating: 0x61, count: 8)
        #expect(frame([atLimit + [0x0D, 0x0A]], max: 8).events == [.line(atLimit)])
        #expect(frame(atLimit.map { [$0] } + [[0x0D], [0x0A]], max: 8).events == [.line(atLimit)])
        #expect(frame([atLimit + [0x61, 0x0A]], max: 8).events == [.tooLong])
        #expect(frame(atLimit.map { [$0] } + [[0x61]], max: 8).events == [.tooLong])  // caught before its newline
        #expect(frame([atLimit + [0x0D]], max: 8).events == [])  // the \r may still end the line
    }

    /// Random inputs in random chunkings: the same lines, limit decisions and leftovers as the model.
    @Test func agreesWithTheReferenceModel() {
        var rng = SplitMix64(seed: 0xF4A3)
        let alphabet: [UInt8] = [0x61, 0x62, 0x0D, 0x0A, 0x7B, 0x20]
        for _ in 0..<3_000 {
            let max = 1 + Int(rng.next() % 12)
            let input = (0..<Int(rng.next() % 60)).map { _ in alphabet[Int(rng.next() % UInt64(alphabet.count))] }
            var chunks: [[UInt8]] = []
            var start = 0
            while start < input.count {
                let end = min(input.count, start + 1 + Int(rng.next() % 9))
                chunks.append(Array(input[start..<end]))
                start = end
            }
            var model = LineFramer(maxLineBytes: max)
            let expected: [Event] = model.feed(input).map {
                switch $0 {
                case .line(let l): .line(l)
                case .tooLong: .tooLong
                }
            }
            let (events, leftover) = frame(chunks, max: max)
            #expect(events == expected, "input \(input) max \(max)")
            if !model.closed { #expect(leftover == model.unterminated.count, "input \(input) max \(max)") }
        }
    }
}
