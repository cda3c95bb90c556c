import Testing
import NIOCore
@testable import CachedProtocol

@Suite("JSON-RPC messages")
struct JSONRPCMessageTests {
    func parse(_ line: String) -> JSONRPCMessage {
        JSONRPCMessage.parse(Array(line.utf8), maxDepth: 32)
    }

    @Test func requestWithEachKindOfID() {
        #expect(parse(#"{"jsonrpc":"2.0","id":1.5,"method":"ping"}"#) == .single(.request(.init(id: .number("1.5"), method: "ping", params: nil))))
        #expect(parse(#"{"jsonrpc":"2.0","id":"a","method":"ping"}"#) == .single(.request(.init(id: .string("a"), method: "ping", params: nil))))
        #expect(parse(#"{"jsonrpc":"2.0","id":null,"method":"ping"}"#) == .single(.request(.init(id: .null, method: "ping", params: nil))))
        #expect(parse(#"{"jsonrpc":"2.0","method":"ping"}"#) == .single(.request(.init(id: nil, method: "ping", params: nil))))
    }

    @Test func invalidRequestsKeepTheirIDWhenTheyHaveOne() {
        guard case .single(.invalid(let id, let error)) = parse(#"{"jsonrpc":"1.0","id":7,"method":"ping"}"#) else {
            Issue.record("expected invalid")
            return
        }
        #expect(id == .number("7"))
        #expect(error.code == .invalidRequest)
        guard case .single(.invalid(let id2, let error2)) = parse(#"{"jsonrpc":"2.0","id":{},"method":"ping"}"#) else {
            Issue.record("expected invalid")
            return
        }
        #expect(id2 == .null)
        #expect(error2.code == .invalidRequest)
    }

    @Test func batches() {
        guard case .unparseable(let empty) = parse("[]") else { Issue.record("expected error"); return }
        #expect(empty.code == .invalidRequest)
        guard case .batch(let entries) = parse("[1,2,3]") else { Issue.record("expected batch"); return }
        #expect(entries.count == 3)
        for entry in entries {
            guard case .invalid(.null, let e) = entry else { Issue.record("expected invalid"); return }
            #expect(e.code == .invalidRequest)
        }
        guard case .unparseable(let bad) = parse(#"[{"jsonrpc":"2.0","method":"ping"},"#) else { Issue.record("expected error"); return }
        #expect(bad.code == .parseError)
    }

    @Test func depthAndParseErrors() {
        guard case .unparseable(let deep) = parse(String(repeating: "[", count: 10_000)) else { Issue.record("expected error"); return }
        #expect(deep.code == .limitExceeded)
        guard case .unparseable(let garbage) = parse("hello") else { Issue.record("expected error"); return }
        #expect(garbage.code == .parseError)
    }

    @Test func errorResponseEncoding() {
        var buffer = ByteBuffer()
        buffer.writeJSONRPCError(id: .number("9007199254740993"), CachedError(.methodNotFound, "Method not found: x"))
        #expect(String(buffer: buffer) == #"{"jsonrpc":"2.0","id":9007199254740993,"error":{"code":-32601,"message":"Method not found: x"}}"#)
    }
}

@Suite("Key layout (pyredis-cache compatible)")
struct KeyLayoutTests {
    func address(_ key: String, _ identity: JSONValue) throws -> String {
        EntryAddress(key: key, identity: try Identity(json: identity, name: "identity"), hash: nil).storeKey
    }

    @Test func matchesPythonFormatting() throws {
        // Expected values computed with Python: "%s#%010d" % (key.zfill(10).upper(), identity)
        #expect(try address("Student", .number("12")) == "000STUDENT#0000000012")
        #expect(try address("Student", .number("-5")) == "000STUDENT#-000000005")
        #expect(try address("Student", .number("-0")) == "000STUDENT#0000000000")
        #expect(try address("abc", .number("12345678901234")) == "0000000ABC#12345678901234")
        #expect(try address("-ab", .number("1")) == "-0000000AB#0000000001")
        #expect(try address("VeryLongKeyName", .number("1")) == "VERYLONGKEYNAME#0000000001")
        #expect(try address("Student", .string("alice")) == "000STUDENT#alice")
    }

    @Test func hashLayout() throws {
        let a = EntryAddress(
            key: "Student", identity: .integer("12"),
            hash: HashAddress(hashKey: "Class", hashId: .integer("3")))
        #expect(a.storeKey == "00000CLASS#0000000003")
        #expect(a.storeField == "000STUDENT#0000000012")
    }

    @Test(arguments: ["ab", "", "has space", "nul\u{0}", "é-key", String(repeating: "k", count: 129), "a#b"])
    func invalidKeys(_ key: String) {
        #expect(throws: CachedError.self) { try KeyLayout.validateKey(key) }
    }

    @Test func invalidIdentities() {
        for value: JSONValue in [.number("1.5"), .number("1e3"), .string(""), .string("a\u{0}b"), .bool(true), .array([]), .string(String(repeating: "x", count: 257))] {
            #expect(throws: CachedError.self, "\(value)") { try Identity(json: value, name: "identity") }
        }
    }

    @Test func paramsRejectUnknownAndMistyped() throws {
        #expect(throws: CachedError.self) { try GetParams(.object(["key": .string("Student"), "identity": .number("1"), "bogus": .null, "x": .number("1")])) }
        #expect(throws: CachedError.self) { try GetParams(.object(["key": .number("1"), "identity": .number("1")])) }
        #expect(throws: CachedError.self) { try GetParams(.array([.string("Student"), .number("1")])) }
        #expect(throws: CachedError.self) { try SetParams(.object(["key": .string("Student"), "identity": .number("1"), "value": .string("x"), "ttl": .number("-1")])) }
        #expect(throws: CachedError.self) { try GetParams(.object(["key": .string("Student"), "identity": .number("1"), "hashKey": .string("Class")])) }
        let set = try SetParams(.object(["key": .string("Student"), "identity": .number("1"), "value": .string("/wBB"), "encoding": .string("base64"), "ttl": .number("1.5")]))
        #expect(set.value == ByteBuffer(bytes: [0xFF, 0x00, 0x41]))
        #expect(set.ttl == 1.5)
    }
}
