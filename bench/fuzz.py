"""Benchmark (fuzz): hostile messages through the codec and every consumer's per-message path.

N inputs (default 1,000,000) are made from valid envelopes of every kind (built from the schema
records' own types) and mutated: wrong types, unknown enum values, huge strings, nesting up to
and beyond the codec's cap, unicode edge cases (escaped lone surrogates, U+2028, NUL, C1, ESC),
huge, negative and fractional numbers, duplicate keys, byte flips, truncation, random and
non-UTF-8 bytes, empty messages. Each input goes through

- the codec (`decode_envelope` of the bytes, and of the parsed object when it parses to one):
  it may raise `DecodeError` and nothing else;
- each consumer's per-message path, with fakes for Kafka, ClickHouse, the SIEM receivers and the
  kill: the event decider, the workload and policy-update agents and the policy mirror of the
  stream worker, the ClickHouse sink, the SIEM forwarder and the collector's verdict reader.
  Their contract is that nothing escapes and a bad message becomes one dead letter; an
  exception the guard caught that is neither the codec's, a refusal nor an output Kafka would
  refuse is a failure of the stage's own code, reported too.

The figures: inputs tried per path, foreign exceptions (escaped, or caught as a failure of the
stage's code: both must be 0; the bench exits 1 otherwise), and the slowest input per path,
beside a baseline measured in the same run: valid messages (default as many as the hostile
ones) through the same paths.

    python bench/fuzz.py [--count N] [--seed N] [--baseline N] [--workers N]
    python -m bench.fuzz ...
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import hashlib
import logging
import multiprocessing
import random
import re
import sys
import tempfile
import time
import traceback
from array import array
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import msgspec.inspect as mi
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from collectors.enforcement.enforcer import Enforcer
from collectors.sensing.workloads import WorkloadResolver
from collectors.settings import CollectorSettings
from procwarden.testbed.clickhouse import FakeClickHouse
from schemas import (
    PAYLOAD_TYPES,
    Decision,
    DecodeError,
    EventKind,
    Level,
    Workload,
    WorkloadKind,
    decode_record,
)
from schemas import codec as _codec
from schemas import envelope as _envelope
from schemas.connections import ClickHouseConnection, KafkaConnection
from schemas.topics import (
    COLLECTOR_REPORTS,
    EXEC,
    FILE,
    POLICY,
    POLICY_UPDATES,
    PROCESS_STATE,
    PROFILE_CHANGES,
    SECURITY_EVENTS,
    VERDICTS,
    WORKLOADS,
)
from streams.engine import learned_group_name
from streams.kafka.event_output import OutputRefused
from streams.kafka.mirror import PolicyMirror
from streams.worker.handlers import Handlers, RawMessage
from streams.worker.session import DecisionSession
from transport import MessageGuard, Refused
from transport.signing import Keyring, Signer

CODEC, CODEC_PARSED = "codec.decode_envelope", "codec.decode_envelope(parsed)"
EVENT, ANNOUNCE, UPDATE, MIRROR = ("streams.event_decider", "streams.workload_agent",
                                   "streams.update_agent", "streams.mirror")
SINK, SIEM, COLLECTOR = "sink.clickhouse", "sink.siem", "collector.verdict_reader"
PATHS = (CODEC, CODEC_PARSED, EVENT, ANNOUNCE, UPDATE, MIRROR, SINK, SIEM, COLLECTOR)
CHUNK = 5_000  # inputs per task; the consumers are built afresh for each (bounded state)
NODE = "node-fuzz"
KAFKA = KafkaConnection(bootstrap_servers="127.0.0.1:1")  # never connected: fakes only
# What a guard may catch without it being a failure of the stage's own code.
EXPECTED = (DecodeError, Refused, OutputRefused)
SIEM_MAX_BYTES = 64 * 1024

WORKLOAD_RECORDS = (
    Workload(id="c-web-1", kind=WorkloadKind.CONTAINER, node=NODE, name="web", namespace="demo",
             service="web", image="nginx:1.25", labels={"app": "web"}),
    Workload(id="c-db-1", kind=WorkloadKind.CONTAINER, node=NODE, name="db", namespace="prod",
             service="db", image="postgres:16"),
    Workload(id="host-node-fuzz", kind=WorkloadKind.HOST, node=NODE, name=NODE),
)
WORKLOAD_IDS = (*(w.id for w in WORKLOAD_RECORDS), "c-unknown-9")
GROUPS = (*(learned_group_name(w) for w in WORKLOAD_RECORDS), "lockdown", "nv.x.y")
PATH_POOL = ("/bin/ls", "/bin/sh", "/usr/bin/curl", "/tmp/x", "/usr/bin/nc", "/bin/busybox",
             "/usr/local/bin/app", "")
NAME_POOL = ("ls", "sh", "curl", "x", "nc", "busybox", "app", "")
WORDS = ("a", "root", "app", "web", "demo", "prod", "x", "", "10.0.0.1:443", "tcp", "pipe")
# Each kind's weight among the valid bases: more of what the consumers act on.
KIND_WEIGHTS = {EventKind.EXEC: 6, EventKind.VERDICT: 6, EventKind.SECURITY_EVENT: 4,
                EventKind.WORKLOAD: 4, EventKind.POLICY: 2, EventKind.PROCESS_STATE: 2,
                EventKind.FILE: 2, EventKind.EXEC_CHECK: 2, EventKind.HOLD_SETTINGS: 2}
ENUM_FIELDS = {"kind", "verdict", "mode", "baseline", "origin", "op", "level", "action",
               "event_kind", "change", "state", "fail_mode", "direction", "profile_mode",
               "baseline_profile", "key"}


REASON_POOL = ("rule", "learn", "probe", "violation:R0", "violation:R5", "parent-rule:sh/*",
               "suspicious:nc", "drift:create", "pre-exec:deny-rule:r1", "none:exit")


# -- valid records, from the schema's own types -------------------------------------------------


def _string(rng: random.Random, name: str) -> str:
    if name in ("workload_id", "id") or name.endswith("workload_id"):
        return rng.choice(WORKLOAD_IDS)
    if name in ("node", "host_id", "host_name", "enforcer_id", "enforcer_name"):
        return NODE
    if name.endswith("path"):
        return rng.choice(PATH_POOL)
    if name.endswith("name") or name == "parent_argv0":
        return rng.choice(NAME_POOL)
    if name in ("group", "rule_group"):
        return rng.choice(GROUPS)
    if name == "reason":  # a closed vocabulary (schemas/reasons.py): a word is refused
        return rng.choice(REASON_POOL)
    if name.endswith("event_id") or name.endswith("uuid") or name == "policy_stamp":
        return f"{name[:1]}{rng.randrange(10**6)}"
    return rng.choice(WORDS)


def _value(tp: Any, rng: random.Random, name: str, depth: int) -> Any:
    """Plain data of type `tp` (msgspec type info), plausible for a field called `name`."""
    if isinstance(tp, mi.StrType):
        return _string(rng, name)
    if isinstance(tp, mi.BoolType):
        return rng.random() < 0.5
    if isinstance(tp, mi.IntType):
        if name in ("pid", "ppid", "pgid", "sid", "root_pid"):
            return rng.randrange(2, 40_000)
        return rng.choice((0, 1, 2, 7, 1000, rng.randrange(1 << 20)))
    if isinstance(tp, mi.FloatType):
        return 1_700_000_000.0 + rng.random() * 1e6
    if isinstance(tp, mi.EnumType):
        return rng.choice(list(tp.cls)).value
    if isinstance(tp, mi.NoneType):
        return None
    if isinstance(tp, mi.UnionType):
        members = [t for t in tp.types if not isinstance(t, mi.NoneType)]
        if len(members) < len(tp.types) and (rng.random() < 0.4 or depth > 3):
            return None
        return _value(rng.choice(members), rng, name, depth)
    if isinstance(tp, mi.VarTupleType | mi.ListType):
        n = rng.randrange(4) if depth < 3 else 0
        return [_value(tp.item_type, rng, name, depth + 1) for _ in range(n)]
    if isinstance(tp, mi.DictType):
        n = rng.randrange(3) if depth < 3 else 0
        return {str(_value(tp.key_type, rng, "key", depth + 1)) + str(i):
                _value(tp.value_type, rng, name, depth + 1) for i in range(n)}
    if isinstance(tp, mi.StructType):
        out = {}
        for f in tp.fields:
            if f.required or rng.random() < 0.6:
                out[f.encode_name] = _value(f.type, rng, f.name, depth + 1)
        return out
    return None  # (no other type occurs in the schema)


_INFO = {kind: mi.type_info(tp) for kind, tp in PAYLOAD_TYPES.items()}


def valid_payload(kind: EventKind, rng: random.Random) -> dict[str, Any]:
    """A payload of `kind` the codec accepts (records with checks of their own may refuse a
    random draw: drawn again)."""
    cls = PAYLOAD_TYPES[kind]
    for _ in range(1000):  # (a random group policy is valid one time in seven)
        obj = _value(_INFO[kind], rng, kind.value, 0)
        try:
            decode_record(cls, obj)
        except DecodeError:
            continue
        return obj  # type: ignore[no-any-return]
    raise RuntimeError(f"no valid {kind.value} payload drawn")  # a schema the drawer misses


def valid_envelope(rng: random.Random, kind: EventKind | None = None) -> dict[str, Any]:
    if kind is None:
        kinds = list(EventKind)
        kind = rng.choices(kinds, [KIND_WEIGHTS.get(k, 1) for k in kinds])[0]
    return {"schema_version": 1, "event_id": f"e{rng.randrange(10**9)}", "node": NODE,
            "cluster": "fuzz", "ts": 1_700_000_000.0 + rng.random() * 1e6, "kind": kind.value,
            "payload": valid_payload(kind, rng)}


# -- mutations ----------------------------------------------------------------------------------

_WRONG: tuple[Any, ...] = (None, True, False, 0, -1, 1.5, "", "s", [], {}, [1, "a"], {"x": 1},
                           [[[]]])
_BAD_ENUM = ("", "EXEC", "exec ", "unknown", "\u0435xec", "null", "0", "allow\x00", "∞")
_UNICODE = ("\u2028", "\u2029", "\x00", "\x85", "\x9b31m", "\x1b[2J\x1b]0;t\x07", "\x0b\x0c",
            "\ufeff", "\U0001f600" * 50, "a\u0301\u0301\u0301", "\uffff", "\U0010ffff",
            "%s%n%x", "${jndi:x}", "\r\n<14>1 - fake", "|=\\", "'; DROP TABLE x; --")
# Raw JSON for what orjson cannot write: escaped lone surrogates, big and odd numbers.
_RAW = (b'"\\ud800"', b'"\\udfff\\ud800"', b'"a\\ud83d"', b'"\\u0000"', b'1e999', b'-1e999',
        b'NaN', b'Infinity', b'123456789012345678901234567890', b'-9223372036854775809',
        b'18446744073709551616', b'9223372036854775807', b'1.0', b'-0', b'0.1e-400', b'1E2')
_NUMBERS = (2**63 - 1, -(2**63), 2**64 - 1, -1, 0, 2**31, 2**32, -(2**31) - 1, 1.5, -0.0,
            1e308, -1e308, 5e-324, 1e30, 10**18)
_BAD_UTF8 = (b"\xff", b"\xfe\xff", b"\xc0\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x80",
             b"\xe2\x80", b"\xf0\x9f\x98")
_PLACEHOLDER = "\ue000fuzz-raw\ue000"


def _containers(obj: Any) -> list[tuple[Any, Any]]:
    """(container, key) of every value in `obj`, depth first."""
    out: list[tuple[Any, Any]] = []
    stack = [obj]
    while stack:
        node = stack.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for k, v in items:
            out.append((node, k))
            if isinstance(v, dict | list):
                stack.append(v)
    return out


def _nested_text(depth: int, rng: random.Random) -> bytes:
    if rng.random() < 0.5:
        return b"[" * depth + b"]" * depth
    return b'{"a":' * (depth - 1) + b"{}" + b"}" * (depth - 1)


def _depth(rng: random.Random) -> int:
    cap = _codec.limits().max_depth
    if rng.random() < 0.01:
        return 50_000
    return rng.choice((cap - 8, cap - 2, cap - 1, cap, cap + 1, cap + 2, 2 * cap, 255, 256,
                       1000, 1023, 1024, 1025, 5000))


# Large inputs cost each path time in proportion to their size: mostly a few KB to 64 KB, one
# in a few hundred from 128 KB to just over max_message_bytes, so a million take minutes.
def _huge(rng: random.Random) -> int:
    if rng.random() < 0.995:
        return rng.choice((1 << 10, 1 << 12, 1 << 14, 65_537))
    return rng.choice((1 << 17, 400_000, 900_000, _codec.limits().max_message_bytes + 1))


def _structured(obj: dict[str, Any], rng: random.Random) -> tuple[bytes, str]:
    """Mutate the parsed envelope in place; its bytes and the mutation's name."""
    slots = _containers(obj)
    where, key = rng.choice(slots)
    old = where[key]
    raw = b""
    how = rng.choice(("wrong_type", "enum", "huge_string", "huge_list", "nesting", "number",
                      "unicode", "raw", "drop", "unknown_field", "kind_swap", "version",
                      "payload_swap"))
    if how == "wrong_type":
        where[key] = rng.choice(_WRONG)
    elif how == "enum":
        cands = [(c, k) for c, k in slots if isinstance(k, str) and k in ENUM_FIELDS]
        where, key = rng.choice(cands) if cands else (where, key)
        where[key] = rng.choice(_BAD_ENUM)
    elif how == "huge_string":
        cands = [(c, k) for c, k in slots if isinstance(c[k], str)]
        where, key = rng.choice(cands) if cands else (where, key)
        where[key] = rng.choice("A\u2028\x1b\u00e9") * _huge(rng)
    elif how == "huge_list":
        n = 100_000 if rng.random() < 0.005 else rng.choice((100, 1000, 10_000))
        where[key] = [rng.choice(("a", "", "\u2028", 1))] * n
    elif how == "nesting":  # (as text: orjson writes no more than 255 levels)
        where[key] = _PLACEHOLDER
        raw = _nested_text(_depth(rng), rng)
    elif how == "number":
        cands = [(c, k) for c, k in slots if type(c[k]) in (int, float)]
        where, key = rng.choice(cands) if cands else (where, key)
        where[key] = rng.choice(_NUMBERS)
    elif how == "unicode":
        cands = [(c, k) for c, k in slots if isinstance(c[k], str)]
        where, key = rng.choice(cands) if cands else (where, key)
        text = rng.choice(_UNICODE)
        where[key] = rng.choice((text, f"{where[key]}{text}", text + str(where[key])))
    elif how == "raw":
        where[key] = _PLACEHOLDER
        raw = rng.choice(_RAW)
    elif how == "drop":
        if isinstance(where, dict):
            del where[key]
        else:
            where.pop(key)
    elif how == "unknown_field":
        target = rng.choice([c for c, _ in slots if isinstance(c, dict)] or [obj])
        target[rng.choice(("zzz", "payload", "__proto__", ""))] = rng.choice(_WRONG)
    elif how == "kind_swap":
        obj["kind"] = rng.choice(list(EventKind)).value
    elif how == "version":
        obj["schema_version"] = rng.choice((0, 2, "1", 1.0, True, None, -1, 2**64 - 1))
    else:  # payload_swap: a valid payload of another kind
        obj["payload"] = valid_payload(rng.choice(list(EventKind)), rng)
    del old
    data = orjson.dumps(obj)
    if raw:
        data = data.replace(orjson.dumps(_PLACEHOLDER), raw)
    return data, how


