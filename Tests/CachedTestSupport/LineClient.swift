import CachedProtocol
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// A blocking client for the line protocol, on a plain POSIX socket (no event loop in the way).
public final class LineClient: @unchecked Sendable {
    public let fd: Int32
    private var buffer: [UInt8] = []
    private var nextID = 1

    public init(path: String) throws {
        fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw HarnessError("socket() failed") }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else { throw HarnessError("path too long") }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard rc == 0 else {
            close(fd)
            throw HarnessError("connect(\(path)) failed: errno \(errno)")
        }
    }

    deinit { close(fd) }

    /// Writes raw bytes.
    public func send(_ bytes: [UInt8]) throws {
        var offset = 0
        while offset < bytes.count {
            let n = bytes[offset...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard n > 0 else { throw HarnessError("send failed: errno \(errno)") }
            offset += n
        }
    }

    public func send(_ text: String) throws { try send(Array(text.utf8)) }

    /// Shuts down the write side (the daemon answers what it has, then closes).
    public func shutdownWrite() { shutdown(fd, Int32(SHUT_WR)) }
    /// Ends the connection both ways (the descriptor is closed when the client goes).
    public func closeSocket() { shutdown(fd, Int32(SHUT_RDWR)) }

    /// Reads one line (without the newline); nil at EOF. Throws on timeout.
    public func readLine(timeout: Double = 10) throws -> String? {
        guard let bytes = try readLineBytes(timeout: timeout) else { return nil }
        return String(decoding: bytes, as: UTF8.self)
    }

    public func readLineBytes(timeout: Double = 10) throws -> [UInt8]? {
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            if let i = buffer.firstIndex(of: UInt8(ascii: "\n")) {
                let line = Array(buffer[..<i])
                buffer.removeSubrange(...i)
                return line
            }
            let remaining = deadline.timeIntervalSinceNow
            guard remaining > 0 else { throw HarnessError("timed out waiting for a line") }
            var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let ready = poll(&pfd, 1, Int32(remaining * 1000) + 1)
            if ready == 0 { continue }
            var chunk = [UInt8](repeating: 0, count: 65536)
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n <= 0 {
                if buffer.isEmpty { return nil }
                let rest = buffer
                buffer = []
                return rest
            }
            buffer.append(contentsOf: chunk[..<n])
        }
    }

    /// True if the daemon closed the connection (EOF) within `timeout`.
    public func isClosedByPeer(timeout: Double = 5) -> Bool {
        do {
            while true {
                guard try readLineBytes(timeout: timeout) != nil else { return true }
            }
        } catch {
            return false
        }
    }

    /// Reads one answer line as JSON.
    public func readJSON(timeout: Double = 10) throws -> JSONValue {
        guard let line = try readLineBytes(timeout: timeout) else { throw HarnessError("connection closed") }
        return try JSONParser.parse(line)
    }

    /// Sends one request and reads the answer (no other request may be outstanding).
    public func call(_ method: String, _ params: [String: JSONValue]? = nil, timeout: Double = 10) throws -> JSONValue {
        let id = nextID
        nextID += 1
        try send(Self.request(id: id, method: method, params: params) + "\n")
        let answer = try readJSON(timeout: timeout)
        guard answer["id"] == .number(String(id)) else { throw HarnessError("answer for another id: \(answer)") }
        return answer
    }

    /// Encodes a request line (without newline).
    public static func request(id: Int?, method: String, params: [String: JSONValue]?) -> String {
        var members: [String: JSONValue] = ["jsonrpc": .string("2.0"), "method": .string(method)]
        if let id { members["id"] = .number(String(id)) }
        if let params { members["params"] = .object(params) }
        return jsonText(.object(members))
    }
}

extension JSONValue {
    /// Member access for tests: `answer["result"]?["hit"]`.
    public subscript(_ name: String) -> JSONValue? {
        if case .object(let members) = self { return members[name] }
        return nil
    }

    public subscript(_ index: Int) -> JSONValue? {
        if case .array(let elements) = self, elements.indices.contains(index) { return elements[index] }
        return nil
    }

    public var intValue: Int? {
        if case .number(let raw) = self { return Int(raw) }
        return nil
    }
}

