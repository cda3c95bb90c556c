import CachedProtocol

/// Where the fleet's fill locks live in Redis, and the Lua scripts that use them.
///
/// One metadata hash per store key, `cached:fill:{<store key>}` (or `cached:fill:{<tag>}:<store key>`
/// when the store key has its own hash tag `{tag}`), so it lands in the entry's cluster slot and a script
/// may touch both. Its fields: `lock` (a plain entry's fill lock) or `lock:<field>` (a hash field's),
/// holding `"<token> <deadline in ms, Redis clock>"`; `delta`, the last fill's duration in ms (for other
/// daemons' early refresh). It expires with its lock or its entry. pyredis-cache names never start with
/// `cached:`, so nothing collides.
enum FleetLayout {
    /// The metadata key of `storeKey`, or nil when none can share its slot (a `}` in a name without a
    /// hash tag of its own). Built so that its hash tag is the part of `storeKey` Redis hashes (the unit
    /// tests check the slots with ``HashSlot``).
    static func metaKey(_ storeKey: String) -> String? {
        if let open = storeKey.firstIndex(of: "{"),
            let close = storeKey[storeKey.index(after: open)...].firstIndex(of: "}"), close > storeKey.index(after: open)
        {
            return "cached:fill:{\(storeKey[storeKey.index(after: open)..<close])}:\(storeKey)"
        }
        guard !storeKey.contains("}") else { return nil }
        return "cached:fill:{\(storeKey)}"
    }

    /// The lock's field in the metadata hash.
    static func lockField(_ location: StoreLocation) -> String {
        location.field.map { "lock:" + $0 } ?? "lock"
    }

    /// `{value, PTTL, delta}` of an entry in one atomic step. Keys read inside a script are tracked for
    /// the caller (Redis client-side caching), so the local copy stays coherent.
    /// KEYS: entry, meta.
    static let readAged = """
        return {redis.call('GET', KEYS[1]), redis.call('PTTL', KEYS[1]), redis.call('HGET', KEYS[2], 'delta')}
        """

    /// Takes (or renews, for the same token) the lock. Returns {1} won, {0} held by another token, or
    /// {2, value} when ARGV[5] is '1' and the entry is present.
    /// KEYS: entry, meta. ARGV: lock field, token, lease ms, entry field or '', require absent ('1'/'0').
    static let acquire = """
        if ARGV[5] == '1' then
          local v
          if ARGV[4] == '' then v = redis.call('GET', KEYS[1]) else v = redis.call('HGET', KEYS[1], ARGV[4]) end
          if v then return {2, v} end
        end
        local t = redis.call('TIME')
        local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
        local cur = redis.call('HGET', KEYS[2], ARGV[1])
        if cur then
          local sp = string.find(cur, ' ', 1, true)
          if sp and string.sub(cur, 1, sp - 1) ~= ARGV[2] and tonumber(string.sub(cur, sp + 1)) > now then return {0} end
        end
        local lease = tonumber(ARGV[3])
        redis.call('HSET', KEYS[2], ARGV[1], ARGV[2] .. ' ' .. string.format('%d', now + lease))
        if redis.call('PTTL', KEYS[2]) < lease then redis.call('PEXPIRE', KEYS[2], lease) end
        return {1}
        """

    /// The fenced store: 1 stored, 0 the token does not hold the lock, -1 the mode refused it (the lock
    /// ends then too). The entry's write comes before any other write (see ``write``).
    /// KEYS: entry, meta. ARGV: lock field, token ('' = no lock), mode (fill|refresh|overwrite), entry
    /// field or '', value, PX ms ('0' = none), expected value (refresh), delta ms ('' = none), delete ('1').
    static let store = """
        if ARGV[2] ~= '' then
          local cur = redis.call('HGET', KEYS[2], ARGV[1])
          if not cur or string.sub(cur, 1, #ARGV[2] + 1) ~= ARGV[2] .. ' ' then return 0 end
        end
        local field = ARGV[4]
        local refused = false
        if ARGV[3] == 'fill' then
          local exists
          if field == '' then exists = redis.call('EXISTS', KEYS[1]) else exists = redis.call('HEXISTS', KEYS[1], field) end
          refused = exists == 1
        elseif ARGV[3] == 'refresh' then
          local cur
          if field == '' then cur = redis.call('GET', KEYS[1]) else cur = redis.call('HGET', KEYS[1], field) end
          refused = cur ~= ARGV[7]
        end
        local px = tonumber(ARGV[6])
        if refused then
        elseif ARGV[9] == '1' then
          if field == '' then redis.call('DEL', KEYS[1]) else redis.call('HDEL', KEYS[1], field) end
        elseif field ~= '' then redis.call('HSET', KEYS[1], field, ARGV[5])
        elseif px > 0 then redis.call('SET', KEYS[1], ARGV[5], 'PX', px)
        else redis.call('SET', KEYS[1], ARGV[5]) end
        if ARGV[2] ~= '' then redis.call('HDEL', KEYS[2], ARGV[1]) end
        if refused then return -1 end
        if ARGV[8] ~= '' and px > 0 and field == '' and ARGV[9] ~= '1' then
          redis.call('HSET', KEYS[2], 'delta', ARGV[8])
          if redis.call('PTTL', KEYS[2]) < px then redis.call('PEXPIRE', KEYS[2], px) end
        end
        return 1
        """

    /// Ends the lock if the token holds it: 1 or 0. KEYS: meta. ARGV: lock field, token.
    static let release = """
        local cur = redis.call('HGET', KEYS[1], ARGV[1])
        if cur and string.sub(cur, 1, #ARGV[2] + 1) == ARGV[2] .. ' ' then
          redis.call('HDEL', KEYS[1], ARGV[1])
          return 1
        end
        return 0
        """

    /// A write through `cached` ends the entry's fill lock in the same step, so a fill in flight on any
    /// daemon is fenced out. KEYS: entry, meta. ARGV: lock field, entry field or '', value, PX ms ('0').
    /// The write comes first: under `maxmemory` Redis refuses a script's first write that needs memory
    /// (OOM), but lets later ones through once the script has written anything.
    static let write = """
        local r
        if ARGV[2] ~= '' then r = redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
        elseif tonumber(ARGV[4]) > 0 then r = redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
        else r = redis.call('SET', KEYS[1], ARGV[3]) end
        redis.call('HDEL', KEYS[2], ARGV[1])
        return r
        """

    /// A delete that ends the fill lock too. KEYS: entry, meta. ARGV: lock field, entry field or ''.
    static let delete = """
        redis.call('HDEL', KEYS[2], ARGV[1])
        if ARGV[2] ~= '' then return redis.call('HDEL', KEYS[1], ARGV[2]) end
        return redis.call('DEL', KEYS[1])
        """

    /// A whole hash deleted with every lock of its fields. KEYS: hash, meta.
    static let deleteHash = """
        redis.call('DEL', KEYS[2])
        return redis.call('DEL', KEYS[1])
        """
}