def _bytes(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """Mutate the encoded message."""
    how = rng.choice(("flip", "truncate", "insert", "delete", "random", "empty", "bad_utf8",
                      "duplicate_key", "wrap", "control", "bom", "whitespace"))
    n = len(data)
    if how == "flip":
        buf = bytearray(data)
        for _ in range(rng.randrange(1, 9)):
            if buf:
                buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
        return bytes(buf), how
    if how == "truncate":
        return data[:rng.randrange(n)] if n else data, how
    if how == "insert":
        at = rng.randrange(n + 1)
        return data[:at] + rng.randbytes(rng.randrange(1, 64)) + data[at:], how
    if how == "delete":
        at = rng.randrange(n + 1)
        return data[:at] + data[at + rng.randrange(1, 32):], how
    if how == "random":
        return rng.randbytes(rng.choice((1, 2, 16, 256, 4096))), how
    if how == "empty":
        return rng.choice((b"", b" ", b"{}", b"[]", b"null", b"0", b'""', b"{", b"\x00")), how
    if how == "bad_utf8":
        quotes = [m.start() + 1 for m in re.finditer(b'":"', data)] or [n // 2]
        at = rng.choice(quotes) + 1
        return data[:at] + rng.choice(_BAD_UTF8) + data[at:], how
    if how == "duplicate_key":
        dup = rng.choice((b'"kind":"verdict",', b'"kind":"exec",', b'"schema_version":2,',
                          b'"payload":{},', b'"payload":' + b"[" * 2000 + b"]" * 2000 + b","))
        if rng.random() < 0.5 or b'"payload":{' not in data:
            return b"{" + dup + data[1:], how
        return data.replace(b'"payload":{', b'"payload":{' + dup.replace(b"payload", b"pid"),
                            1), how
    if how == "wrap":
        depth = _depth(rng)
        return b"[" * depth + data + b"]" * depth, how
    if how == "control":  # raw control characters inside strings: invalid JSON
        at = rng.randrange(n + 1)
        return data[:at] + bytes([rng.randrange(32)]) + data[at:], how
    if how == "bom":
        return b"\xef\xbb\xbf" + data, how
    pad = b" \t\r\n"[rng.randrange(4):][:1] * (
        100_000 if rng.random() < 0.005 else rng.choice((1, 100, 10_000)))
    return pad + data + pad, how


@dataclass(frozen=True, slots=True)
class Input:
    value: bytes | None
    key: bytes | None
    kind: str  # the kind of the valid message it was made from: picks each path's topic
    how: str  # what was done to it


def inputs(seed: int, chunk: int, n: int, *, valid: bool) -> Iterator[Input]:
    """The chunk's inputs, the same for the same seed and chunk."""
    rng = random.Random(f"{seed}:{chunk}:{'valid' if valid else 'hostile'}")
    for _ in range(n):
        env = valid_envelope(rng)
        kind = env["kind"]
        key: bytes | None = _string(rng, "workload_id").encode()
        if valid:
            yield Input(orjson.dumps(env), key, kind, "valid")
            continue
        roll = rng.random()
        if roll < 0.003:
            yield Input(None, key, kind, "tombstone")
            continue
        if roll < 0.01:
            key = rng.choice((None, b"", rng.randbytes(40), b"\xff" * 10, b"k" * 100_000))
        if roll < 0.55:
            data, how = _structured(env, rng)
            if rng.random() < 0.2 and _parses(data):  # and a second one on top
                with contextlib.suppress(TypeError):  # (deeper than orjson writes)
                    data, more = _structured(orjson.loads(data), rng)
                    how = f"{how}+{more}"
        elif roll < 0.95:
            data, how = _bytes(orjson.dumps(env), rng)
        else:
            data, how = _structured(env, rng)
            data, more = _bytes(data, rng)
            how = f"{how}+{more}"
        yield Input(data, key, kind, how)


def _parses(data: bytes) -> bool:
    try:
        return isinstance(orjson.loads(data), dict)
    except orjson.JSONDecodeError:
        return False


# -- fakes --------------------------------------------------------------------------------------


class FakeMessage:
    """A confluent_kafka Message as the sinks read it."""

    def __init__(self, topic: str, offset: int, key: bytes | None, value: bytes | None) -> None:
        self._topic, self._offset, self._key, self._value = topic, offset, key, value

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def error(self) -> None:
        return None


class FakeConsumer:
    def __init__(self, config: dict[str, Any]) -> None: ...

    def subscribe(self, topics: Sequence[str]) -> None: ...

    def close(self) -> None: ...


class FakeProducer:
    """Takes dead letters and keeps only their count (a bench keeps no million messages)."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.produced = 0

    def produce(self, topic: str, key: bytes, value: bytes, on_delivery: Any = None) -> None:
        self.produced += 1

    def poll(self, _: float) -> int:
        return 0

    def flush(self, _: float) -> int:
        return 0


class FakePublisher:
    """The stream worker's outputs: refuses, as the producer would, values over 1 MB."""

    def __init__(self, limit: int = 1_000_000) -> None:
        self.limit = limit
        self.sent = 0

    async def send(self, topic: str, key: bytes, value: bytes | None) -> None:
        if value is not None and len(value) > self.limit:
            from confluent_kafka import KafkaError
            raise OutputRefused(topic, len(value), KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))
        self.sent += 1


class FakeTransport:
    """A SIEM receiver: counts what it is sent, and notes a line over its size limit."""

    def __init__(self, oversized: Callable[[int], None]) -> None:
        self.oversized = oversized
        self.lines = 0

    def send(self, messages: Sequence[bytes]) -> None:
        for line in messages:
            if len(line) > SIEM_MAX_BYTES:
                self.oversized(len(line))
        self.lines += len(messages)

    def close(self) -> None: ...


# -- the consumers ------------------------------------------------------------------------------


class Caught(Exception):
    """What a guard caught that is no expected refusal, raised again out of the path."""

    def __init__(self, exc: BaseException) -> None:
        super().__init__(f"{type(exc).__name__}: {exc}"[:500])
        self.original = exc


class FuzzEnforcer(Enforcer):
    """The collector's verdict handling with the kill recorded, not made (and in dry-run mode
    too, in case a later change reached a kill some other way)."""

    kills: list[int]

    def _kill(self, d: Decision) -> None:
        self.kills.append(d.pid)


@contextlib.contextmanager
def _patched(module: Any, name: str, value: Any) -> Iterator[None]:
    old = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, old)


