import ArgumentParser
import CachedProtocol
import Histogram
import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#endif

extension Mix: ExpressibleByArgument {
    init?(argument: String) { self.init(parsing: argument) }
}

/// The `redis-benchmark` of cached: many connections over the Unix socket, each keeping a number of
/// JSON-RPC requests in flight, latency of every request in an HDR histogram.
@main
struct CachedBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cached-bench",
        abstract: "Load generator for the cached daemon (requests/s and latency percentiles).",
        discussion: """
            Mixes: get-hit (gets of identities 0..<keyspace; use --warmup to store them first), \
            get-miss (gets of identities never used before: use a --key configured with a handler), \
            set, or weighted, e.g. get-hit:90,set:10.
            """)

    @Option(help: "The daemon's Unix socket.")
    var socket: String = "/run/cached/cached.sock"

    @Option(name: [.customShort("c"), .long], help: "Connections.")
    var connections: Int = 50

    @Option(name: [.customShort("n"), .long], help: "Total requests (split over the connections).")
    var requests: Int = 100_000

    @Option(name: [.customShort("P"), .long], help: "Requests in flight per connection.")
    var pipeline: Int = 1

    @Option(help: "Operations, optionally weighted: get-hit, get-miss, set, or e.g. get-hit:90,set:10.")
    var mix: Mix = Mix(entries: [.init(operation: .getHit, weight: 1)])

    @Option(help: "Identities 0..<N for get-hit and set.")
    var keyspace: Int = 10_000

    @Option(name: .customLong("value-size"), help: "Bytes per value written by set and --warmup.")
    var valueSize: Int = 100

    @Option(help: "The key name (for get-miss, a key configured with a handler).")
    var key: String = "Bench"

    @Flag(help: "Store every identity of the keyspace first (not measured); get-hit then checks value sizes.")
    var warmup = false

    @Flag(help: "Print one JSON object instead of text.")
    var json = false

    @Option(help: "Event-loop threads of the client.")
    var threads: Int = 1

    @Option(help: "Give up after this many seconds (per phase).")
    var timeout: Int = 300

    @Option(
        name: .customLong("client-near"),
        help: "Measure the Swift client instead: -n sequential gets of one stored entry through CachedClient, without and with nearCache: N; microseconds per call.")
    var clientNear: Int?

    mutating func validate() throws {
        guard connections >= 1 else { throw ValidationError("-c must be at least 1") }
        guard requests >= 0 else { throw ValidationError("-n must not be negative") }
        guard pipeline >= 1 else { throw ValidationError("-P must be at least 1") }
        guard keyspace >= 1 else { throw ValidationError("--keyspace must be at least 1") }
        guard valueSize >= 0 else { throw ValidationError("--value-size must not be negative") }
        guard threads >= 1 else { throw ValidationError("--threads must be at least 1") }
        do { try KeyLayout.validateKey(key) } catch { throw ValidationError("--key: \(error.message)") }
    }

    func run() throws {
        if let clientNear {
            try ClientNearBench(socket: socket, key: key, capacity: clientNear, calls: max(1, requests), json: json).run()
            return
        }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: threads)
        defer { try? group.syncShutdownGracefully() }
        let encoder = RequestEncoder(key: key, valueSize: valueSize)
        let seedBase = UInt64(truncatingIfNeeded: monotonicNanos()) ^ UInt64(UInt32(bitPattern: getpid()))

        var warmupSeconds: Double?
        if warmup {
            let c = min(connections, keyspace)
            var plans: [ConnectionPlan] = []
            for i in 0..<c {
                let count = (keyspace - i + c - 1) / c
                plans.append(
                    ConnectionPlan(
                        index: i, requests: count, pipeline: max(16, pipeline),
                        mix: Mix(entries: [.init(operation: .set, weight: 1)]),
                        identities: .sequence(first: Int64(i), stride: Int64(c)), missBase: 0, encoder: encoder,
                        expectedValueSize: nil, seed: seedBase &+ UInt64(i), timeoutSeconds: Int64(timeout)))
            }
            let r = try runPhase(group: group, plans: plans)
            if let failure = r.failure { throw BenchFailure("warm-up failed: \(failure)") }
            if r.stored != keyspace {
                throw BenchFailure("warm-up stored \(r.stored) of \(keyspace) entries; first problem: \(r.firstProblem ?? "-")")
            }
            warmupSeconds = Double(r.endNanos - r.startNanos) / 1e9
        }

        // get-miss identities: a range no earlier run used (wall clock in microseconds, times 1000).
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        let missEpoch = (Int64(now.tv_sec) * 1_000_000 + Int64(now.tv_nsec) / 1000) * 1000
        let perConnection = requests / connections
        let remainder = requests % connections
        var plans: [ConnectionPlan] = []
        for i in 0..<connections {
            plans.append(
                ConnectionPlan(
                    index: i, requests: perConnection + (i < remainder ? 1 : 0), pipeline: pipeline, mix: mix,
                    identities: .random(keyspace: Int64(keyspace)), missBase: missEpoch + Int64(i) * Int64(perConnection + 1),
                    encoder: encoder, expectedValueSize: warmup ? valueSize : nil, seed: seedBase &+ 7919 &* UInt64(i + 1),
                    timeoutSeconds: Int64(timeout)))
        }
        let result = try runPhase(group: group, plans: plans)
        let report = Report(
            mix: mix.description, connections: connections, pipeline: pipeline, requested: requests, keyspace: keyspace,
            valueSize: valueSize, key: key, threads: threads, warmupSeconds: warmupSeconds, result: result)
        print(json ? report.json() : report.text())
        if result.failure != nil { throw ExitCode(1) }
    }

    /// Connects every planned connection, starts them together, waits for all of them.
    func runPhase(group: MultiThreadedEventLoopGroup, plans: [ConnectionPlan]) throws -> ConnectionResult {
        var channels: [any Channel] = []
        var futures: [EventLoopFuture<ConnectionResult>] = []
        defer {
            for channel in channels { channel.close(promise: nil) }
        }
        for plan in plans {
            let promise = group.any().makePromise(of: ConnectionResult.self)
            let bootstrap = ClientBootstrap(group: group)
                .connectTimeout(.seconds(10))
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(BenchConnection(plan: plan, done: promise))
                    }
                }
            let channel: any Channel
            do {
                channel = try bootstrap.connect(unixDomainSocketPath: socket).wait()
            } catch {
                promise.fail(error)
                throw BenchFailure("cannot connect to \(socket): \(error)")
            }
            channels.append(channel)
            futures.append(promise.futureResult)
        }
        for channel in channels {
            channel.eventLoop.execute {
                if let handler = try? channel.pipeline.syncOperations.handler(type: BenchConnection.self) {
                    handler.start()
                }
            }
        }
        var total = ConnectionResult()
        for future in futures {
            total.merge(try future.wait())
        }
        return total
    }
}

struct BenchFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
