import Histogram

/// The summary of one run, as text or as one JSON object.
struct Report {
    var mix: String
    var connections: Int
    var pipeline: Int
    var requested: Int
    var keyspace: Int
    var valueSize: Int
    var key: String
    var threads: Int
    var warmupSeconds: Double?
    var result: ConnectionResult

    var seconds: Double { result.endNanos > result.startNanos ? Double(result.endNanos - result.startNanos) / 1e9 : 0 }
    var requestsPerSecond: Double { seconds > 0 ? Double(result.completed) / seconds : 0 }

    /// A percentile in microseconds.
    func micros(_ percentile: Double) -> Double {
        result.histogram.totalCount == 0 ? 0 : Double(result.histogram.valueAtPercentile(percentile)) / 1000
    }

    var maxMicros: Double { result.histogram.totalCount == 0 ? 0 : Double(result.histogram.max) / 1000 }
    var meanMicros: Double { result.histogram.totalCount == 0 ? 0 : result.histogram.mean / 1000 }

    func text() -> String {
        var lines: [String] = []
        lines.append(
            "cached-bench: \(mix) on key \(key), \(connections) connections, pipeline \(pipeline), keyspace \(keyspace), value \(valueSize) bytes")
        if let warmupSeconds { lines.append("  warm-up: \(keyspace) entries stored in \(fixed(warmupSeconds, 3)) s") }
        lines.append(
            "  \(result.completed) of \(requested) requests in \(fixed(seconds, 3)) s: \(fixed(requestsPerSecond, 0)) requests/s")
        lines.append(
            "  latency (us): p50 \(fixed(micros(50), 1))  p99 \(fixed(micros(99), 1))  p99.9 \(fixed(micros(99.9), 1))  max \(fixed(maxMicros, 1))  mean \(fixed(meanMicros, 1))"
        )
        lines.append(
            "  hits \(result.hits)  misses \(result.misses)  stored \(result.stored)  errors \(result.errors)  unexpected \(result.unexpected)  wrong values \(result.wrongValues)"
        )
        if !result.errorCodes.isEmpty {
            lines.append("  error codes: " + result.errorCodes.sorted { $0.key < $1.key }.map { "\($0.key) x\($0.value)" }.joined(separator: ", "))
        }
        if let p = result.firstProblem { lines.append("  first problem: \(p)") }
        if let f = result.failure { lines.append("  FAILED: \(f)") }
        return lines.joined(separator: "\n")
    }

    func json() -> String {
        var members: [(String, String)] = [
            ("mix", quote(mix)), ("key", quote(key)), ("connections", "\(connections)"), ("pipeline", "\(pipeline)"),
            ("keyspace", "\(keyspace)"), ("valueSize", "\(valueSize)"), ("threads", "\(threads)"),
            ("requested", "\(requested)"), ("completed", "\(result.completed)"), ("seconds", fixed(seconds, 6)),
            ("requestsPerSecond", fixed(requestsPerSecond, 1)), ("p50Micros", fixed(micros(50), 1)),
            ("p99Micros", fixed(micros(99), 1)), ("p999Micros", fixed(micros(99.9), 1)), ("maxMicros", fixed(maxMicros, 1)),
            ("meanMicros", fixed(meanMicros, 1)), ("hits", "\(result.hits)"), ("misses", "\(result.misses)"),
            ("stored", "\(result.stored)"), ("errors", "\(result.errors)"), ("unexpected", "\(result.unexpected)"),
            ("wrongValues", "\(result.wrongValues)"),
            (
                "errorCodes",
                "{" + result.errorCodes.sorted { $0.key < $1.key }.map { "\"\($0.key)\":\($0.value)" }.joined(separator: ",") + "}"
            ),
            ("firstProblem", result.firstProblem.map(quote) ?? "null"), ("failure", result.failure.map(quote) ?? "null"),
        ]
        if let warmupSeconds { members.append(("warmupSeconds", fixed(warmupSeconds, 3))) }
        return "{" + members.map { "\"\($0.0)\":\($0.1)" }.joined(separator: ",") + "}"
    }
}

/// A number with a fixed count of decimals (no Foundation).
func fixed(_ value: Double, _ decimals: Int) -> String {
    guard value.isFinite else { return "0" }
    var scale = 1.0
    for _ in 0..<decimals { scale *= 10 }
    let scaled = (abs(value) * scale).rounded()
    let whole = Int(scaled / scale)
    var text = (value < 0 && scaled != 0 ? "-" : "") + String(whole)
    if decimals > 0 {
        let frac = Int(scaled - Double(whole) * scale)
        let digits = String(frac)
        text += "." + String(repeating: "0", count: decimals - digits.count) + digits
    }
    return text
}

/// A JSON string literal.
func quote(_ s: String) -> String {
    var out = "\""
    for scalar in s.unicodeScalars {
        switch scalar {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        case "\r": out += "\\r"
        case "\t": out += "\\t"
        default:
            if scalar.value < 0x20 {
                let hex = String(scalar.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            } else {
                out.unicodeScalars.append(scalar)
            }
        }
    }
    return out + "\""
}
