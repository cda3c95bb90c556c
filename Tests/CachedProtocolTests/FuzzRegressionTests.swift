import CachedFuzzCheck
import NIOCore
import Testing
@testable import CachedProtocol

/// Bugs found by `make fuzz` (and its seeds), one test each.
@Suite("Fuzz regressions")
struct FuzzRegressionTests {
    func params(_ json: String) throws -> JSONValue {
        try JSONParser.parse(Array(json.utf8))
    }

    /// Swift's `String ==` is canonical equivalence: "hash\u{212A}ey" (KELVIN SIGN U+212A) == "hashKey".
    /// The params reader looked names up in a `[String: JSONValue]` and so took the misspelled name as
    /// `hashKey`, where the protocol promises that an unknown parameter is an error.
    @Test func parameterNamesAreMatchedByBytes() throws {
        let kelvin = #"{"key":"Student","identity":1,"hash\u212Aey":"Class","hashId":3}"#
        #expect(throws: CachedError.self) { try GetParams(try params(kelvin)) }
        #expect(throws: CachedError.self) { try DeleteParams(try params(kelvin)) }
        #expect(throws: CachedError.self) {
            try SetParams(try params(#"{"key":"Student","identity":1,"value":"v","hash\u212Aey":"Class","hashId":3}"#))
        }
        #expect(throws: CachedError.self) { try DeleteHashParams(try params(#"{"hash\u212Aey":"Class","hashId":3}"#)) }
        // Alone, the misspelled name is reported as unknown.
        let value = try params(#"{"key":"Student","identity":1,"hash\u212Aey":"Class"}"#)
        do throws(CachedError) {
            _ = try DeleteParams(value)
            Issue.record("a misspelled parameter was accepted")
        } catch {
            #expect(error.code == .invalidParams)
            #expect(error.message == "delete: unknown parameter \"hash\u{212A}ey\"")
        }
        // The exact spelling still works.
        let exact = try GetParams(try params(#"{"key":"Student","identity":1,"hashKey":"Class","hashId":3}"#))
        #expect(exact.address.storeKey == "00000CLASS#0000000003")
        #expect(exact.address.storeField == "000STUDENT#0000000001")
    }

    @Test func kelvinSignRequestPassesTheFuzzCheck() {
        let line = #"{"jsonrpc":"2.0","id":1,"method":"get","params":{"key":"Student","identity":1,"hash\u212Aey":"Class","hashId":3}}"#
        #expect(checkCachedInput(Array(line.utf8)) == [])
        let raw = "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"get\",\"params\":{\"key\":\"Student\",\"identity\":1,\"hash\u{212A}ey\":\"Class\",\"hashId\":3}}"
        #expect(checkCachedInput(Array(raw.utf8)) == [])
    }
}
