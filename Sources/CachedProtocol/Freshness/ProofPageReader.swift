import Atomics
import NIOCore

#if canImport(Glibc)
import Glibc
#endif

/// A daemon's proof page (docs/protocol.md, `track`), mapped read-only: the instant up to which the daemon
/// vouches for every notification it owed this client, in `CLOCK_MONOTONIC` nanoseconds.
///
/// Layout, little-endian: bytes 0-7 `CACHEDPF`, 8-11 the version (1), 16-23 the instant (0: none), 24-31
/// the daemon's `max_staleness` in nanoseconds.
public final class ProofPageReader: @unchecked Sendable {
    /// `@unchecked`: the mapping is read only through an atomic load, and unmapped in `deinit`.
    public static let size = 4096
    public let path: String
    private let base: UnsafeMutableRawPointer
    private let instant: UnsafeAtomic<UInt64>

    /// Maps `path`; nil when it cannot be opened or is not a proof page.
    public init?(path: String) {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        guard let mapped = mmap(nil, Self.size, PROT_READ, MAP_SHARED, fd, 0), mapped != MAP_FAILED else { return nil }
        let magic = Array("CACHEDPF".utf8)
        let matches = (0..<8).allSatisfy { mapped.load(fromByteOffset: $0, as: UInt8.self) == magic[$0] }
        guard matches, UInt32(littleEndian: mapped.load(fromByteOffset: 8, as: UInt32.self)) == 1 else {
            munmap(mapped, Self.size)
            return nil
        }
        self.path = path
        self.base = mapped
        // An atomic load writes nothing: the read-only mapping is fine for it.
        self.instant = UnsafeAtomic(at: (mapped + 16).assumingMemoryBound(to: UInt64.AtomicRepresentation.self))
    }

    deinit {
        munmap(base, Self.size)
    }

    /// The proof instant (0: none).
    @inline(__always)
    public var provenAt: UInt64 { UInt64(littleEndian: instant.load(ordering: .acquiring)) }

    /// Whether the proof is at most `bound` nanoseconds old at `now` (a value from the future is refused).
    @inline(__always)
    public func isFresh(now: NIODeadline, bound: UInt64) -> Bool {
        let at = provenAt
        let now = now.uptimeNanoseconds
        return at != 0 && at <= now && now - at <= bound
    }
}
