import ArgumentParser
import CachedClient
import CachedProtocol
import NIOCore

#if canImport(Glibc)
import Glibc
#endif

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

// MARK: - Command

/// `cachectl`: talk to the `cached` daemon from a shell.
@main
struct Cachectl: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cachectl",
        abstract: "Talk to the cached daemon over its Unix socket.",
        discussion: """
            Exit status: 0 success, 1 miss (get), 2 the daemon cannot be reached, 3 the daemon answered an error.
            Identities that look like integers (12, -5) are sent as JSON integers; --string-identity forces a string.
            """,
        subcommands: [Ping.self, Get.self, Set.self, Delete.self, DeleteHash.self, Stats.self]
    )
}

// MARK: - Shared options

/// Options of every subcommand.
struct GlobalOptions: ParsableArguments {
    @Option(name: .long, help: "The daemon's socket (default: $CACHED_SOCKET, else /run/cached/cached.sock, else run/cached.sock as `make run` serves it from the repository).")
    var socket: String?

    /// `--socket`, else `$CACHED_SOCKET`, else the system socket, else `make run`'s socket in the current directory.
    var socketPath: String {
        if let socket { return socket }
        if ProcessInfo.processInfo.environment["CACHED_SOCKET"] == nil,
            !FileManager.default.fileExists(atPath: CachedClient.defaultSocketPath),
            FileManager.default.fileExists(atPath: "run/cached.sock")
        {
            return "run/cached.sock"
        }
        return CachedClient.defaultSocketPath
    }

    @Flag(name: .long, help: "Print the raw JSON result object (for jq).")
    var json = false

    /// Runs `body` with a connected client, mapping failures to exit statuses.
    func run(_ body: (CachedClient) async throws -> Void) async throws {
        let client = CachedClient(socketPath: socketPath)
        do {
            try await body(client)
            await client.close()
        } catch let error as CachedError {
            await client.close()
            printError("error \(error.code.rawValue): \(error.message)")
            throw ExitCode(3)
        } catch let error as CachedClientError {
            await client.close()
            printError("\(error)")
            throw ExitCode(2)
        } catch {
            await client.close()
            throw error
        }
    }

    /// Prints a result as one line of JSON.
    func printJSON(_ value: JSONValue) {
        var buffer = ByteBuffer()
        buffer.writeJSONValue(value)
        buffer.writeStaticString("\n")
        writeStdout(buffer)
    }
}

/// Options addressing an entry.
struct EntryOptions: ParsableArguments {
    @Argument(help: "The entry's key, for example Student.")
    var key: String

    @Argument(help: "The entry's identity, for example 12 or alice.")
    var identity: String

    @Option(name: .long, help: "The hash the entry lives in (with --hash-id).")
    var hashKey: String?

    @Option(name: .long, help: "The hash's identity (with --hash-key).")
    var hashId: String?

    @Flag(name: .long, help: "Send identities as strings even when they look like integers.")
    var stringIdentity = false

    var parsedIdentity: Identity { Identity.parse(identity, forceString: stringIdentity) }
    var parsedHashId: Identity? { hashId.map { Identity.parse($0, forceString: stringIdentity) } }
}

// MARK: - Subcommands

struct Ping: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Check that the daemon answers.")
    @OptionGroup var global: GlobalOptions

    func run() async throws {
        try await global.run { client in
            let result = try await client.send(.ping)
            if global.json { global.printJSON(result) } else { print(result.stringValue ?? "\(result)") }
        }
    }
}

struct Get: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print an entry's value (raw bytes, no newline added); exit status 1 on a miss. A stale value is noted on stderr.",
        discussion: "A miss never takes a lease and never waits for another client's fill (\"lease\": false); a key with a sync handler is still filled by the daemon.")
    @OptionGroup var global: GlobalOptions
    @OptionGroup var entry: EntryOptions

    func run() async throws {
        var found = true
        try await global.run { client in
            let result = try await client.send(
                .get(key: entry.key, identity: entry.parsedIdentity, hashKey: entry.hashKey, hashId: entry.parsedHashId, lease: false))
            let answer = try GetResult(json: result)
            found = answer.value != nil
            if global.json {
                global.printJSON(result)
            } else if let value = answer.value {
                writeStdout(value)
                if answer.stale { printError("note: the value is stale (past its key's ttl; a refresh is under way or failed)") }
            }
        }
        if !found { throw ExitCode(1) }
    }
}

