import CachedFuzzCheck
import CachedProtocol
import Foundation
import Testing

/// Replays the fuzz corpus (Fuzz/corpus, grown by `make fuzz`) and the hand-made seeds (Fuzz/seeds)
/// through the same check the fuzzer runs, so that anything the fuzzer once found stays fixed.
@Suite("Fuzz corpus replay")
struct FuzzCorpusReplayTests {
    static let fuzzDirectory = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fuzz")

    static func inputs(_ name: String) throws -> [(name: String, bytes: [UInt8])] {
        let directory = fuzzDirectory.appendingPathComponent(name)
        let names = try FileManager.default.contentsOfDirectory(atPath: directory.path).sorted()
        return try names.filter { !$0.hasPrefix(".") }.map { file in
            (file, Array(try Data(contentsOf: directory.appendingPathComponent(file))))
        }
    }

    func replay(_ directory: String) throws {
        let inputs = try Self.inputs(directory)
        #expect(!inputs.isEmpty, "no inputs in Fuzz/\(directory)")
        for limits in [CachedFuzzLimits(), CachedFuzzLimits(maxLineBytes: 4 * 1024 * 1024, maxDepth: 32, maxBatch: 1000)] {
            for input in inputs {
                let violations = checkCachedInput(input.bytes, limits: limits)
                #expect(violations.isEmpty, "Fuzz/\(directory)/\(input.name): \(violations.joined(separator: "; "))")
            }
        }
    }

    @Test func seeds() throws { try replay("seeds") }

    @Test func corpus() throws { try replay("corpus") }

    /// The fuzz check compares the hot path with the general path on every line the hot path accepts:
    /// the replayed inputs must include such lines, or that comparison would check nothing.
    @Test func inputsReachTheFastGetPath() throws {
        var accepted = 0
        for input in try Self.inputs("seeds") + Self.inputs("corpus") {
            for line in input.bytes.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: true) {
                if Array(line).withUnsafeBytes({ FastGetRequest.parse($0) }) != nil { accepted += 1 }
            }
        }
        print("fuzz inputs: \(accepted) lines taken by the fast get path")
        #expect(accepted >= 10)
    }

    @Test func corpusFilesStaySmall() throws {
        let inputs = try Self.inputs("corpus")
        #expect(inputs.count <= 1000)
        for input in inputs { #expect(input.bytes.count <= 4096, "Fuzz/corpus/\(input.name) is \(input.bytes.count) bytes") }
    }
}
