#!/usr/bin/env python3
"""Writes the hand-made seed inputs into corpus/<target>/ (run once; the
fuzzers grow the corpus from there and `cargo fuzz cmin` keeps it small)."""
import json, os, random, struct, hashlib

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "..", "corpus")

def pack(v):
    """A small MessagePack encoder (maps with string keys, as rmp-serde writes them)."""
    if v is None: return b"\xc0"
    if v is True: return b"\xc3"
    if v is False: return b"\xc2"
    if isinstance(v, int):
        if 0 <= v < 128: return bytes([v])
        if -32 <= v < 0: return struct.pack("b", v)
        if 0 <= v < 2**64: return b"\xcf" + struct.pack(">Q", v)
        return b"\xd3" + struct.pack(">q", v)
    if isinstance(v, float): return b"\xcb" + struct.pack(">d", v)
    if isinstance(v, str):
        b = v.encode()
        if len(b) < 32: return bytes([0xa0 | len(b)]) + b
        return b"\xd9" + bytes([len(b)]) + b if len(b) < 256 else b"\xda" + struct.pack(">H", len(b)) + b
    if isinstance(v, list):
        head = bytes([0x90 | len(v)]) if len(v) < 16 else b"\xdc" + struct.pack(">H", len(v))
        return head + b"".join(pack(x) for x in v)
    if isinstance(v, dict):
        head = bytes([0x80 | len(v)]) if len(v) < 16 else b"\xde" + struct.pack(">H", len(v))
        return head + b"".join(pack(k) + pack(x) for k, x in v.items())
    raise TypeError(v)

def save(target, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    name = hashlib.sha1(data).hexdigest()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)

task = {"_type": "Task", "id": 10, "_version": 3, "_created": 2, "job": 1, "name": "a", "status": "todo"}
messages = [
    {"type": "hello", "protocol": 1, "token": "alice", "clientId": "c1", "pending": [3, 4], "rid": 1},
    {"type": "subscribe", "channel": "job", "anchorId": 1, "since": 5, "epoch": "e1", "rid": "r"},
    {"type": "subscribe", "stream": "tasks", "filters": {"job": 1, "name__icontains": "bug"}, "fields": ["name"], "snapshot": True, "actions": ["create", "update"]},
    {"type": "unsubscribe", "context": "job/1"},
    {"type": "write", "writeId": 7, "operation": "save", "context": "job/1", "instanceType": "Task", "instanceId": 10, "data": {"name": "b", "weight": 2.5}, "ifVersion": 3},
    {"type": "write", "writeId": 8, "operation": "batch", "context": "job/1", "after": [7], "ops": [
        {"operation": "create", "instanceType": "Task", "instanceId": -1, "parentType": "Job", "parentId": 1, "relationName": "tasks", "data": {"name": "n"}},
        {"operation": "delete", "instanceType": "Task", "instanceId": 11}]},
    {"type": "get", "stream": "tasks", "ids": [1, 2], "rid": {"k": [1.5, None]}},
    {"type": "auth", "token": "t"},
    {"type": "ping", "rid": 18446744073709551615},
    {"type": "welcome", "connectionId": "c", "user": {"id": 1, "name": "alice"}, "schema": {"types": {}}, "epoch": "e1", "applied": [{"writeId": 3, "seq": 9, "created": [{"_type": "Task", "tempId": -1, "id": 12}]}]},
    {"type": "state", "context": "job/1", "channel": "job", "anchorId": 1, "epoch": "e1", "seq": 9, "instances": [task], "incremental": True, "removed": [{"_type": "Task", "id": 4}], "part": 0, "last": False},
    {"type": "delta", "context": "job/1", "seq": 10, "prev": 9, "changes": [{"op": "update", "_type": "Task", "id": 10, "_version": 10, "name": "c"}], "writeId": 7, "created": []},
    {"type": "writeResponse", "writeId": 7, "success": False, "error": {"code": 409, "reason": "VERSION_CONFLICT", "message": "m", "field": "name", "op": 0}},
    {"type": "writeResponse", "writeId": 8, "success": True, "seq": 11, "created": [{"_type": "Task", "tempId": -1, "id": 13}], "instanceId": 13, "duplicate": True},
    {"type": "error", "code": 403, "reason": "DENIED", "message": "no", "context": "job/2", "supported": [1]},
    {"type": "unsubscribed", "context": "job/1", "reason": "ANCHOR_DELETED"},
    {"type": "authenticated", "user": {"id": 2, "name": "bob"}},
    {"type": "pong"},
    {"type": "goaway", "reason": "bye"},
    {"type": "subscribed", "subscription": "s1", "stream": "tasks", "seq": 3, "snapshot": [task]},
    {"type": "event", "subscription": "s1", "seq": 4, "prev": 3, "action": "delete", "id": 10, "data": {"name": "x"}},
    {"type": "rows", "stream": "tasks", "rows": [task]},
]
for m in messages:
    save("json_decode", json.dumps(m).encode())
    save("msgpack_decode", pack(m))