def _never() -> bool:
    return False


class Consumers:
    """One of each consumer, built with fakes; `paths` maps a path's name to a coroutine
    function taking (input, offset), which raises what escaped or what the guard caught as a
    failure of the stage's own code (as `Caught`)."""

    def __init__(self, state_dir: Path) -> None:
        self._caught: list[BaseException] = []
        self.oversized: list[int] = []
        self.handlers = Handlers(session=DecisionSession(), publisher=FakePublisher(),
                                 decisions=FakePublisher(), kafka=KAFKA, node="streams")
        self.handlers.ready.set()
        for wl in WORKLOAD_RECORDS:
            self.handlers.on_workload(_envelope.Envelope.wrap(
                wl, event_id=f"wl-{wl.id}", node=NODE, ts=time.time()), wl.id)
        self.mirror = PolicyMirror(KAFKA, on_policy=self.handlers.on_policy,
                                   on_workload=self.handlers.on_workload,
                                   on_process_state=self.handlers.on_process_state,
                                   dead_letter=self.handlers.dead_letter_entry)
        from sinks import dead_letters as dead_letters_module
        from sinks.clickhouse import writer as writer_module
        from sinks.siem import forwarder as forwarder_module
        with _patched(writer_module, "Consumer", FakeConsumer), \
                _patched(forwarder_module, "Consumer", FakeConsumer), \
                _patched(dead_letters_module, "Producer", FakeProducer):
            self.clickhouse = FakeClickHouse()
            self.writer = writer_module.ClickHouseWriter(KAFKA,
                                                         ClickHouseConnection(database="fuzz"))
            self.writer._client = self.clickhouse
            self.writer._clickhouse = lambda: self.clickhouse  # type: ignore[method-assign]
            self.cef = FakeTransport(self.oversized.append)
            self.json = FakeTransport(self.oversized.append)
            self.forwarder = forwarder_module.SiemForwarder(KAFKA, [
                forwarder_module.Destination("cef", self.cef, "cef",
                                             max_bytes=SIEM_MAX_BYTES),
                forwarder_module.Destination("json", self.json, "json", syslog=False,
                                             max_bytes=SIEM_MAX_BYTES)], min_level=Level.INFO)
        settings = CollectorSettings(node=NODE, state_dir=state_dir, dry_run=True)
        # The fuzzed verdicts are signed by the stream app's keys: they reach the collector's
        # local checks and its handling, not only the signature check (issue 22).
        ring = Keyring.generate()
        self.verdict_signer = Signer.for_streams(ring)
        self.enforcer = FuzzEnforcer(settings, KAFKA, WorkloadResolver(node=NODE),
                                     lambda *a, **k: "", health=_health(),
                                     cannot_go_on=lambda why: None, keys=ring.node_keys(NODE))
        self.enforcer.kills = []
        self._rows_refused = False
        refuse_row = self.writer.loop.refuse

        def refusing_row(msg: Any, exc: Exception) -> None:
            # A row ClickHouse's client or server refused for its values is dead-lettered by
            # design (the sink splits its batch to find it): not a failure of the sink's code.
            self._rows_refused = True
            try:
                refuse_row(msg, exc)
            finally:
                self._rows_refused = False

        self.writer.loop.refuse = refusing_row  # type: ignore[method-assign]
        for guard in (self.handlers.guard, self.handlers.agent_guard, self.mirror.guard,
                      self.writer.guard, self.forwarder.guard, self.enforcer.guard):
            self._spy(guard)
        self.events = 0
        self.paths: dict[str, Callable[[Input, int], Awaitable[None]]] = {
            CODEC: self._codec, CODEC_PARSED: self._codec_parsed, EVENT: self._event,
            ANNOUNCE: self._announce, UPDATE: self._update, MIRROR: self._mirror,
            SINK: self._sink, SIEM: self._siem, COLLECTOR: self._collector}

    def _spy(self, guard: MessageGuard) -> None:
        refuse = guard.refuse

        def spying(exc: BaseException, **kw: Any) -> Any:
            if not isinstance(exc, EXPECTED) and not self._rows_refused:
                self._caught.append(exc)
            return refuse(exc, **kw)

        guard.refuse = spying  # type: ignore[method-assign]

    def _check(self) -> None:
        if self._caught:
            exc = self._caught[0]
            self._caught.clear()
            raise Caught(exc) from exc
        if self.oversized:
            size = self.oversized[0]
            self.oversized.clear()
            raise AssertionError(f"an incident of {size} bytes was sent, over the "
                                 f"destination's max_bytes of {SIEM_MAX_BYTES}")

    # Each path as its consumer's loop runs it for one message.

    async def _codec(self, item: Input, offset: int) -> None:
        if item.value is not None:
            with contextlib.suppress(DecodeError):
                _envelope.decode_envelope(item.value)

    async def _codec_parsed(self, item: Input, offset: int) -> None:
        try:
            obj = orjson.loads(item.value or b"")
        except orjson.JSONDecodeError:
            return
        if isinstance(obj, dict):
            with contextlib.suppress(DecodeError):
                _envelope.decode_envelope(obj)

    async def _event(self, item: Input, offset: int) -> None:
        topic = FILE.name if item.kind == "file" else EXEC.name
        await self.handlers.on_event(RawMessage(topic, 0, offset, item.key, item.value))
        self.events += 1
        if self.events % 32 == 0:  # the decider ends a batch (and ticks) between batches
            await self.handlers.tick()
            await self.handlers.end_batch()
        self._check()

    async def _announce(self, item: Input, offset: int) -> None:
        await self.handlers.on_workload_announcement(
            RawMessage(WORKLOADS.name, 0, offset, item.key, item.value))
        self._check()

    async def _update(self, item: Input, offset: int) -> None:
        await self.handlers.on_update(
            RawMessage(POLICY_UPDATES.name, 0, offset, item.key, item.value))
        self._check()

    async def _mirror(self, item: Input, offset: int) -> None:
        topic = {"policy": POLICY.name, "process_state": PROCESS_STATE.name}.get(
            item.kind, WORKLOADS.name)
        await self.mirror.apply(topic, 0, offset, item.key, item.value)
        self._check()

    async def _sink(self, item: Input, offset: int) -> None:
        topic = {"verdict": VERDICTS.name, "security_event": SECURITY_EVENTS.name,
                 "profile_change": PROFILE_CHANGES.name, "workload": WORKLOADS.name,
                 "collector_report": COLLECTOR_REPORTS.name}.get(item.kind, VERDICTS.name)
        self.writer.store([FakeMessage(topic, offset, item.key, item.value)])  # type: ignore[list-item]
        self._check()

    async def _siem(self, item: Input, offset: int) -> None:
        self.forwarder._forward([FakeMessage(SECURITY_EVENTS.name, offset, item.key,  # type: ignore[list-item]
                                             item.value)], _never)
        self._check()

    async def _collector(self, item: Input, offset: int) -> None:
        e = self.enforcer
        headers = self.verdict_signer.headers(KAFKA.topic(VERDICTS.name), item.key, item.value,
                                              to_node=NODE, expires=int(time.time()) + 600)
        e.guard.run(partial(e.on_message, item.value, list(headers), item.key),
                    topic=VERDICTS.name, partition=0,
                    offset=offset, key=item.key, value=item.value)
        self._check()


