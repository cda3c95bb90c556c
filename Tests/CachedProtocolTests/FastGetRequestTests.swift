import CachedTestSupport
import Testing
@testable import CachedProtocol

/// The hot path (``FastGetRequest``) must accept the common `get` shapes and, for every line it accepts,
/// read exactly what the general path reads; everything else it must leave to the general path.
@Suite("Fast get path")
struct FastGetRequestTests {
    func fast(_ line: String) -> FastGetRequest? {
        Array(line.utf8).withUnsafeBytes { FastGetRequest.parse($0) }
    }

    /// What the general path makes of a line, when it reads it as a `get` with an id and valid params.
    func general(_ line: String) -> (JSONRPCID, GetParams)? {
        guard case .single(.request(let request)) = JSONRPCMessage.parse(Array(line.utf8), maxDepth: 32),
            request.method == "get", let id = request.id, let params = try? GetParams(request.params)
        else { return nil }
        return (id, params)
    }

    /// Asserts the two paths agree on a line the fast path accepts.
    func expectAgreement(_ line: String, sourceLocation: SourceLocation = #_sourceLocation) {
        guard let fast = fast(line) else { return }
        guard let (id, params) = general(line) else {
            Issue.record("fast path accepted a line the general path does not read as a get: \(line)", sourceLocation: sourceLocation)
            return
        }
        #expect(fast.id == id, sourceLocation: sourceLocation)
        #expect(fast.params == params, sourceLocation: sourceLocation)
        #expect(fast.params.address.storeKey == params.address.storeKey, sourceLocation: sourceLocation)
        #expect(fast.params.address.storeField == params.address.storeField, sourceLocation: sourceLocation)
        #expect(fast.timeout == generalTimeout(line), sourceLocation: sourceLocation)
    }

    /// The `timeout` the general path reads from a line.
    func generalTimeout(_ line: String) -> Double? {
        guard case .single(.request(let request)) = JSONRPCMessage.parse(Array(line.utf8), maxDepth: 32) else { return nil }
        return try? RequestTimeout.read(request.params, method: "get")
    }