struct Set: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Store a value (VALUE '-' reads standard input).")
    @OptionGroup var global: GlobalOptions
    @OptionGroup var entry: EntryOptions

    @Argument(help: "The value; '-' reads it from standard input.")
    var value: String

    @Option(name: .long, help: "Time to live in seconds (0: no expiry; default: the key's configured ttl).")
    var ttl: Double?

    @Flag(name: .long, help: "VALUE is base64 (for binary values).")
    var base64 = false

    func validate() throws {
        if let ttl, !(ttl.isFinite && ttl >= 0) { throw ValidationError("--ttl must be a number of seconds >= 0") }
    }

    func run() async throws {
        var bytes: [UInt8] = value == "-" ? readStandardInput() : Array(value.utf8)
        if base64 {
            guard let decoded = Data(base64Encoded: String(decoding: bytes, as: UTF8.self).trimmingWhitespace()) else {
                throw ValidationError("VALUE is not valid base64")
            }
            bytes = Array(decoded)
        }
        try await global.run { client in
            let result = try await client.send(
                .set(
                    key: entry.key, identity: entry.parsedIdentity, hashKey: entry.hashKey, hashId: entry.parsedHashId,
                    value: bytes, ttl: ttl))
            if global.json {
                global.printJSON(result)
            } else {
                print(result.objectValue?["stored"] == .bool(true) ? "stored" : "not stored")
            }
        }
    }
}

struct Delete: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Delete an entry; prints how many were deleted.")
    @OptionGroup var global: GlobalOptions
    @OptionGroup var entry: EntryOptions

    func run() async throws {
        try await global.run { client in
            let result = try await client.send(
                .delete(key: entry.key, identity: entry.parsedIdentity, hashKey: entry.hashKey, hashId: entry.parsedHashId))
            printCount(result, global: global)
        }
    }
}

struct DeleteHash: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "delete-hash", abstract: "Delete a whole hash; prints how many were deleted.")
    @OptionGroup var global: GlobalOptions

    @Argument(help: "The hash's key, for example Class.")
    var hashKey: String

    @Argument(help: "The hash's identity, for example 3.")
    var hashId: String

    @Flag(name: .long, help: "Send the hash id as a string even when it looks like an integer.")
    var stringIdentity = false

    func run() async throws {
        try await global.run { client in
            let result = try await client.send(
                .deleteHash(hashKey: hashKey, hashId: Identity.parse(hashId, forceString: stringIdentity)))
            printCount(result, global: global)
        }
    }
}

struct Stats: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print the daemon's counters.",
        discussion: "With --watch, one line a second until interrupted, like redis-cli --stat: requests/s, hit ratio, handler flights/s, stale answers/s, connections, the store's state.")
    @OptionGroup var global: GlobalOptions
    @Flag(help: "Print one line a second (rates over the last second).") var watch = false

    func run() async throws {
        if watch {
            try await global.run { client in try await Self.watch(client) }
            return
        }
        try await global.run { client in
            let result = try await client.send(.stats)
            if global.json {
                global.printJSON(result)
            } else {
                var text = ""
                prettyPrint(result, indent: "", into: &text)
                print(text)
            }
        }
    }
}

extension Stats {
    /// One line a second: the rates since the previous line, and the current state.
    static func watch(_ client: CachedClient) async throws {
        var previous: JSONValue?
        var line = 0
        while !Task.isCancelled {
            let now = try await client.send(.stats)
            if let previous {
                if line % 20 == 0 {
                    writeStdout(ByteBuffer(string: "requests/s  hit ratio  fills/s  stale/s  get p99  connections  store\n"))
                }
                line += 1
                let requests = number(now, "requests") - number(previous, "requests")
                let hits = number(now, "methods", "get", "hits") - number(previous, "methods", "get", "hits")
                let misses = number(now, "methods", "get", "misses") - number(previous, "methods", "get", "misses")
                let fills = number(now, "fills", "flights") - number(previous, "fills", "flights")
                let stale = number(now, "fleet", "staleAnswers") - number(previous, "fleet", "staleAnswers")
                let ratio = hits + misses > 0 ? "\(Int((1000 * hits / (hits + misses)).rounded()) / 10).\(Int((1000 * hits / (hits + misses)).rounded()) % 10)%" : "-"
                let store = now.objectValue?["store"]?.objectValue
                let state = (store?["available"] == .bool(true) ? "up" : "DOWN") + " (" + (store?["kind"]?.stringValue ?? "?") + ")"
                // Unbuffered: a line a second, also into a pipe.
                writeStdout(ByteBuffer(string:
                    pad(Int(requests), 10) + "  " + pad(ratio, 9) + "  " + pad(Int(fills), 7) + "  " + pad(Int(stale), 7) + "  "
                        + pad(getP99(now, previous), 7) + "  " + pad(Int(number(now, "connections", "current")), 11) + "  " + state + "\n"))
            }
            previous = now
            try await Task.sleep(for: .seconds(1))
        }
    }