def _health() -> Any:
    from transport import Health
    return Health("fuzz-collector")


# -- running ------------------------------------------------------------------------------------


@dataclass
class Sample:
    """An input, told briefly: enough to find it again (seed, chunk, index) and to see it."""

    chunk: int
    index: int
    how: str
    length: int
    sha256: str
    head: str

    @classmethod
    def of(cls, item: Input, chunk: int, index: int) -> Sample:
        value = item.value
        if value is None:
            return cls(chunk, index, item.how, -1, "", "None (a tombstone)")
        return cls(chunk, index, item.how, len(value), hashlib.sha256(value).hexdigest()[:16],
                   repr(value[:72]) + ("…" if len(value) > 72 else ""))

    def __str__(self) -> str:
        return (f"{self.how}, {self.length:,} bytes, sha256 {self.sha256}…, "
                f"chunk {self.chunk} #{self.index}: {self.head}")


@dataclass
class Finding:
    path: str
    what: str  # "raised" (out of the codec or the path) | "caught" (a failure of stage code)
    error: str
    trace: str
    sample: Sample


@dataclass
class Result:
    tried: Counter[str] = field(default_factory=Counter)
    times: dict[str, array[float]] = field(default_factory=dict)
    # per path, its TOP slowest inputs as measured, slowest first
    slowest: dict[str, list[tuple[float, Sample]]] = field(default_factory=dict)
    foreign: Counter[str] = field(default_factory=Counter)  # raised out of the path
    caught: Counter[str] = field(default_factory=Counter)  # failures its guard dead-lettered
    # one per (path, how, exception type, where it was raised): its count and first input
    findings: dict[tuple[str, str, str, str], tuple[int, Finding]] = field(default_factory=dict)
    how: Counter[str] = field(default_factory=Counter)

    def found(self, signature: tuple[str, str, str, str], n: int, finding: Finding) -> None:
        known = self.findings.get(signature)
        self.findings[signature] = (n + (known[0] if known else 0),
                                    known[1] if known else finding)

    def merge(self, other: Result) -> None:
        self.tried.update(other.tried)
        self.foreign.update(other.foreign)
        self.caught.update(other.caught)
        self.how.update(other.how)
        for path, times in other.times.items():
            self.times.setdefault(path, array("f")).extend(times)
        for path, top in other.slowest.items():
            merged = self.slowest.get(path, []) + top
            merged.sort(key=lambda ts: -ts[0])
            self.slowest[path] = merged[:TOP]
        for signature, (n, finding) in other.findings.items():
            self.found(signature, n, finding)

    def slowest_of(self, path: str) -> float:
        top = self.slowest.get(path)
        return top[0][0] if top else 0.0


