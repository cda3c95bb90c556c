#!/usr/bin/env python3
"""Writes Fuzz/seeds: hand-made inputs for `make fuzz` and the replay test. Rerun after editing."""
import hashlib, json, os, shutil

here = os.path.dirname(os.path.abspath(__file__))
out = os.path.join(here, "seeds")
shutil.rmtree(out, ignore_errors=True)
os.makedirs(out)

def req(method, params=None, id=1, **extra):
    o = {"jsonrpc": "2.0", "id": id, "method": method}
    if params is not None:
        o["params"] = params
    o.update(extra)
    return json.dumps(o, separators=(",", ":")).encode()

addr = {"key": "Student", "identity": 12}
haddr = {"key": "Student", "identity": -5, "hashKey": "Class", "hashId": 3}
seeds = [
    req("get", addr), req("get", haddr), req("get", {**addr, "args": [1, "x"], "kwargs": {"a": None}}),
    req("get", {"key": "Student", "identity": "alice"}),
    req("set", {**addr, "value": "{\"name\":\"Ada\"}", "ttl": 10}),
    req("set", {**haddr, "value": "AAEC/w==", "encoding": "base64"}),
    req("set", {**addr, "value": "x", "encoding": "utf8", "ttl": 0.5, "lease": "T1"}),
    req("set", {**addr, "args": [], "kwargs": {}}),
    req("delete", addr), req("delete", haddr),
    req("deleteHash", {"hashKey": "Class", "hashId": 3}),
    req("ping"), req("stats"), req("ping", {}), req("ping", id=None), req("stats", id="s"),
    b'{"jsonrpc":"2.0","method":"ping"}',
    b'[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","method":"ping"},{"jsonrpc":"2.0","id":"b","method":"get","params":{"key":"Student","identity":1}}]',
    b'[{"jsonrpc":"2.0","method":"ping"},{"jsonrpc":"2.0","method":"stats"}]',
    # conformance vectors
    b'{"jsonrpc":"2.0","id":1.5,"method":"ping"}',
    b'{"jsonrpc":"2.0","id":9007199254740993,"method":"ping"}',
    b'{"jsonrpc":"2.0","id":1e400,"method":"ping"}',
    b'{"jsonrpc":"2.0","id":-0.0e-0,"method":"ping"}',
    b'{"jsonrpc":"2.0","id":null,"method":"ping"}',
    b'{"jsonrpc":"2.0","id":"a\\"b\\\\c\\u0000\\n\\ud83d\\ude00","method":"ping"}',
    b'{"jsonrpc":"2.0","id":[1],"method":"ping"}',
    b'{"jsonrpc":"2.0","id":{},"method":"ping"}',
    b'{"jsonrpc":"2.0","id":true,"method":"ping"}',
    b'{"jsonrpc":"1.0","id":1,"method":"ping"}',
    b'{"jsonrpc":"2.0","id":1,"method":1}',
    b'{"jsonrpc":"2.0","id":1,"method":"ping","params":1}',
    b'{"jsonrpc":"2.0","id":1,"method":"ping","params":[]}',
    b'{"jsonrpc":"2.0","id":1,"method":"ping","extra":1}',
    b'{"jsonrpc":"2.0","id":1,"method":"nope"}',
    b'{"jsonrpc":"2.0","id":1,"id":2,"method":"ping"}',
    b'[]', b'[1,2,3]', b'[[]]', b'[{}]', b'{}', b'1', b'"x"', b'null', b'',
    b'{"jsonrpc":"2.0","id":1,"method":"ping"', b'{"jsonrpc":"2.0",}', b'[1,]', b'01', b'1.', b'-', b'1e', b'tru',
    b'{"jsonrpc":"2.0","id":"\xff\xfe","method":"ping"}',
    b'{"jsonrpc":"2.0","id":"\xc0\xaf","method":"ping"}',
    b'{"jsonrpc":"2.0","id":"\xed\xa0\x80","method":"ping"}',
    b'{"jsonrpc":"2.0","id":"\xf4\x90\x80\x80","method":"ping"}',
    b'{"jsonrpc":"2.0","id":"\\ud800","method":"ping"}',
    b'{"jsonrpc":"2.0","id":"\\udc00\\ud800","method":"ping"}',
    b'{"jsonrpc":"2.0","id":"\\ud800\\u0041","method":"ping"}',
    b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"a\\u0000b":1}}',
    b'{"jsonrpc\x00":"2.0","id":1,"method":"ping"}',
    b'{"jsonrpc":"2.0","id":1,"method":"get","params":{"key":"Student","identity":"a\\u0000"}}',
    b'{"jsonrpc":"2.0","id":1,"method":"get","params":{"key":"Stu\\u0000dent","identity":1}}',
    # Unicode canonical equivalence: U+212A KELVIN SIGN is canonically equivalent to "K"
    '{"jsonrpc":"2.0","id":1,"method":"get","params":{"key":"Student","identity":1,"hash\u212aey":"Class","hashId":3}}'.encode(),
    '{"jsonrpc":"2.0","id":1,"method":"get","params":{"key":"Student","identity":1,"hashKe\u0301y":"x"}}'.encode(),
    b'[' * 10000 + b']' * 10000,
    b'{"a":' * 5000 + b'1' + b'}' * 5000,
    b'[' * 33 + b']' * 33, b'[' * 32 + b']' * 32, b'[' * 40,
    b'{"jsonrpc":"2.0","id":' + b'9' * 3000 + b',"method":"ping"}',
    b'{"jsonrpc":"2.0","id":1,"method":"set","params":{"key":"Student","identity":' + b'1' * 400 + b',"value":"v","ttl":1e400}}',
    b'{"jsonrpc":"2.0","id":1,"method":"set","params":{"key":"Student","identity":-0,"value":"v","ttl":-0.0}}',
    b'{"jsonrpc":"2.0","id":1,"method":"set","params":{"key":"Student","identity":1,"value":"v","ttl":1000000000.0000001}}',
    b'{"jsonrpc":"2.0","id":1,"method":"set","params":{"key":"Student","identity":1,"value":"YQ","encoding":"base64"}}',
    b'{"jsonrpc":"2.0","id":1,"method":"set","params":{"key":"Student","identity":1,"value":"Y Q==","encoding":"base64"}}',
    b'{"jsonrpc":"2.0","id":1,"method":"set","params":{"key":"Student","identity":1,"value":"@@@","encoding":"base64"}}',
    b'{"jsonrpc":"2.0","id":1,"method":"set","params":{"key":"Student","identity":1,"value":"v","encoding":"hex"}}',
    b'{"jsonrpc":"2.0","id":1,"method":"get","params":{"key":"ab","identity":1}}',
    b'{"jsonrpc":"2.0","id":1,"method":"get","params":{"key":"+ab","identity":1}}',
    b'{"jsonrpc":"2.0","id":1,"method":"get","params":{"key":"-abcdefghijk","identity":1}}',
    b'{"jsonrpc":"2.0","id":1,"method":"get","params":{"key":"' + b'a' * 129 + b'","identity":1}}',
    b'{"jsonrpc":"2.0","id":1,"method":"get","params":{"key":"Student","identity":1.0}}',
    b'{"jsonrpc":"2.0","id":1,"method":"get","params":{"key":"Student","identity":1e3}}',
    b'{"jsonrpc":"2.0","id":1,"method":"get","params":{"key":"Student","identity":""}}',
    b'{"jsonrpc":"2.0","id":1,"method":"get","params":{"key":"Student","identity":"' + b'x' * 257 + b'"}}',
    b'{"jsonrpc":"2.0","id":1,"method":"get","params":{"key":"Student","identity":1,"hashKey":"Class"}}',
    b'{"jsonrpc":"2.0","id":1,"method":"deleteHash","params":{"hashId":3}}',
    b'{"jsonrpc":"2.0","id":1,"method":"deleteHash","params":{}}',
    b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":null}}',
    b'{"jsonrpc":"2.0","id":1,"method":"get","params":{"key":"Student","identity":1,"hashKey":null,"hashId":null}}',
    b'\xef\xbb\xbf{"jsonrpc":"2.0","id":1,"method":"ping"}',
    b'{"jsonrpc":"2.0","id":1,"method":"ping"}\r\n{"jsonrpc":"2.0","id":2,"method":"ping"}\n\n\r\n{"jsonrpc":"2.0","id":3,"method":"ping"}',
    b'{"jsonrpc":"2.0","id":1,"method":"ping"}\r\r\n\r',
    b'x' * 1100 + b'\n{"jsonrpc":"2.0","id":1,"method":"ping"}\n',
    b'[' + b','.join([b'{"jsonrpc":"2.0","id":%d,"method":"ping"}' % i for i in range(70)]) + b']',
    b'[' + b','.join([b'1'] * 65) + b']',
]
# wrong types in every param
for method, base in [("get", haddr), ("set", {**haddr, "value": "v", "ttl": 1, "lease": "L", "encoding": "utf8", "args": [], "kwargs": {}}),
                     ("delete", haddr), ("deleteHash", {"hashKey": "Class", "hashId": 3})]:
    for name in base:
        for wrong in [None, True, 1.5, -1, "s", [], {}, [1], {"a": 1}]:
            if base[name] == wrong:
                continue
            seeds.append(req(method, {**base, name: wrong}))
        missing = dict(base); del missing[name]
        seeds.append(req(method, missing))
    seeds.append(req(method, {**base, "bogus": 1}))
    seeds.append(req(method, [1, 2]))

