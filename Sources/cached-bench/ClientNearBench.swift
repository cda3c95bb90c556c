import CachedClient
import CachedProtocol
import NIOConcurrencyHelpers

#if canImport(Glibc)
import Glibc
#endif

/// `--client-near N`: the Swift client's `get` of one stored entry, sequential calls, without and with its
/// near cache (`CachedClient(nearCache: N)`), in microseconds per call (median of 5 rounds).
struct ClientNearBench {
    var socket: String
    var key: String
    var capacity: Int
    var calls: Int
    var json: Bool

    func run() throws {
        let outcome = NIOLockedValueBox<Result<(plain: [Double], near: [Double], hits: Bool), any Error>?>(nil)
        let done = ConditionLock(value: false)
        let (socket, key, capacity, calls) = (self.socket, self.key, self.capacity, self.calls)
        Task {
            let result: Result<(plain: [Double], near: [Double], hits: Bool), any Error>
            do {
                let writer = CachedClient(socketPath: socket)
                try await writer.set(key: key, identity: 0, value: "near-bench", ttl: 300)
                let plain = try await Self.rounds(CachedClient(socketPath: socket), key: key, calls: calls)
                let nearClient = CachedClient(socketPath: socket, nearCache: capacity)
                let near = try await Self.rounds(nearClient, key: key, calls: calls)
                let hits = try await nearClient.get(key: key, identity: 0).string == "near-bench"
                await writer.close()
                await nearClient.close()
                result = .success((plain, near, hits))
            } catch {
                result = .failure(error)
            }
            outcome.withLockedValue { $0 = result }
            done.lock()
            done.unlock(withValue: true)
        }
        done.lock(whenValue: true)
        done.unlock()
        let (plain, near, hits) = try outcome.withLockedValue { $0! }.get()
        func median(_ xs: [Double]) -> Double { xs.sorted()[xs.count / 2] }
        if json {
            print(#"{"plainMicros":\#(median(plain)),"nearMicros":\#(median(near)),"nearBestMicros":\#(near.min()!),"calls":\#(calls),"correct":\#(hits)}"#)
        } else {
            print("Swift client get of one entry: plain \(median(plain)) us, nearCache \(median(near)) us per call (\(calls) calls a round)")
        }
    }

    /// Warms the entry up (the daemon's local copy, then the near cache), then 5 timed rounds.
    static func rounds(_ client: CachedClient, key: String, calls: Int) async throws -> [Double] {
        for _ in 0..<3 { _ = try await client.get(key: key, identity: 0) }
        var result: [Double] = []
        for _ in 0..<5 {
            let start = monotonicNanos()
            for _ in 0..<calls { _ = try await client.get(key: key, identity: 0) }
            result.append(Double(monotonicNanos() - start) / Double(calls) / 1000)
        }
        return result
    }
}
