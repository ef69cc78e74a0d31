"""The wire codec: strict decoding, field-naming errors, golden files, fuzzed input."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import (
    PAYLOAD_TYPES,
    Baseline,
    CollectorReport,
    DecodeError,
    Envelope,
    ExecCheck,
    ExecEvent,
    FailMode,
    FileEvent,
    FileOp,
    GroupKind,
    GroupPolicy,
    HoldSettings,
    Mode,
    Origin,
    ProcessSnapshot,
    ProfilePatch,
    RuleChange,
    TunnelSighting,
    decode_envelope,
    decode_json,
    decode_record,
    encode,
)
from schemas.records import replace
from schemas.topics import ALL_TOPICS, verdict_partition
from tests.builders import NODE, World, container, group, learned_rule

GOLDEN = Path(__file__).parent.parent / "golden"


def _samples() -> dict[str, Envelope]:
    world = World(groups=[group(mode=Mode.PROTECT, rules=(learned_rule("ls", "/bin/ls"),))])
    decision = world.exec("/bin/cat", argv=("cat", "--password=x"), pid=4242, ppid=1)
    # Ids that depend on how many events this process made before would make the file flaky.
    assert decision.incident is not None
    decision = replace(decision, event_id="e-decision", incident=replace(
        decision.incident, id="6d1c1f0e-golden-incident"))
    wrap = lambda p, i: Envelope.wrap(p, event_id=i, node=NODE, ts=1_700_000_000.5,  # noqa: E731
                                      cluster="prod")
    return {
        "workload": wrap(container(image="nginx:1.25", labels={"app": "web"},
                                   probe_cmds=(("cat", "/tmp/ok"),)), "e-workload"),
        "exec": wrap(ExecEvent(workload_id="c1", pid=10, path="/usr/bin/curl", name="curl",
                               argv=("curl", "-s", "http://x"), ppid=1, pgid=10, sid=1,
                               start_time=123456, ruid=1000, euid=1000, user="app",
                               real_user="app", parent_name="sh", parent_path="/bin/sh",
                               family=False, runtime_injected=True, origin=Origin.MODIFIED,
                               hash="ab" * 32), "e-exec"),
        "exec_check": wrap(ExecCheck(workload_id="c1", pid=11, path="/tmp/dropped",
                                     start_time=123457, euid=0, user="root", name="sh",
                                     origin=Origin.NEW), "e-exec-check"),
        "collector_report": wrap(CollectorReport(node=NODE, started_at=1_700_000_000.0,
                                                 execs=1200, reported=1190,
                                                 lost={"process_gone": 10}, spool_bytes=0),
                                 "e-report"),
        "file": wrap(FileEvent("c1", FileOp.ATTRIB, "/tmp/x", executable=True, pid=7,
                               proc_name="chmod", proc_path="/bin/chmod"), "e-file"),
        "policy": wrap(group(rules=(learned_rule("ls", "/bin/ls"),), hash_enabled=True,
                             hash_pins={"/bin/ls": "cd" * 32}), "e-policy"),
        "profile_patch": wrap(ProfilePatch(group="nv.web.demo", baseline="basic",
                                           process_change_list=(RuleChange("ls", "/bin/ls",
                                                                           "deny"),)),
                              "e-patch"),
        "verdict": wrap(decision, "e-verdict"),
        "hold_settings": wrap(HoldSettings(workload_id="c1", node=NODE, group="nv.web.demo",
                                           policy_version=4, pre_exec=True, pre_write=True,
                                           policy_stamp="8aec97256382712c",
                                           fail_mode=FailMode.CLOSED), "e-hold:hold:c1"),
        "process_state": wrap(ProcessSnapshot(workload_id="c1", seq=7, risk={"42": "nmap"},
                                              probe_shells=(50,), admitted_pgids=(60,),
                                              tunnels=(TunnelSighting(70, 123, True),),
                                              drift=("/tmp/x",)), "state:c1:7"),
    }


@pytest.mark.parametrize("name", sorted(_samples()))
def test_golden(name: str) -> None:
    env = _samples()[name]
    path = GOLDEN / f"{name}.json"
    encoded = orjson.dumps(orjson.loads(encode(env)), option=orjson.OPT_INDENT_2) + b"\n"
    if os.environ.get("PROCWARDEN_UPDATE_GOLDEN") == "1":
        path.write_bytes(encoded)
    assert path.read_bytes() == encoded, f"{path.name} differs from what the codec writes"
    assert decode_envelope(path.read_bytes()) == env


def test_every_kind_has_a_payload_type() -> None:
    from schemas import EventKind

    assert set(PAYLOAD_TYPES) == set(EventKind)


ERRORS: dict[str, tuple[Any, str, str]] = {
    "not json": (b"{", "", "not valid JSON"),
    "not an object": ([], "", "JSON object"),
    "missing header": ({"schema_version": 1}, "event_id", "required"),
    "unknown header": ({"schema_version": 1, "extra": 1}, "extra", "unknown field"),
    "no version": ({"event_id": "e"}, "schema_version", "required"),
    "future version": ("version", "schema_version", "unsupported version 2"),
    "unknown kind": ("kind", "kind", "unknown value 'telepathy'"),
    "unknown enum in payload": ("origin", "payload.origin", "unknown value 'space'"),
    "wrong type": ("pid", "payload.pid", "expected an integer, got string"),
    "bool is not int": ("pidbool", "payload.pid", "expected an integer, got boolean"),
    "bad array item": ("argv", "payload.argv[1]", "expected a string, got integer"),
    "unknown payload field": ("typo", "payload.exe", "unknown field"),
    "missing payload field": ("missing", "payload.path", "required field is missing"),
    # Found by bench/fuzz.py: a time no date type holds broke the sinks' DateTime64 and SIEM
    # timestamps downstream instead of being refused here.
    "time before the epoch": ("ts-", "ts", "is not a time"),
    "time after year 9999": ("ts+", "ts", "is not a time"),
}

_GOOD = {"schema_version": 1, "event_id": "e", "node": "n", "cluster": "c", "ts": 1,
         "kind": "exec", "payload": {"workload_id": "w", "pid": 1, "path": "/bin/ls"}}


def _mutate(how: str) -> dict[str, Any]:
    msg = orjson.loads(orjson.dumps(_GOOD))
    p = msg["payload"]
    if how == "version":
        msg["schema_version"] = 2
    elif how == "kind":
        msg["kind"] = "telepathy"
    elif how == "origin":
        p["origin"] = "space"
    elif how == "pid":
        p["pid"] = "1"
    elif how == "pidbool":
        p["pid"] = True
    elif how == "argv":
        p["argv"] = ["ls", 3]
    elif how == "typo":
        p["exe"] = "/bin/ls"
    elif how == "missing":
        del p["path"]
    elif how == "ts-":
        msg["ts"] = -1
    elif how == "ts+":
        msg["ts"] = 1e300
    return dict(msg)


@pytest.mark.parametrize("case", ERRORS.values(), ids=ERRORS.keys())
def test_decode_errors_name_field_and_reason(case: tuple[Any, str, str]) -> None:
    data, field, reason = case
    raw = orjson.dumps(_mutate(data)) if isinstance(data, str) else (
        data if isinstance(data, bytes) else orjson.dumps(data))
    with pytest.raises(DecodeError) as err:
        decode_envelope(raw)
    assert err.value.field == field
    assert reason in err.value.reason


def test_hold_settings_travel_as_their_own_kind_and_the_old_policy_verdict_is_refused() -> None:
    """Hold settings were once a `verdict` of event kind `policy`, reason `policy-state`; this
    build reads them only as `hold_settings`, and the old form is a decode error (its reason is
    no code any more), so no consumer acts on it as a decision."""
    hold = _samples()["hold_settings"]
    plain = orjson.loads(encode(hold))
    assert plain["kind"] == "hold_settings" and "reason" not in plain["payload"]
    verdict = orjson.loads(encode(_samples()["verdict"]))
    verdict["payload"].update(event_kind="policy", verdict="none", reason="policy-state",
                              incident=None)
    with pytest.raises(DecodeError, match="unknown reason code 'policy-state'"):
        decode_envelope(orjson.dumps(verdict))
    for kind, payload in (("verdict", plain["payload"]), ("hold_settings", verdict["payload"])):
        with pytest.raises(DecodeError):  # each kind reads only its own record
            decode_envelope(orjson.dumps({**plain, "kind": kind, "payload": payload}))


def test_record_invariants_are_decode_errors() -> None:
    with pytest.raises(DecodeError, match="custom group has no mode"):
        decode_record(GroupPolicy, {"name": "x", "kind": "custom", "mode": "Protect"})
    with pytest.raises(DecodeError, match="baseline is always basic"):
        decode_record(GroupPolicy, {"name": "nodes", "kind": "nodes", "mode": "Protect",
                                    "baseline": "zero-drift"})
    ok = decode_record(GroupPolicy, {"name": "nv.a.b", "kind": "learned", "mode": "Monitor",
                                     "baseline": "basic"})
    assert (ok.kind, ok.mode, ok.baseline) == (GroupKind.LEARNED, Mode.MONITOR, Baseline.BASIC)


def test_float_fields_accept_integers_only_as_numbers() -> None:
    assert decode_envelope(orjson.dumps(_GOOD)).ts == 1.0
    with pytest.raises(DecodeError):
        decode_envelope(orjson.dumps({**_GOOD, "ts": "1"}))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_only_raise_decode_errors(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode_envelope(data)


_json = st.recursive(st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False)
                     | st.text(max_size=5),
                     lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(k.value for k in PAYLOAD_TYPES)), _json)
def test_random_payloads_only_raise_decode_errors(kind: str, payload: Any) -> None:
    with contextlib.suppress(DecodeError):
        decode_envelope(orjson.dumps({**_GOOD, "kind": kind, "payload": payload}))


def test_topics_are_named_and_keyed() -> None:
    names = {t.name for t in ALL_TOPICS}
    assert len(names) == len(ALL_TOPICS) and all(n.startswith("procwarden.") for n in names)
    compacted = {t.name for t in ALL_TOPICS if t.compacted}
    assert compacted == {"procwarden.policy", "procwarden.workloads", "procwarden.process-state"}


@pytest.mark.parametrize("key,expected", [
    ("21", -973932308), ("foobar", -790332482), ("abc", 479470107),
    ("a-little-bit-long-string", -985981536), ("a-little-bit-longer-string", -1486304829),
    ("lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971)])
def test_verdict_partition_uses_kafkas_murmur2(key: str, expected: int) -> None:
    # Reference values from Kafka's own partitioner tests (Utils.murmur2).
    assert verdict_partition(key, 2**31 - 1) == (expected & 0x7FFFFFFF) % (2**31 - 1)


# -- hostile input: nesting and size are bounded at the boundary ---------------------------------

def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def _exec_with_argv(argv: bytes) -> bytes:
    return (b'{"schema_version":1,"event_id":"e","node":"n","cluster":"c","ts":1,"kind":"exec",'
            b'"payload":{"workload_id":"w","pid":1,"path":"/bin/ls","argv":' + argv + b"}}")


@pytest.mark.parametrize("depth", [65, 1000, 5000, 200_000])
def test_deep_nesting_is_a_decode_error_naming_the_limit(depth: int) -> None:
    # 1,000 levels escaped as RecursionError from msgspec and crashed every consumer.
    for decode in (lambda: decode_envelope(_exec_with_argv(_nested(depth))),
                   lambda: decode_envelope(_exec_with_argv(_nested(depth)).decode()),
                   lambda: decode_json(_nested(depth))):
        with pytest.raises(DecodeError, match="nesting deeper than 64 levels"):
            decode()


def test_deep_nesting_of_parsed_data_is_a_decode_error() -> None:
    # Data parsed elsewhere (YAML, an API body) reaches decode_record as Python objects.
    deep: Any = "x"
    for _ in range(5000):
        deep = {"a": [deep]}
    for cls in (GroupPolicy, ExecEvent):
        with pytest.raises(DecodeError, match="nesting deeper than 64 levels"):
            decode_record(cls, deep)
    with pytest.raises(DecodeError, match="nesting deeper than 64 levels"):
        decode_envelope({**_GOOD, "payload": deep})


def test_nesting_at_the_limit_is_judged_by_the_schema() -> None:
    with pytest.raises(DecodeError) as err:
        decode_envelope(_exec_with_argv(_nested(62)))  # 64 levels with the envelope's two
    assert err.value.field == "payload.argv[0]" and "nesting" not in err.value.reason
    assert decode_json(_nested(64)) == orjson.loads(_nested(64))


def test_an_oversized_message_is_a_decode_error_naming_the_limit() -> None:
    huge = _exec_with_argv(orjson.dumps(["x" * (1 << 20)]))
    for data in (huge, huge.decode()):
        with pytest.raises(DecodeError, match=r"over the limit of 1048576 bytes"):
            decode_envelope(data)
        with pytest.raises(DecodeError, match=r"over the limit of 1048576 bytes"):
            decode_json(data)
    # Text is measured in UTF-8: 300,000 four-byte characters are 1.2 MB.
    with pytest.raises(DecodeError, match="over the limit"):
        decode_json(orjson.dumps(["\U0001F600" * 300_000]).decode())


def test_the_limits_are_configurable() -> None:
    from schemas import codec

    msg = _exec_with_argv(orjson.dumps(["x" * 5000]))
    assert decode_envelope(msg).payload.argv == ("x" * 5000,)  # type: ignore[union-attr]
    previous = codec.set_limits(max_message_bytes=4096, max_depth=3)
    try:
        with pytest.raises(DecodeError, match="over the limit of 4096 bytes"):
            decode_envelope(msg)
        with pytest.raises(DecodeError, match="nesting deeper than 3 levels"):
            decode_json(_nested(4))
    finally:
        codec.set_limits(max_message_bytes=previous.max_message_bytes,
                         max_depth=previous.max_depth)
    assert decode_envelope(msg).payload.argv == ("x" * 5000,)  # type: ignore[union-attr]
    with pytest.raises(ValueError):
        codec.set_limits(max_depth=2)


def test_the_limits_come_from_the_environment_as_a_command_starts() -> None:
    import subprocess
    import sys

    from schemas import codec

    env = {"PROCWARDEN_MAX_MESSAGE_BYTES": "2048", "PROCWARDEN_MAX_NESTING": "20"}
    assert codec.limits_from_env(env) == codec.CodecLimits(2048, 20)
    with pytest.raises(ValueError, match="PROCWARDEN_MAX_NESTING: expected an integer"):
        codec.limits_from_env({"PROCWARDEN_MAX_NESTING": "many"})
    # Importing reads nothing; a command applies them, and a bad one is one line naming it.
    code = ("import os; os.environ['PROCWARDEN_MAX_NESTING'] = 'many'; "
            "from schemas import codec; print(codec.limits().max_depth)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).parents[2]).stdout
    assert out.split() == ["64"]
    big = {**_GOOD, "payload": {**_GOOD["payload"], "path": "/" + "a" * 2000}}
    line = orjson.dumps(big).decode() + "\n"
    run = [sys.executable, "-m", "procwarden.cli", "decide", "-"]
    small = subprocess.run(run, input=line, capture_output=True, text=True, check=False,
                           env={**os.environ, "PROCWARDEN_MAX_MESSAGE_BYTES": "1024",
                                "PROCWARDEN_MAX_NESTING": "3"}, cwd=Path(__file__).parents[2])
    assert small.returncode == 1 and "1024" in small.stdout, small
    bad = subprocess.run(run, input=line, capture_output=True, text=True, check=False,
                         env={**os.environ, "PROCWARDEN_MAX_NESTING": "many"},
                         cwd=Path(__file__).parents[2])
    assert bad.returncode == 2 and "bad setting: PROCWARDEN_MAX_NESTING" in bad.stderr, bad