# The fast get path (FastGetRequest): its accepted shapes and their near misses, as clients send them
# (compact, and Python's default json.dumps spacing), several per input so framing splits them.
fast = [
    {"key": "Student", "identity": 12}, {"identity": "alice", "key": "user.profile"},
    {"key": "Bench", "identity": -0}, {"key": "Sub", "identity": -42, "hashKey": "Klass", "hashId": "7"},
    {"hashId": 123456789012345678901234567890, "identity": 0, "hashKey": "a-b", "key": "x/y@z+"},
    {"key": "Stu", "identity": "x" * 256}, {"key": "Stu", "identity": "x" * 257}, {"key": "St", "identity": 1},
    {"key": "Student", "identity": ""}, {"key": "Student", "identity": "a\u007fb"},
]
for i, params in enumerate(fast):
    for separators in ((",", ":"), (", ", ": ")):
        line = json.dumps({"jsonrpc": "2.0", "id": i - 3 if i % 2 else "r%d" % i, "method": "get", "params": params},
                          separators=separators).encode()
        seeds.append(line)
        seeds.append(line + b"\r\n" + line.replace(b'"id"', b'"id":1,"id"') + b"\n" + line)
seeds.append(b' \t{"params" : {"identity":7 ,"key":"Student"} , "method":"get","id":0 ,"jsonrpc":"2.0"}\r ')

for s in seeds:
    name = hashlib.sha1(s).hexdigest()[:16]
    with open(os.path.join(out, name), "wb") as f:
        f.write(s)
print(len(seeds), "seeds")