for i, m in enumerate(messages[:8]):
    frames = b"\x00\x00\x00\x00" + b"".join(struct.pack(">I", len(pack(x))) + pack(x) for x in messages[i:i + 3])
    save("quic_framing", bytes([255, i * 37 % 256]) + frames)
save("quic_framing", bytes([3, 0]) + struct.pack(">I", 5) + b"12345" + struct.pack(">I", 9))
save("quic_framing", bytes([200, 1]) + struct.pack(">I", 2) + b"\x80")

filters = [
    {"job": 1, "name__icontains": "bug"},
    {"id__in": [1, 7], "points__gt": 2, "points__lte": 3},
    {"name__iexact": "FIX", "done": False, "weight__gte": 2},
    {"due__lt": "2026-01-03T00:00:00Z", "meta__isnull": True},
    {"points": None, "assignee__in": [1, 2]},
    {"job__in": [1, 2], "name__startswith": "F", "id": 7},
    {"meta": {"a": 1}, "name__contains": "ß"},
    {"nope": 1},
    {"points__isnull": False, "job": 2, "assignee": None},
]
for f in filters:
    save("filter", json.dumps(f, ensure_ascii=False).encode())

def write(op, **kw):
    m = {"type": "write", "writeId": kw.pop("writeId", 5), "operation": op, "context": kw.pop("context", "job/1")}
    m.update(kw)
    return m
writes = [
    write("save", instanceType="Task", instanceId=10, data={"name": "new", "points": 5, "weight": -2.5, "due": "2026-05-01T10:00:00Z"}, ifVersion=1),
    write("save", instanceType="Task", instanceId=10, data={"status": "done", "meta": [1, {"x": None}], "assignee": 2}),
    write("save", instanceType="Task", instanceId=20, context="job/2", data={"job": 1}),
    write("save", instanceType="Task", instanceId=11, data={"secret": "s", "done": True}),
    write("create", instanceType="Task", parentType="Job", parentId=1, relationName="tasks", data={"name": "t", "points": 100}),
    write("create", instanceType="Task", instanceId=-1, parentType="Job", parentId=2, relationName="tasks", context="job/2", data={"name": "t"}),
    write("create", instanceType="Comment", instanceId=4503599627370497, parentType="Task", parentId=10, relationName="comments", data={"body": "b", "author": 1}),
    write("delete", instanceType="Task", instanceId=10),
    write("delete", instanceType="Comment", instanceId=101, context="job/2"),
    write("batch", ops=[
        {"operation": "create", "instanceType": "Task", "instanceId": -1, "parentType": "Job", "parentId": 1, "relationName": "tasks", "data": {"name": "x"}},
        {"operation": "create", "instanceType": "Comment", "instanceId": -2, "parentType": "Task", "parentId": -1, "relationName": "comments", "data": {"body": "c"}},
        {"operation": "save", "instanceType": "Task", "instanceId": 11, "data": {"assignee": 1}},
        {"operation": "delete", "instanceType": "Task", "instanceId": 10}]),
    write("batch", ops=[
        {"operation": "delete", "instanceType": "Task", "instanceId": 10},
        {"operation": "save", "instanceType": "Task", "instanceId": 10, "data": {"name": "gone"}}]),
    write("save", instanceType="User", instanceId=1, data={"is_admin": True}),
    write("delete", instanceType="User", instanceId=2, context="job/1"),
]
for w in writes:
    save("write_validator", json.dumps(w).encode())

rng = random.Random(7)
for n in range(12):
    save("client_state", bytes(rng.randrange(256) for _ in range(40 + 20 * n)))
# A run that loads job/1, writes, and is answered in order.
save("client_state", bytes([0, 0, 5, 0, 0, 3, 1, 0, 3, 2, 1, 1, 0, 0, 5, 0, 0, 1, 1, 0, 3, 7, 2, 1, 6, 0, 0, 1, 5, 1, 0, 5, 2, 1, 0, 0, 0]))
