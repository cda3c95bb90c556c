import CachedProtocol
import CachedRedis

extension RedisTopologyStatus {
    /// The topology as `stats` shows it under `store.topology`.
    var json: JSONValue {
        var members: [String: JSONValue] = [
            "kind": .string(kind),
            "nodes": .array(
                nodes.map { node in
                    let m = node.metrics
                    return .object([
                        "address": .string(node.address), "role": .string(node.role),
                        "connections": .number(String(node.connections)), "poolSize": .number(String(node.poolSize)),
                        "tracking": .bool(node.tracking),
                        "up": .bool(m.up), "lastChange": m.lastChange.map { .number(String(($0 * 1000).rounded() / 1000)) } ?? .null,
                        "commands": .number(String(m.roundTrip.count)), "errorReplies": .number(String(m.errorReplies)),
                        "timeouts": .number(String(m.timeouts)),
                        "roundTripP99": .number(String(m.roundTrip.quantile(0.99) ?? 0)),
                    ].merging(node.slots.map { ["slots": .number(String($0))] } ?? [:]) { $1 })
                }),
        ]
        if let masterName {
            members["masterName"] = .string(masterName)
            members["sentinels"] = .array(
                sentinels.map { .object(["address": .string($0.address), "reachable": .bool($0.reachable)]) })
            members["switches"] = .number(String(switches))
            members["lastSwitch"] =
                lastSwitch.map { last in
                    .object([
                        "from": last.from.map(JSONValue.string) ?? .null, "to": .string(last.to),
                        "at": .number(String((last.at * 1000).rounded() / 1000)),
                    ])
                } ?? .null
        }
        if let redirects {
            members["redirects"] = .object(redirects.mapValues { .number(String($0)) })
            members["refreshes"] = .number(String(refreshes ?? 0))
            members["unownedSlots"] = .number(String(unownedSlots ?? 0))
            members["switches"] = .number(String(switches))
            members["lastRefresh"] = lastRefresh.map { .number(String(($0 * 1000).rounded() / 1000)) } ?? .null
        }
        return .object(members)
    }

    /// One phrase for systemd's `STATUS=`: the master and, behind Sentinel, how many Sentinels answer
    /// and the last switch.
    var summary: String {
        if kind == "cluster" {
            let up = nodes.filter { $0.connections > 0 }.count
            return "cluster \(up)/\(nodes.count) primaries up, \(unownedSlots ?? 0) slots unserved"
        }
        let master = nodes.first { $0.role == "master" }
        var text = master.map { "master \($0.address) (\($0.connections)/\($0.poolSize) connections)" } ?? "no master"
        if masterName != nil {
            text += ", sentinels \(sentinels.filter(\.reachable).count)/\(sentinels.count) reachable"
            if let lastSwitch {
                text += ", last switch to \(lastSwitch.to) at \(Int(lastSwitch.at))"
            }
        }
        return text
    }
}
