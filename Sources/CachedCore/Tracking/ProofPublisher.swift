import Atomics
import CachedProtocol
import Logging
import NIOConcurrencyHelpers
import NIOCore

#if canImport(Glibc)
import Glibc
#endif

/// The proof page: one page of shared memory (a file the daemon maps read-write and near caches map
/// read-only) holding the instant up to which the daemon vouches for what it told its tracking clients.
///
/// Layout, little-endian: bytes 0-7 `CACHEDPF`, 8-11 the version (1), 16-23 the proof instant in
/// `CLOCK_MONOTONIC` nanoseconds (0: none yet), 24-31 `max_staleness` in nanoseconds. The instant is stored
/// with one aligned atomic 8-byte write. The page is made under a temporary name and renamed into place, so
/// a client never maps a half-made page, and a client still mapping a restarted daemon's old page sees its
/// instant stop and its near hits lapse.
final class ProofPage: @unchecked Sendable {
    /// `@unchecked`: `base` is written only through `instant`'s atomic store, and unmapped only after the
    /// publisher stopped.
    static let size = 4096
    let path: String
    private let base: UnsafeMutableRawPointer
    private let instant: UnsafeAtomic<UInt64>

    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    init(path: String, maxStaleness: TimeAmount) throws(Failure) {
        self.path = path
        let temporary = "\(path).\(getpid()).tmp"
        unlink(temporary)
        let fd = open(temporary, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw Failure(description: "cannot create \(temporary): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        fchmod(fd, 0o644)  // whatever the umask: every client that may connect may read it
        guard ftruncate(fd, off_t(Self.size)) == 0,
            let mapped = mmap(nil, Self.size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), mapped != MAP_FAILED
        else {
            let reason = String(cString: strerror(errno))
            unlink(temporary)
            throw Failure(description: "cannot map \(temporary): \(reason)")
        }
        base = mapped
        let magic: [UInt8] = Array("CACHEDPF".utf8)
        for (i, byte) in magic.enumerated() { base.storeBytes(of: byte, toByteOffset: i, as: UInt8.self) }
        base.storeBytes(of: UInt32(1).littleEndian, toByteOffset: 8, as: UInt32.self)
        base.storeBytes(of: UInt64(max(0, maxStaleness.nanoseconds)).littleEndian, toByteOffset: 24, as: UInt64.self)
        instant = UnsafeAtomic(at: (base + 16).assumingMemoryBound(to: UInt64.AtomicRepresentation.self))
        instant.store(0, ordering: .releasing)
        guard rename(temporary, path) == 0 else {
            let reason = String(cString: strerror(errno))
            munmap(base, Self.size)
            unlink(temporary)
            throw Failure(description: "cannot put the proof page at \(path): \(reason)")
        }
    }

    /// Publishes `proof`.
    func publish(_ proof: NIODeadline) {
        instant.store(proof.uptimeNanoseconds.littleEndian, ordering: .releasing)
    }

    var published: UInt64 { UInt64(littleEndian: instant.load(ordering: .acquiring)) }

    /// Stops vouching (0), unmaps, and removes the file.
    func retire() {
        instant.store(0, ordering: .releasing)
        munmap(base, Self.size)
        unlink(path)
    }
}

/// Chains the daemon's proof to the near caches of its tracking clients (docs/reliability.md).
///
/// On every beat it asks the store for the instant before which every change of an entry held in memory
/// has been applied and told to the change observer (``CacheStore/proveFreshness(now:)``, which also drops
/// entries whose proof lapsed), then waits until every event loop has run what was queued on it before (so
/// every notification those changes caused has reached its socket), and only then writes the instant into
/// the proof page; a notification still waiting for a slow client's socket holds the page back. A near cache
/// reads the instant, then drains its socket, then serves a hit only if the instant is at most
/// `max_staleness` old. A stalled daemon stops the instant, so its clients' near hits lapse by themselves:
/// nothing is sent to a client, and an idle client is never woken.
final class ProofPublisher: Sendable {
    private let page: ProofPage?
    private let store: any CacheStore
    private let tracking: ClientTracking
    private let loops: [any EventLoop]
    private let interval: TimeAmount
    let maxStaleness: TimeAmount
    private let state = NIOLockedValueBox(State())
    private let logger: Logger

    struct State {
        var task: RepeatedTask?
        var inFlight = false
        var beats = 0
        var published = 0
        var heldBack = 0
    }

    /// `path` nil: no page could be made (clients are told so and keep no near entries).
    init(
        path: String, maxStaleness: TimeAmount, interval: TimeAmount, store: any CacheStore, tracking: ClientTracking,
        group: any EventLoopGroup, logger: Logger
    ) {
        self.maxStaleness = maxStaleness
        self.interval = interval
        self.store = store
        self.tracking = tracking
        self.loops = Array(group.makeIterator())
        self.logger = logger
        do {
            page = try ProofPage(path: path, maxStaleness: maxStaleness)
        } catch {
            logger.error(
                "cannot make the proof page; near caches will keep nothing", metadata: ["path": "\(path)", "error": "\(error)"])
            page = nil
        }
    }

    /// The page's path, nil when it could not be made.
    var path: String? { page?.path }

    func start() {
        guard let loop = loops.first else { return }
        let task = loop.scheduleRepeatedTask(initialDelay: .zero, delay: interval) { [self] _ in beat() }
        state.withLockedValue { $0.task = task }
    }

    func stop() async {
        let task = state.withLockedValue { state -> RepeatedTask? in
            defer { state.task = nil }
            return state.task
        }
        if let task {
            let promise = loops[0].makePromise(of: Void.self)
            task.cancel(promise: promise)
            try? await promise.futureResult.get()
        }
        // A beat's barrier may still be on its way: the page goes on a loop, after it.
        try? await loops[0].submit { [page] in page?.retire() }.get()
    }

    private func beat() {
        let start = state.withLockedValue { state -> Bool in
            state.beats += 1
            guard !state.inFlight else { return false }
            state.inFlight = true
            return true
        }
        guard start else { return }
        let proof = store.proveFreshness(now: .now())
        guard tracking.isActive else {
            // No tracking connection when the proof was taken: no notification can be on its way, so there is
            // nothing to wait for. (A client that starts tracking later reads only entries that every
            // invalidation sent before `proof` had already removed.)
            page?.publish(proof)
            state.withLockedValue { state in
                state.inFlight = false
                state.published += 1
            }
            return
        }
        // Every loop runs what was queued before this (FIFO): the notifications the changes up to `proof`
        // caused are then in their sockets, or still waiting for a full one (then the page waits too).
        let barriers = loops.map { $0.submit {} }
        EventLoopFuture.andAllComplete(barriers, on: loops[0]).whenComplete { [self] _ in
            let written = tracking.allWritten
            let running = state.withLockedValue { state in
                state.inFlight = false
                if written { state.published += 1 } else { state.heldBack += 1 }
                return state.task != nil
            }
            if written && running { page?.publish(proof) }
        }
    }

    /// For `stats`.
    var status: JSONValue {
        let (beats, published, heldBack) = state.withLockedValue { ($0.beats, $0.published, $0.heldBack) }
        var members: [String: JSONValue] = [
            "path": page.map { .string($0.path) } ?? .null,
            "maxStaleness": .number(String(Double(maxStaleness.nanoseconds) / 1e9)),
            "beats": .number(String(beats)), "published": .number(String(published)), "heldBack": .number(String(heldBack)),
        ]
        if let page {
            let at = page.published
            let now = NIODeadline.now().uptimeNanoseconds
            members["age"] = at == 0 ? .null : .number(String(Double(now &- min(at, now)) / 1e9))
        }
        return .object(members)
    }
}
