import NIOCore

/// Durations counted in fixed buckets, as a Prometheus histogram exposes them: a count per bucket, their
/// sum and their number. A value type with no lock and no allocation per observation: the owner keeps
/// one per event loop (or under a lock it already takes) and adds them up when read.
public struct LatencyHistogram: Sendable, Hashable {
    /// The buckets' upper bounds in nanoseconds (50 µs to 10 s), the Prometheus `le` labels.
    public static let boundsNanoseconds: [Int64] = [
        50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000, 5_000_000, 10_000_000, 25_000_000,
        50_000_000, 100_000_000, 250_000_000, 500_000_000, 1_000_000_000, 2_500_000_000, 5_000_000_000, 10_000_000_000,
    ]

    /// Per bucket (not cumulative); the last counts what is above every bound (`+Inf`).
    public private(set) var buckets: [Int]
    /// Observations.
    public private(set) var count = 0
    /// Their sum, in nanoseconds.
    public private(set) var sumNanoseconds: Int64 = 0

    public init() {
        buckets = [Int](repeating: 0, count: Self.boundsNanoseconds.count + 1)
    }

    /// Counts `times` observations of `nanoseconds` each (a batch of requests answered together).
    public mutating func observe(nanoseconds: Int64, times: Int = 1) {
        let value = max(0, nanoseconds)
        var index = 0
        // At most 17 comparisons; the first few settle the common, fast cases.
        while index < Self.boundsNanoseconds.count, value > Self.boundsNanoseconds[index] { index += 1 }
        buckets[index] += times
        count += times
        sumNanoseconds &+= value &* Int64(times)
    }

    /// Counts a duration.
    public mutating func observe(_ amount: TimeAmount) {
        observe(nanoseconds: amount.nanoseconds)
    }

    /// Adds another histogram's counts (summing per-loop shards).
    public mutating func add(_ other: LatencyHistogram) {
        for i in buckets.indices { buckets[i] += other.buckets[i] }
        count += other.count
        sumNanoseconds &+= other.sumNanoseconds
    }

    /// The upper bound (seconds) of the bucket holding the `q` quantile (0...1), nil when empty; a value
    /// in the `+Inf` bucket reports the last finite bound. Coarse (bucket resolution), for `stats --watch`.
    public func quantile(_ q: Double) -> Double? {
        guard count > 0 else { return nil }
        let rank = max(1, Int((q * Double(count)).rounded(.up)))
        var seen = 0
        for (i, n) in buckets.enumerated() {
            seen += n
            if seen >= rank { return Double(Self.boundsNanoseconds[min(i, Self.boundsNanoseconds.count - 1)]) / 1e9 }
        }
        return Double(Self.boundsNanoseconds.last!) / 1e9
    }
}
