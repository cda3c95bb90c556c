/// Sent to every connection when shutdown's drain deadline passes: requests still running are
/// answered -32007 and the connection closes.
struct DrainDeadlineEvent: Sendable {}
