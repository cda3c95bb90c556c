import CachedProtocol
import CachedTestSupport
import Foundation
import NIOCore
import NIOPosix
import Testing

@testable import CachedRedis

/// The premise of announcing a listener only after Redis confirmed its `SUBSCRIBE`, pinned against a real
/// `redis-server`: an invalidation for a RESP2 connection whose tracking redirects to a client that has not
/// subscribed yet is dropped by Redis, never sent, not even once the client subscribes; so a data connection
/// redirected to a listener whose `SUBSCRIBE` is still on its way (a lossy path) reads keys no invalidation
/// will ever name, while the listener's heartbeats go on proving it.
@Suite("Listener subscription order (real Redis)", .serialized)
struct SubscriptionOrderTests {
    let redis: RedisServer
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)

    init() throws {
        redis = try RedisServer()
    }

    /// A connection that learnt its client id and is to become a listener, and the keys it was told of.
    struct Listener {
        let connection: RedisConnection
        let id: Int64
        let events = EventLog()
    }

    func listener() async throws -> Listener {
        let configuration = try RedisConfiguration(url: redis.unixURL)
        let connection = try await RedisConnection.connect(configuration: configuration, eventLoop: group.next()).get()
        guard case .integer(let id) = try await connection.send(RedisCommand("CLIENT", "ID")).get() else {
            throw RedisClientError(.protocolError, "CLIENT ID")
        }
        return Listener(connection: connection, id: id)
    }

    /// Swaps the command handler for the subscription handler (which sends the `SUBSCRIBE`) and waits for
    /// Redis's confirmation, then for an answered heartbeat sent after it.
    func subscribe(_ listener: Listener) async throws {
        let channel = listener.connection.channel
        let proof = ProofClock()
        let subscribed = channel.eventLoop.makePromise(of: Void.self)
        let events = listener.events
        try await channel.eventLoop.flatSubmit {
            let sync = channel.pipeline.syncOperations
            do {
                let handler = try sync.handler(type: RedisCommandHandler.self)
                return sync.removeHandler(handler).flatMapThrowing {
                    try channel.pipeline.syncOperations.addHandler(
                        RedisSubscriptionHandler(
                            proof: proof, heartbeat: .milliseconds(20), timeout: .seconds(5), subscribed: subscribed
                        ) { events.append($0) })
                }
            } catch {
                return channel.eventLoop.makeFailedFuture(error)
            }
        }.get()
        try await subscribed.futureResult.get()
        let confirmed = NIODeadline.now().uptimeNanoseconds
        for _ in 0..<250 where proof.provenAt <= confirmed {
            try await Task.sleep(for: .milliseconds(20))
        }
        #expect(proof.provenAt > confirmed, "a heartbeat sent after the confirmation was answered")
    }

    /// Tracks `key` on a new data connection redirected to `listener`, then changes it from another one.
    func readThenChange(_ key: String, redirectTo listener: Listener) async throws {
        let configuration = try RedisConfiguration(url: redis.unixURL)
        let data = try await RedisConnection.connect(configuration: configuration, eventLoop: group.next()).get()
        let writer = try await RedisConnection.connect(configuration: configuration, eventLoop: group.next()).get()
        let tracking = try await data.send(RedisCommand("CLIENT", "TRACKING", "on", "REDIRECT", .string(String(listener.id)))).get()
        guard case .status = tracking else { throw RedisClientError(.errorReply, "CLIENT TRACKING: \(tracking)") }
        _ = try await writer.send(RedisCommand("SET", .string(key), "old")).get()
        _ = try await data.send(RedisCommand("GET", .string(key))).get()
        _ = try await writer.send(RedisCommand("SET", .string(key), "new")).get()
        _ = data.close()
        _ = writer.close()
    }

    @Test func anInvalidationBeforeTheListenerSubscribedIsNeverSent() async throws {
        defer { redis.stop() }
        let early = try await listener()
        try await readThenChange("k-early", redirectTo: early)
        try await subscribe(early)
        // Answered heartbeats after the subscription prove that nothing for the key is on its way.
        #expect(early.events.keys.isEmpty)

        let ready = try await listener()
        try await subscribe(ready)
        try await readThenChange("k-ready", redirectTo: ready)
        for _ in 0..<250 where ready.events.keys.isEmpty {
            try await Task.sleep(for: .milliseconds(20))
        }
        #expect(ready.events.keys == [["k-ready"]])
        _ = early.connection.close()
        _ = ready.connection.close()
        try await group.shutdownGracefully()
    }
}
