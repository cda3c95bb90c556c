import Testing
import NIOCore
@testable import CachedProtocol

@Suite("JSON parser")
struct JSONParserTests {
    func parse(_ text: String, maxDepth: Int = 64) throws(JSONParseError) -> JSONValue {
        try JSONParser.parse(Array(text.utf8), maxDepth: maxDepth)
    }

    @Test func scalarsAndContainers() throws {
        #expect(try parse("null") == .null)
        #expect(try parse(" true ") == .bool(true))
        #expect(try parse("false") == .bool(false))
        #expect(try parse("\"hi\"") == .string("hi"))
        #expect(try parse("[1, \"a\", null]") == .array([.number("1"), .string("a"), .null]))
        #expect(try parse("{\"a\": {\"b\": []}}") == .object(["a": .object(["b": .array([])])]))
    }

    @Test(arguments: ["0", "-0", "1.5", "9007199254740993", "-12.50e+10", "1E-7", "123456789012345678901234567890"])
    func numbersKeepTheirText(_ raw: String) throws {
        #expect(try parse(raw) == .number(raw))
    }

    @Test(arguments: ["01", "1.", ".5", "-", "1e", "+1", "0x10", "NaN", "Infinity", "1.5.5"])
    func invalidNumbers(_ raw: String) {
        #expect(throws: JSONParseError.self) { try parse(raw) }
    }

    @Test func escapes() throws {
        #expect(try parse(#""a\"b\\c\/d\n\t\u00e9\ud83d\ude00""#) == .string("a\"b\\c/d\n\té😀"))
    }

    @Test func loneSurrogatesAreRejected() {
        #expect(throws: JSONParseError(.loneSurrogate, offset: 1)) { try parse(#""\ud800""#) }
        #expect(throws: JSONParseError(.loneSurrogate, offset: 1)) { try parse(#""\udc00x""#) }
        #expect(throws: JSONParseError(.loneSurrogate, offset: 1)) { try parse(#""\ud800\u0041""#) }
    }

    @Test func invalidUTF8IsRejected() {
        for bad: [UInt8] in [[0x22, 0xFF, 0x22], [0x22, 0xC0, 0x80, 0x22], [0x22, 0xED, 0xA0, 0x80, 0x22], [0x22, 0xE2, 0x82, 0x22]] {
            #expect(throws: JSONParseError.self) { try JSONParser.parse(bad) }
            do {
                _ = try JSONParser.parse(bad)
            } catch {
                #expect(error.kind == .invalidUTF8)
            }
        }
    }

    @Test func controlCharactersAndGarbage() {
        for text in ["\"a\u{01}b\"", "{", "[1,]", "{\"a\":1,}", "{a:1}", "tru", "[1] x", "", "  "] {
            #expect(throws: JSONParseError.self, "\(text)") { try parse(text) }
        }
    }

    @Test func depthLimitIsEnforcedCheaply() throws {
        let ok = String(repeating: "[", count: 32) + String(repeating: "]", count: 32)
        #expect(throws: Never.self) { try parse(ok, maxDepth: 32) }
        let deep = String(repeating: "[", count: 10_000) + String(repeating: "]", count: 10_000)
        do {
            _ = try parse(deep, maxDepth: 32)
            Issue.record("expected too deep")
        } catch {
            #expect(error.kind == .tooDeep)
            #expect(error.offset == 32)
        }
    }

    @Test func duplicateMembersAreRefused() throws {
        #expect(throws: JSONParseError(.duplicateMember, offset: 7)) { try parse("{\"a\":1,\"a\":2}") }
        // Canonically equivalent spellings are the same name (KELVIN SIGN vs K).
        #expect(throws: JSONParseError.self) { try parse(#"{"hashKey":"A","hash\u212Aey":"B"}"#) }
        #expect(try parse("{\"a\":{\"a\":1}}") == .object(["a": .object(["a": .number("1")])]))
    }
}

@Suite("JSON writer")
struct JSONWriterTests {
    @Test func escapesWhatJSONRequires() throws {
        var buffer = ByteBuffer()
        buffer.writeJSONString("a\"b\\c\n\u{01}é")
        #expect(String(buffer: buffer) == #""a\"b\\c\n\u0001é""#)
    }

    @Test func roundTripsThroughTheParser() throws {
        let value: JSONValue = .object([
            "s": .string("x\u{7F}\u{2028}\"\\"), "n": .number("-1.5e3"), "a": .array([.null, .bool(true), .object([:])]),
        ])
        var buffer = ByteBuffer()
        buffer.writeJSONValue(value)
        #expect(try JSONParser.parse(Array(buffer.readableBytesView)) == value)
    }

    @Test func valuesTravelAsUTF8OrBase64() {
        var text = ByteBuffer()
        text.writeValueMember(ByteBuffer(string: "héllo"))
        #expect(String(buffer: text) == #""value":"héllo""#)
        var binary = ByteBuffer()
        binary.writeValueMember(ByteBuffer(bytes: [0xFF, 0x00, 0x41]))
        #expect(String(buffer: binary) == #""value":"/wBB","encoding":"base64""#)
    }
}
