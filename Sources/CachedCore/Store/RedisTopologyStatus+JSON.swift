import CachedProtocol
import CachedRedis

extension RedisTopologyStatus {
    /// The topology as `stats` shows it under `store.topology`: `kind` and `nodes` for every kind, then
    /// the kind's own members.
    var json: JSONValue {
        var members: [String: JSONValue] = ["kind": .string(kind), "nodes": .array(nodes.map(\.json))]
        switch self {
        case .single:
            break
        case .sentinel(let sentinel):
            members["masterName"] = .string(sentinel.masterName)
            members["sentinels"] = .array(
                sentinel.sentinels.map { .object(["address": .string($0.address), "reachable": .bool($0.reachable)]) })
            members["switches"] = .number(String(sentinel.switches))
            members["lastSwitch"] =
                sentinel.lastSwitch.map { last in
                    .object([
                        "from": last.from.map(JSONValue.string) ?? .null, "to": .string(last.to),
                        "at": Self.seconds(last.at),
                    ])
                } ?? .null
        case .cluster(let cluster):
            let r = cluster.redirects
            members["redirects"] = .object([
                "moved": .number(String(r.moved)), "ask": .number(String(r.ask)), "tryAgain": .number(String(r.tryAgain)),
                "clusterDown": .number(String(r.clusterDown)),
            ])
            members["refreshes"] = .number(String(cluster.refreshes))
            members["unownedSlots"] = .number(String(cluster.unownedSlots))
            members["switches"] = .number(String(cluster.switches))
            members["lastRefresh"] = cluster.lastRefresh.map(Self.seconds) ?? .null
        }
        return .object(members)
    }

    /// Seconds since the Unix epoch, to the millisecond.
    static func seconds(_ value: Double) -> JSONValue {
        .number(String((value * 1000).rounded() / 1000))
    }

    /// One phrase for systemd's `STATUS=`: the master and, behind Sentinel, how many Sentinels answer
    /// and the last switch; for a cluster, its primaries up and slots unserved.
    var summary: String {
        switch self {
        case .single(let single):
            return Self.master(single.node)
        case .sentinel(let sentinel):
            var text = Self.master(sentinel.master)
            text += ", sentinels \(sentinel.sentinels.filter(\.reachable).count)/\(sentinel.sentinels.count) reachable"
            if let lastSwitch = sentinel.lastSwitch {
                text += ", last switch to \(lastSwitch.to) at \(Int(lastSwitch.at))"
            }
            return text
        case .cluster(let cluster):
            let up = cluster.primaries.filter { $0.connections > 0 }.count
            return "cluster \(up)/\(cluster.primaries.count) primaries up, \(cluster.unownedSlots) slots unserved"
        }
    }

    private static func master(_ node: Node?) -> String {
        node.map { "master \($0.address) (\($0.connections)/\($0.poolSize) connections)" } ?? "no master"
    }
}

extension RedisTopologyStatus.Node {
    var json: JSONValue {
        let m = metrics
        var members: [String: JSONValue] = [
            "address": .string(address), "role": .string(role),
            "connections": .number(String(connections)), "poolSize": .number(String(poolSize)),
            "tracking": .bool(tracking),
            "up": .bool(m.up), "lastChange": m.lastChange.map(RedisTopologyStatus.seconds) ?? .null,
            "commands": .number(String(m.roundTrip.count)), "errorReplies": .number(String(m.errorReplies)),
            "timeouts": .number(String(m.timeouts)),
            "roundTripP99": .number(String(m.roundTrip.quantile(0.99) ?? 0)),
        ]
        if let slots { members["slots"] = .number(String(slots)) }
        return .object(members)
    }
}
