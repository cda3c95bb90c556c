import CachedTestSupport
import NIOCore
import Testing

@testable import CachedProtocol

@Suite("invalidate notifications")
struct InvalidateNotificationTests {
    func line(_ n: InvalidateNotification) -> String {
        var buffer = ByteBuffer()
        buffer.writeInvalidateNotification(n)
        return String(buffer: buffer)
    }

    @Test func writtenAsTheProtocolSaysAndReadBack() throws {
        let plain = EntryAddress(key: "Student", identity: .integer("12"), hash: nil)
        let hashed = EntryAddress(key: "Sub", identity: .string("a \"b\""), hash: HashAddress(hashKey: "Klass", hashId: .integer("-7")))
        let text = line(.entries([plain, hashed]))
        #expect(text == #"{"jsonrpc":"2.0","method":"invalidate","params":{"entries":[{"key":"Student","identity":12},{"key":"Sub","identity":"a \"b\"","hashKey":"Klass","hashId":-7}]}}"#)
        #expect(line(.all) == #"{"jsonrpc":"2.0","method":"invalidate","params":{"all":true}}"#)
        for n in [InvalidateNotification.entries([plain, hashed]), .all, .entries([])] {
            let parsed = try JSONParser.parse(Array(line(n).utf8))
            #expect(InvalidateNotification(parsed) == n)
        }
        // An answer (with an id) or another method is not a notification.
        #expect(InvalidateNotification(try JSONParser.parse(Array(#"{"jsonrpc":"2.0","id":1,"method":"invalidate","params":{"all":true}}"#.utf8))) == nil)
        #expect(InvalidateNotification(try JSONParser.parse(Array(#"{"jsonrpc":"2.0","method":"other","params":{"all":true}}"#.utf8))) == nil)
    }
}