def run_chunk(seed: int, chunk: int, n: int, valid: bool) -> Result:
    """Every input of one chunk through every path."""
    logging.disable(logging.CRITICAL)  # the guards log each dead letter: not the figure here
    result = Result(times={p: array("f") for p in PATHS})
    items = list(inputs(seed, chunk, n, valid=valid))
    warmup = list(inputs(seed, -1 - chunk, 20, valid=True))
    with tempfile.TemporaryDirectory(prefix="pw-fuzz-") as tmp:
        consumers = Consumers(Path(tmp))
        # First calls fill caches (a table's column types, lazy imports): not a message's cost.
        asyncio.run(_run(consumers, warmup, -1, Result(times={p: array("f") for p in PATHS})))
        gc.collect()
        gc.freeze()  # the inputs and the consumers: not for each collection to walk again
        try:
            asyncio.run(_run(consumers, items, chunk, result))
        finally:
            gc.unfreeze()
    return result


async def _run(consumers: Consumers, items: list[Input], chunk: int, result: Result) -> None:
    clock = time.perf_counter
    paths = list(consumers.paths.items())
    offset = chunk * CHUNK * 2
    for index, item in enumerate(items):
        result.how[item.how.split("+", 1)[0]] += 1
        for name, path in paths:
            if name in (CODEC,) and item.value is None:
                continue
            offset += 1
            t0 = clock()
            try:
                await path(item, offset)
            except Exception as exc:
                elapsed = clock() - t0
                (result.caught if isinstance(exc, Caught) else result.foreign)[name] += 1
                _found(result, name, exc, item, chunk, index)
            else:
                elapsed = clock() - t0
            result.tried[name] += 1
            result.times[name].append(elapsed)
            top = result.slowest.setdefault(name, [])
            if len(top) < TOP or elapsed > top[-1][0]:
                top.append((elapsed, Sample.of(item, chunk, index)))
                top.sort(key=lambda ts: -ts[0])
                del top[TOP:]


