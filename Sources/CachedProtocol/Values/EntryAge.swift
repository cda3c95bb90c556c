import NIOCore

/// Where an entry stands in its life, for keys with stale-while-revalidate, grace or early refresh
/// (`stale_ttl`, `grace`, `early_refresh_beta`).
///
/// An entry stored with `ttl` T and those settings lives `T + stale_ttl + grace` in Redis; its age is read
/// from Redis itself (`PTTL`) in the same round trip as its value, so the stored bytes stay plain.
public struct EntryAge: Sendable, Hashable {
    /// Until then the entry is fresh.
    public var freshUntil: NIODeadline
    /// Until then (after `freshUntil`) it is stale: answered at once with `"stale": true` while one
    /// background refresh runs.
    public var staleUntil: NIODeadline
    /// When Redis drops it (`staleUntil` + grace): in grace, a get waits for a refresh and gets the old
    /// value (stale) only if the refresh fails.
    public var expiresAt: NIODeadline
    /// The last fill's duration (Δ of XFetch), when known.
    public var delta: Duration?
    /// XFetch's β (0 = no early refresh).
    public var beta: Double

    public init(freshUntil: NIODeadline, staleUntil: NIODeadline, expiresAt: NIODeadline, delta: Duration?, beta: Double) {
        self.freshUntil = freshUntil
        self.staleUntil = staleUntil
        self.expiresAt = expiresAt
        self.delta = delta
        self.beta = beta
    }

    /// The phase at `now`.
    public enum Phase: Sendable, Equatable {
        case fresh, stale, grace, expired
    }

    public func phase(at now: NIODeadline) -> Phase {
        if now < freshUntil { return .fresh }
        if now < staleUntil { return .stale }
        if now < expiresAt { return .grace }
        return .expired
    }

    /// XFetch (Vattani, Chierichetti, Lowenstein, VLDB 2015): refresh early when
    /// `now − Δ·β·ln(u) ≥ expiry`, `u` uniform in (0, 1], `expiry` the end of freshness. The closer the
    /// expiry and the longer a fill takes, the likelier; with β = 1 the expected head start is about Δ.
    public func shouldRefreshEarly(at now: NIODeadline, random u: Double) -> Bool {
        guard beta > 0, let delta, delta > .zero, now < freshUntil else { return false }
        let deltaNanos = Double(delta.components.seconds) * 1e9 + Double(delta.components.attoseconds) / 1e9
        let headStart = -deltaNanos * beta * naturalLog(max(u, .leastNonzeroMagnitude))
        return Double(now.uptimeNanoseconds) + headStart >= Double(freshUntil.uptimeNanoseconds)
    }
}

#if canImport(Glibc)
import Glibc
@inline(__always) private func naturalLog(_ x: Double) -> Double { Glibc.log(x) }
#elseif canImport(Darwin)
import Darwin
@inline(__always) private func naturalLog(_ x: Double) -> Double { Darwin.log(x) }
#endif
