/// The `timeout` every method takes: how many seconds the caller waits for its answer.
///
/// The daemon fixes the request's deadline when it reads the line (the read time plus this, or plus its
/// `[limits] request_timeout` when the request names none) and answers -32009
/// (``CachedError/Code/deadlineExceeded``) at that deadline, never later.
public enum RequestTimeout {
    /// The parameter's name.
    public static let name = "timeout"
    /// The longest timeout a request may name (a day).
    public static let maximum: Double = 86_400

    /// The `timeout` of a request's `params`, validated: a number of seconds, greater than 0, at most
    /// ``maximum``; nil when absent (or `null`). -32602 for anything else.
    public static func read(_ params: JSONValue?, method: String) throws(CachedError) -> Double? {
        guard case .object(let members)? = params, let index = members.index(forKey: name) else { return nil }
        let (spelled, value) = members[index]
        guard spelled.utf8.elementsEqual(name.utf8), value != .null else { return nil }
        guard case .number(let raw) = value, let seconds = Double(raw) else {
            throw .invalidParams("\(method): \"timeout\" must be a number of seconds, got \(value.typeName)")
        }
        return try validate(seconds, method: method)
    }

    /// Checks a timeout read elsewhere (the fast get path): greater than 0 and at most ``maximum``.
    public static func validate(_ seconds: Double, method: String) throws(CachedError) -> Double {
        guard seconds.isFinite, seconds > 0, seconds <= maximum else {
            throw .invalidParams("\(method): \"timeout\" must be a number of seconds greater than 0 and at most \(Int(maximum))")
        }
        return seconds
    }
}
