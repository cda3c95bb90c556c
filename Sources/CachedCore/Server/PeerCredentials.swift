import NIOCore

#if canImport(Glibc)
import Glibc
#endif

/// The peer of a Unix socket connection, from `SO_PEERCRED` (the kernel's `struct ucred`).
public struct PeerCredentials: Sendable, Hashable, CustomStringConvertible {
    public var pid: Int32
    public var uid: UInt32
    public var gid: UInt32

    public var description: String { "pid \(pid) uid \(uid) gid \(gid)" }

    /// Reads the peer's credentials of a connected Unix socket channel.
    static func of(_ channel: any Channel) -> EventLoopFuture<PeerCredentials> {
        guard let provider = channel as? any SocketOptionProvider else {
            return channel.eventLoop.makeFailedFuture(ChannelError.operationUnsupported)
        }
        return provider.unsafeGetSocketOption(
            level: NIOBSDSocket.OptionLevel(rawValue: SOL_SOCKET), name: NIOBSDSocket.Option(rawValue: SO_PEERCRED)
        ) as EventLoopFuture<PeerCredentials>
    }
}

/// Who may connect: `allow_uids` and `allow_groups`.
struct ConnectionGate: Sendable {
    var uids: Set<UInt32>?
    var gids: Set<UInt32>?

    init(configuration: DaemonConfiguration) {
        uids = configuration.live.allowUIDs.map(Set.init)
        gids = configuration.live.allowGroups.map { names in Set(names.compactMap(Self.groupID(_:))) }
    }

    var isRestricted: Bool { uids != nil || gids != nil }

    func allows(_ peer: PeerCredentials) -> Bool {
        if peer.uid == getuid() { return true }  // the daemon's own user (its tools, its tests)
        if let uids, uids.contains(peer.uid) { return true }
        if let gids {
            if gids.contains(peer.gid) { return true }
            if !gids.isDisjoint(with: Self.groups(ofUID: peer.uid, primary: peer.gid)) { return true }
        }
        return false
    }

    /// A group name or number as a gid.
    static func groupID(_ name: String) -> UInt32? {
        if let n = UInt32(name) { return n }
        guard let entry = getgrnam(name) else { return nil }
        return entry.pointee.gr_gid
    }

    /// The supplementary groups of a user.
    static func groups(ofUID uid: UInt32, primary: UInt32) -> Set<UInt32> {
        var pwd = passwd()
        var result: UnsafeMutablePointer<passwd>?
        var buffer = [CChar](repeating: 0, count: 4096)
        guard getpwuid_r(uid, &pwd, &buffer, buffer.count, &result) == 0, result != nil, let name = pwd.pw_name else { return [] }
        var count: Int32 = 64
        var groups = [gid_t](repeating: 0, count: Int(count))
        if getgrouplist(name, primary, &groups, &count) < 0 {
            groups = [gid_t](repeating: 0, count: Int(count))
            guard getgrouplist(name, primary, &groups, &count) >= 0 else { return [] }
        }
        return Set(groups.prefix(Int(count)))
    }
}
