import CSystemd
import Logging
import NIOCore

#if canImport(Glibc)
import Glibc
#endif

/// What `cached` needs from systemd: socket activation and the notification protocol (libsystemd).
public enum Systemd {
    /// A socket passed by systemd that `cached` cannot serve.
    public struct ActivationError: Error, CustomStringConvertible {
        public var description: String
    }

    /// The listening socket passed by systemd (`LISTEN_FDS`), or nil when not socket-activated.
    ///
    /// Clears `LISTEN_FDS`/`LISTEN_PID`/`LISTEN_FDNAMES` so worker processes do not inherit them, and
    /// checks that exactly one descriptor was passed and that it is a listening Unix stream socket.
    public static func adoptListeningSocket() throws(ActivationError) -> CInt? {
        let count = sd_listen_fds(1)
        if count < 0 { throw ActivationError(description: "sd_listen_fds failed: \(String(cString: strerror(-count)))") }
        if count == 0 { return nil }
        guard count == 1 else {
            throw ActivationError(description: "systemd passed \(count) sockets; cached serves exactly one (one ListenStream= in cached.socket)")
        }
        let fd = cached_sd_listen_fds_start()
        guard sd_is_socket_unix(fd, CInt(SOCK_STREAM.rawValue), 1, nil, 0) > 0 else {
            throw ActivationError(description: "the socket passed by systemd is not a listening Unix stream socket")
        }
        return fd
    }

    /// Sends a notification (`READY=1`, `STATUS=...`, `STOPPING=1`, `WATCHDOG=1`, `RELOADING=1`)
    /// when `NOTIFY_SOCKET` is set; does nothing otherwise.
    public static func notify(_ state: String) {
        _ = sd_notify(0, state)
    }

    /// Whether systemd (or a test) listens for notifications.
    public static var notificationsEnabled: Bool {
        getenv("NOTIFY_SOCKET") != nil
    }

    /// The watchdog interval requested with `WatchdogSec=` (`WATCHDOG_USEC`), or nil.
    public static var watchdogInterval: TimeAmount? {
        var usec: UInt64 = 0
        guard sd_watchdog_enabled(0, &usec) > 0, usec > 0 else { return nil }
        return .microseconds(Int64(usec))
    }
}