    @Test func aTimeoutIsReadOnTheFastPathAsTheGeneralPathReadsIt() {
        for (line, seconds) in [
            (#"{"jsonrpc":"2.0","id":1,"method":"get","params":{"key":"Student","identity":12,"timeout":30.0}}"#, 30.0),
            (#"{"jsonrpc":"2.0","id":1,"method":"get","params":{"key":"Student","identity":12,"timeout":0.25}}"#, 0.25),
            (#"{"jsonrpc":"2.0","id":1,"method":"get","params":{"key":"Sub","identity":1,"hashKey":"Klass","hashId":7,"timeout":5}}"#, 5),
        ] {
            #expect(canonical(line)?.timeout == seconds, "matched whole: \(line)")
            #expect(fast(line)?.timeout == seconds)
            expectAgreement(line)
        }
        for (line, seconds) in [
            (#"{"jsonrpc":"2.0","id":1,"method":"get","params":{"timeout":2.5,"key":"Student","identity":12}}"#, 2.5),
            (#"{"params":{"identity":12,"timeout": 10,"key":"Student"},"method":"get","id":1,"jsonrpc":"2.0"}"#, 10),
        ] {
            #expect(canonical(line) == nil)
            #expect(fast(line)?.timeout == seconds, "read member by member: \(line)")
            expectAgreement(line)
        }
        // Not in the subset (exponents, out of range, twice, wrong type): the general path answers it.
        for line in [
            #"{"jsonrpc":"2.0","id":1,"method":"get","params":{"key":"Student","identity":12,"timeout":1e3}}"#,
            #"{"jsonrpc":"2.0","id":1,"method":"get","params":{"key":"Student","identity":12,"timeout":0}}"#,
            #"{"jsonrpc":"2.0","id":1,"method":"get","params":{"key":"Student","identity":12,"timeout":-1.5}}"#,
            #"{"jsonrpc":"2.0","id":1,"method":"get","params":{"key":"Student","identity":12,"timeout":86400.5}}"#,
            #"{"jsonrpc":"2.0","id":1,"method":"get","params":{"key":"Student","identity":12,"timeout":"1"}}"#,
            #"{"jsonrpc":"2.0","id":1,"method":"get","params":{"key":"Student","identity":12,"timeout":1,"timeout":2}}"#,
            #"{"jsonrpc":"2.0","id":1,"method":"get","params":{"key":"Student","identity":12,"timeout":1.}}"#,
            #"{"jsonrpc":"2.0","id":1,"method":"get","params":{"key":"Student","identity":12,"timeout":01}}"#,
        ] {
            #expect(fast(line) == nil, "left to the general path: \(line)")
        }
    }

    @Test("the shapes the clients send", arguments: [
        #"{"jsonrpc":"2.0","id":1,"method":"get","params":{"key":"Student","identity":12}}"#,
        #"{"jsonrpc": "2.0", "id": 7, "method": "get", "params": {"key": "Student", "identity": 12}}"#,
        #"{"method":"get","params":{"identity":"alice","key":"user.profile"},"id":"r-9","jsonrpc":"2.0"}"#,
        #"{"jsonrpc":"2.0","id":-3,"method":"get","params":{"key":"Bench","identity":-0}}"#,
        #"{"jsonrpc":"2.0","id":0,"method":"get","params":{"key":"Sub","identity":-42,"hashKey":"Klass","hashId":"7"}}"#,
        " \t{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"get\",\"params\":{\"key\":\"Student\",\"identity\":123456789012345678901234567890}}\r ",
    ])
    func acceptsCommonShapes(_ line: String) {
        #expect(fast(line) != nil, "the hot path should take: \(line)")
        expectAgreement(line)
    }

    func canonical(_ line: String) -> FastGetRequest? {
        Array(line.utf8).withUnsafeBytes { bytes in
            var scanner = FastGetRequest.Scanner(bytes: bytes)
            return scanner.canonical()
        }
    }

    @Test func theClientsExactShapeIsMatchedWhole() {
        for line in [
            #"{"jsonrpc":"2.0","id":1,"method":"get","params":{"key":"Student","identity":12}}"#,
            #"{"jsonrpc":"2.0","id":"r-1","method":"get","params":{"key":"user.profile","identity":"alice"}}"#,
            #"{"jsonrpc":"2.0","id":0,"method":"get","params":{"key":"Sub","identity":-0,"hashKey":"Klass","hashId":"7"}}"#,
        ] {
            #expect(canonical(line) != nil, "matched whole: \(line)")
            #expect(canonical(line) == fast(line))
            expectAgreement(line)
        }
        // Near misses are read member by member (or left to the general path), never half-matched.
        for line in [
            #"{"jsonrpc": "2.0","id":1,"method":"get","params":{"key":"Student","identity":12}}"#,
            #"{"id":1,"jsonrpc":"2.0","method":"get","params":{"key":"Student","identity":12}}"#,
            #"{"jsonrpc":"2.0","id":1,"method":"get","params":{"identity":12,"key":"Student"}}"#,
            #"{"jsonrpc":"2.0","id":1,"method":"get","params":{"key":"Student","identity":12}} "#,
        ] {
            #expect(canonical(line) == nil, "not the exact shape: \(line)")
            #expect(fast(line) != nil)
            expectAgreement(line)
        }
        for line in [
            #"{"jsonrpc":"2.0","id":1,"method":"get","params":{"key":"St","identity":12}}"#,  // key too short
            #"{"jsonrpc":"2.0","id":1,"method":"get","params":{"key":"Student","identity":12,"hashKey":"Klass"}}"#,
            #"{"jsonrpc":"2.0","id":1,"method":"get","params":{"key":"Student","identity":12}}}"#,
            #"{"jsonrpc":"2.0","id":01,"method":"get","params":{"key":"Student","identity":12}}"#,
        ] {
            #expect(canonical(line) == nil && fast(line) == nil, "left to the general path: \(line)")
        }
    }

    @Test func readsTheEntryAddress() throws {
        let plain = try #require(fast(#"{"jsonrpc":"2.0","id":5,"method":"get","params":{"key":"Student","identity":12}}"#))
        #expect(plain.id == .number("5"))
        #expect(plain.params.address.storeKey == "000STUDENT#0000000012")
        #expect(plain.params.address.storeField == nil)
        let hashed = try #require(fast(#"{"jsonrpc":"2.0","id":"x","method":"get","params":{"key":"Sub","identity":-4,"hashKey":"Klass","hashId":7}}"#))
        #expect(hashed.id == .string("x"))
        #expect(hashed.params.address.storeKey == "00000KLASS#0000000007")
        #expect(hashed.params.address.storeField == "0000000SUB#-000000004")
        let negativeZero = try #require(fast(#"{"jsonrpc":"2.0","id":1,"method":"get","params":{"key":"Bench","identity":-0}}"#))
        #expect(negativeZero.params.address.identity == .integer("0"))
    }

    @Test("left to the general path", arguments: [
        #"{"jsonrpc":"2.0","id":1,"method":"set","params":{"key":"Student","identity":12}}"#,  // another method
        #"{"jsonrpc":"2.0","method":"get","params":{"key":"Student","identity":12}}"#,  // a notification
        #"{"jsonrpc":"2.0","id":null,"method":"get","params":{"key":"Student","identity":12}}"#,  // null id
        #"{"jsonrpc":"2.0","id":1.5,"method":"get","params":{"key":"Student","identity":12}}"#,  // fraction
        #"{"jsonrpc":"2.0","id":1e3,"method":"get","params":{"key":"Student","identity":12}}"#,  // exponent
        #"{"jsonrpc":"2.0","id":01,"method":"get","params":{"key":"Student","identity":12}}"#,  // leading zero
        #"{"jsonrpc":"2.0","id":1,"method":"get","params":{"key":"Student","identity":1.0}}"#,
        #"{"jsonrpc":"2.0","id":1,"method":"get","params":{"key":"Stud\u0065nt","identity":12}}"#,  // an escape
        #"{"jsonrpc":"2.0","id":1,"method":"get","params":{"key":"Student","identity":"Zoë"}}"#,  // non-ASCII
        #"{"jsonrpc":"2.0","id":1,"method":"get","params":{"key":"Student","identity":""}}"#,  // empty identity
        #"{"jsonrpc":"2.0","id":1,"method":"get","params":{"key":"St","identity":12}}"#,  // key too short
        #"{"jsonrpc":"2.0","id":1,"method":"get","params":{"key":"Stu dent","identity":12}}"#,  // bad key byte
        #"{"jsonrpc":"2.0","id":1,"method":"get","params":{"key":"Student","identity":12,"args":[1]}}"#,  // handler args
        #"{"jsonrpc":"2.0","id":1,"method":"get","params":{"key":"Student","identity":null}}"#,
        #"{"jsonrpc":"2.0","id":1,"method":"get","params":{"key":"Student"}}"#,  // missing identity
        #"{"jsonrpc":"2.0","id":1,"method":"get","params":{"key":"Student","identity":12,"hashKey":"Klass"}}"#,  // half a hash
        #"{"jsonrpc":"2.0","id":1,"method":"get","params":{"key":"Student","identity":12,"key":"Other"}}"#,  // duplicate param
        #"{"jsonrpc":"2.0","id":1,"id":2,"method":"get","params":{"key":"Student","identity":12}}"#,  // duplicate member
        #"{"jsonrpc":"2.0","id":1,"method":"get","params":{"key":"Student","identity":12},"extra":1}"#,  // unknown member
        #"{"jsonrpc":"1.0","id":1,"method":"get","params":{"key":"Student","identity":12}}"#,
        #"{"jsonrpc":"2.0","id":1,"method":"get","params":[1,2]}"#,
        #"{"jsonrpc":"2.0","id":1,"method":"get","params":{"key":"Student","identity":12}} x"#,  // trailing bytes
        #"{"jsonrpc":"2.0","id":1,"method":"get","params":{"key":"Student","identity":12}"#,  // truncated
        #"[{"jsonrpc":"2.0","id":1,"method":"get","params":{"key":"Student","identity":12}}]"#,  // a batch
        "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"get\",\"params\":{\"key\":\"Student\",\"identity\":\"a\u{7F}b\"}}",  // DEL
    ])
    func leavesEverythingElse(_ line: String) {
        #expect(fast(line) == nil, "the hot path should leave this to the general path: \(line)")
    }

    /// Random mutations of accepted lines (bytes replaced, inserted, removed; members shuffled):
    /// whatever the fast path still accepts, the general path must read identically.
    @Test func agreesWithTheGeneralPathOnMutations() {
        let seeds = [
            #"{"jsonrpc":"2.0","id":1,"method":"get","params":{"key":"Student","identity":12}}"#,
            #"{"jsonrpc": "2.0", "id": "abc", "method": "get", "params": {"key": "a.b-c", "identity": "x y", "hashKey": "Hk1", "hashId": -9}}"#,
            #"{"jsonrpc":"2.0","id":3,"method":"get","params":{"key":"Sub","identity":-4,"hashKey":"Klass","hashId":"7"}}"#,
        ]
        let alphabet = Array(#"{}[],:" \-0123456789.eEabcdghijklmnopqrstuvwxyzKI\u00"#.utf8) + [0x7F, 0xC3, 0xA9, 0x09]
        var rng = SplitMix64(seed: 0x5EED)
        var accepted = 0
        for seed in seeds {
            for _ in 0..<20_000 {
                var bytes = Array(seed.utf8)
                for _ in 0..<(1 + Int(rng.next() % 3)) {
                    let at = Int(rng.next() % UInt64(bytes.count))
                    let byte = alphabet[Int(rng.next() % UInt64(alphabet.count))]
                    switch rng.next() % 3 {
                    case 0: bytes[at] = byte
                    case 1: bytes.insert(byte, at: at)
                    default: if bytes.count > 1 { bytes.remove(at: at) }
                    }
                }
                let line = String(decoding: bytes, as: UTF8.self)
                guard String(decoding: bytes, as: UTF8.self).utf8.elementsEqual(bytes) else { continue }
                if fast(line) != nil { accepted += 1 }
                expectAgreement(line)
            }
        }
        // The mutations must exercise the accepting side too, or the agreement check proves nothing.
        #expect(accepted > 1_000)
    }
}