    /// The 99th percentile of the gets answered since `previous` (every source: memory, Redis, fills,
    /// errors), as the upper bound of its latency bucket; `-` when there were none.
    static func getP99(_ now: JSONValue, _ previous: JSONValue) -> String {
        guard case .array(let bounds)? = now.objectValue?["latencyBuckets"] else { return "-" }
        func counts(_ stats: JSONValue) -> [Double] {
            var sum = [Double](repeating: 0, count: bounds.count + 1)
            for (_, source) in stats.objectValue?["latency"]?.objectValue?["get"]?.objectValue ?? [:] {
                guard case .array(let buckets)? = source.objectValue?["buckets"] else { continue }
                for (i, b) in buckets.enumerated() where i < sum.count {
                    if case .number(let text) = b { sum[i] += Double(text) ?? 0 }
                }
            }
            return sum
        }
        let delta = zip(counts(now), counts(previous)).map { $0 - $1 }
        let total = delta.reduce(0, +)
        guard total > 0 else { return "-" }
        var seen = 0.0
        for (i, n) in delta.enumerated() {
            seen += n
            guard seen >= (0.99 * total).rounded(.up) else { continue }
            guard i < bounds.count, case .number(let text) = bounds[i], let seconds = Double(text) else { return ">10s" }
            return seconds < 0.001 ? "\(Int((seconds * 1e6).rounded()))us" : seconds < 1 ? "\(Double(Int(seconds * 1e4)) / 10)ms" : "\(seconds)s"
        }
        return "-"
    }

    /// `value` right-aligned in `width` columns.
    static func pad(_ value: some CustomStringConvertible, _ width: Int) -> String {
        let text = value.description
        return String(repeating: " ", count: max(0, width - text.count)) + text
    }

    /// A number at `path` in a `stats` result (0 when absent).
    static func number(_ value: JSONValue, _ path: String...) -> Double {
        var current: JSONValue? = value
        for name in path { current = current?.objectValue?[name] }
        if case .number(let text)? = current { return Double(text) ?? 0 }
        return 0
    }
}

// MARK: - Output helpers

func printCount(_ result: JSONValue, global: GlobalOptions) {
    if global.json {
        global.printJSON(result)
    } else if case .number(let n)? = result.objectValue?["deleted"] {
        print(n)
    } else {
        global.printJSON(result)
    }
}

/// Indented `name: value` lines for humans.
func prettyPrint(_ value: JSONValue, indent: String, into text: inout String) {
    switch value {
    case .object(let members):
        for (i, name) in members.keys.sorted().enumerated() {
            if i > 0 || !indent.isEmpty { text += "\n" }
            let member = members[name]!
            text += indent + name + ":"
            switch member {
            case .object(let inner) where !inner.isEmpty:
                prettyPrint(member, indent: indent + "  ", into: &text)
            default:
                text += " "
                prettyPrint(member, indent: indent + "  ", into: &text)
            }
        }
    case .string(let s):
        text += s
    default:
        var buffer = ByteBuffer()
        buffer.writeJSONValue(value)
        text += String(buffer: buffer)
    }
}

func writeStdout(_ buffer: ByteBuffer) {
    buffer.withUnsafeReadableBytes { bytes in
        var offset = 0
        while offset < bytes.count {
            let n = write(1, bytes.baseAddress! + offset, bytes.count - offset)
            if n < 0 {
                if errno == EINTR { continue }
                return
            }
            offset += n
        }
    }
}

func printError(_ message: String) {
    var buffer = ByteBuffer(string: "cachectl: \(message)\n")
    buffer.withUnsafeReadableBytes { _ = write(2, $0.baseAddress, $0.count) }
    buffer.clear()
}

func readStandardInput() -> [UInt8] {
    var result: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = chunk.withUnsafeMutableBytes { read(0, $0.baseAddress, $0.count) }
        if n > 0 {
            result.append(contentsOf: chunk[..<n])
        } else if n < 0 && errno == EINTR {
            continue
        } else {
            return result
        }
    }
}

extension String {
    func trimmingWhitespace() -> String {
        String(self.filter { !$0.isWhitespace })
    }
}