def _found(result: Result, path: str, exc: Exception, item: Input, chunk: int,
           index: int) -> None:
    original = exc.original if isinstance(exc, Caught) else exc
    what = "caught by its guard" if isinstance(exc, Caught) else "raised"
    frames = traceback.extract_tb(original.__traceback__)
    where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"
    signature = (path, what, type(original).__name__, where)
    if signature in result.findings:
        result.found(signature, 1, result.findings[signature][1])
        return
    result.found(signature, 1, Finding(
        path, what, f"{type(original).__name__}: {original}"[:300],
        "".join(traceback.format_exception(original))[-3000:], Sample.of(item, chunk, index)))


TOP = 5  # slowest inputs kept per path, timed again alone at the end


def retime(hostile: Result, seed: int, repeats: int = 3) -> dict[str, tuple[float, Sample]]:
    """Each path's slowest input, found again among its TOP slowest by timing each of them
    alone (the best of `repeats`, on consumers built afresh): a pause of the machine or of the
    collector while the fuzz ran is not the input's cost."""
    logging.disable(logging.CRITICAL)
    wanted = {(s.chunk, s.index) for top in hostile.slowest.values() for _, s in top}
    by_chunk: dict[int, dict[int, Input]] = {}
    for chunk in sorted({c for c, _ in wanted}):
        last = max(i for c, i in wanted if c == chunk)
        by_chunk[chunk] = {i: item for i, item in enumerate(inputs(seed, chunk, last + 1,
                                                                   valid=False))
                           if (chunk, i) in wanted}
    out: dict[str, tuple[float, Sample]] = {}
    with tempfile.TemporaryDirectory(prefix="pw-fuzz-") as tmp:
        for path, top in hostile.slowest.items():
            for _, sample in top:
                item = by_chunk[sample.chunk][sample.index]
                best = min(_time_alone(Path(tmp), path, item) for _ in range(repeats))
                if best > out.get(path, (-1.0, sample))[0]:
                    out[path] = (best, sample)
    return out


def _time_alone(tmp: Path, path: str, item: Input) -> float:
    consumers = Consumers(tmp)
    warm = Result(times={p: array("f") for p in PATHS})
    asyncio.run(_run(consumers, list(inputs(0, -1, 20, valid=True)), -1, warm))

    async def once() -> float:
        t0 = time.perf_counter()
        with contextlib.suppress(Exception):  # (what it raised was counted in the run)
            await consumers.paths[path](item, 1)
        return time.perf_counter() - t0

    return asyncio.run(once())


def _task(args: tuple[int, int, int, bool]) -> Result:
    return run_chunk(*args)


def run(count: int, seed: int, *, baseline: int | None = None, workers: int = 1
        ) -> tuple[Result, Result]:
    """(hostile, valid): `count` hostile inputs and `baseline` valid ones (default `count`)
    through every path, over `workers` processes (1: in this process)."""
    baseline = count if baseline is None else baseline
    tasks = [(seed, c, min(CHUNK, count - c * CHUNK), False)
             for c in range((count + CHUNK - 1) // CHUNK)]
    tasks += [(seed, c, min(CHUNK, baseline - c * CHUNK), True)
              for c in range((baseline + CHUNK - 1) // CHUNK)]
    hostile, valid = Result(), Result()
    if workers <= 1:
        results: Iterator[Result] = map(_task, tasks)
        for spec, r in zip(tasks, results, strict=True):
            (valid if spec[3] else hostile).merge(r)
        return hostile, valid
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        for spec, r in zip(tasks, pool.imap(_task, tasks), strict=True):
            (valid if spec[3] else hostile).merge(r)
    return hostile, valid


def _quantile(times: Sequence[float], q: float) -> float:
    if not times:
        return 0.0
    ordered = sorted(times)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _fmt(seconds: float) -> str:
    if seconds >= 0.1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.0f} us"


def report(hostile: Result, valid: Result, *, count: int, seed: int, workers: int,
           wall: float, retimed: dict[str, tuple[float, Sample]]) -> list[str]:
    n_valid = sum(valid.how.values())
    lines = [f"procwarden fuzz: {count:,} hostile inputs (seed {seed}) and {n_valid:,} "
             f"valid ones (the baseline) through {len(PATHS)} paths, {workers} worker(s), "
             f"{wall:.0f} s wall, Python {sys.version.split()[0]}",
             "mutations: " + ", ".join(f"{k} {v:,}" for k, v in sorted(hostile.how.items()))]
    for path in PATHS:
        h, v = hostile.times.get(path, array("f")), valid.times.get(path, array("f"))
        alone = retimed.get(path)
        lines.append(
            f"{path:<31} tried {hostile.tried[path]:>9,} | foreign {hostile.foreign[path]} | "
            f"caught failures {hostile.caught[path]} | "
            f"hostile median {_fmt(_quantile(h, 0.5))} p99.9 {_fmt(_quantile(h, 0.999))} "
            f"slowest {_fmt(hostile.slowest_of(path))} | baseline valid median "
            f"{_fmt(_quantile(v, 0.5))} p99.9 {_fmt(_quantile(v, 0.999))} "
            f"slowest {_fmt(valid.slowest_of(path))}")
        if alone is not None:
            lines.append(f"{'':<31} slowest input, timed alone: {_fmt(alone[0])}: {alone[1]}")
    lines.append(f"inputs tried: {count:,} (each through every path: "
                 f"{sum(hostile.tried.values()):,} path runs)")
    lines.append(f"foreign exceptions: {foreign(hostile, valid)} (must be 0: out of the codec "
                 "other than DecodeError, or out of a consumer's per-message path)")
    lines.append(f"failures caught by a guard: {caught(hostile, valid)} (exceptions of a stage's "
                 "own code, dead-lettered as failed: neither DecodeError, Refused nor a refused "
                 "output)")
    for result in (hostile, valid):
        for n, f in result.findings.values():
            lines.append(f"{'FOREIGN' if f.what == 'raised' else 'CAUGHT'} {f.path}, {f.what}, "
                         f"{n:,} time(s): {f.error}\n"
                         f"  first input: {f.sample}\n"
                         + "\n".join("  " + ln for ln in f.trace.splitlines()))
    return lines


def foreign(*results: Result) -> int:
    return sum(sum(r.foreign.values()) for r in results)


def caught(*results: Result) -> int:
    return sum(sum(r.caught.values()) for r in results)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--count", type=int, default=1_000_000, help="hostile inputs")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--baseline", type=int, default=None,
                        help="valid inputs for the baseline (default: --count)")
    parser.add_argument("--workers", type=int, default=min(2, multiprocessing.cpu_count()),
                        help="processes (default: 2, or 1 on one core)")
    parser.add_argument("--strict", action="store_true",
                        help="exit 1 for failures caught by a guard too")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    hostile, valid = run(args.count, args.seed, baseline=args.baseline, workers=args.workers)
    wall = time.perf_counter() - started
    retimed = retime(hostile, args.seed)
    for line in report(hostile, valid, count=args.count, seed=args.seed, workers=args.workers,
                       wall=wall, retimed=retimed):
        print(line)
    bad = foreign(hostile, valid) + (caught(hostile, valid) if args.strict else 0)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
