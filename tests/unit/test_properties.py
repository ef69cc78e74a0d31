"""Properties of the engine over random profiles and events (hypothesis)."""

from __future__ import annotations

import dataclasses

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import Baseline, ExecEvent, Mode, Origin, RuleSource, Verdict
from streams.engine import EngineSettings, ProcessState, apply_learn, build_view, decide, merge
from tests.builders import WEB, container, envelope, group, rule

names = st.sampled_from(["*", "sh", "ls", "nc", "busybox", "curl", "sh/*"])
paths = st.sampled_from(["", "*", "/*", "/bin/*", "/usr/*", "/bin/sh", "/bin/busybox",
                         "/usr/bin/curl", "/usr/*/curl"])
sources = st.sampled_from(list(RuleSource))
rules = st.lists(st.tuples(names, paths, st.sampled_from(["allow", "deny"]), sources,
                           st.booleans(), st.sampled_from([(), ("root",), ("app",)])),
                 max_size=8)
execs = st.builds(
    ExecEvent,
    workload_id=st.just("c1"),
    pid=st.integers(1, 50),
    path=st.sampled_from(["/bin/sh", "/bin/busybox", "/usr/bin/curl", "/usr/local/curl",
                          "/tmp/x", "/bin/nc"]),
    name=st.sampled_from(["sh", "ls", "nc", "busybox", "curl", "x", ""]),
    argv=st.sampled_from([(), ("ls",), ("busybox", "nc", "-l"), ("nc", "-w1", "localhost")]),
    ppid=st.integers(0, 50),
    pgid=st.integers(0, 5),
    user=st.sampled_from(["root", "app"]),
    parent_name=st.sampled_from(["", "sh", "nc", "bash"]),
    family=st.booleans(),
    runtime_injected=st.booleans(),
    origin=st.sampled_from(list(Origin)),
    hash=st.sampled_from(["", "aa", "bb"]),
)


def _view(mode: Mode, baseline: Baseline, specs: list[tuple[object, ...]], system: bool,
          hash_enabled: bool):  # type: ignore[no-untyped-def]
    made = []
    for i, (n, p, a, src, upd, users) in enumerate(specs):
        if n == "*" and p == "":
            continue  # invalid, never stored
        if a == "deny" and n == "*" and p in ("*", "/*"):
            continue
        made.append(rule(str(n), str(p), str(a), source=src, allow_update=bool(upd),  # type: ignore[arg-type]
                         users=users if src is RuleSource.LEARNED else (), uuid=f"r{i}"))  # type: ignore[arg-type]
    policies = {WEB: group(mode=mode, baseline=baseline, rules=tuple(made),
                           hash_enabled=hash_enabled, hash_pins={"/bin/sh": "aa"})}
    return policies, build_view(policies, container(system=system), EngineSettings())


common = dict(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@settings(**common)  # type: ignore[arg-type]
@given(st.sampled_from(list(Baseline)), rules, st.lists(execs, min_size=1, max_size=6),
       st.booleans(), st.booleans())
def test_discover_never_blocks(baseline: Baseline, specs: list[tuple[object, ...]],
                               events: list[ExecEvent], system: bool, hashes: bool) -> None:
    _, view = _view(Mode.DISCOVER, baseline, specs, system, hashes)
    state = ProcessState()
    for ev in events:
        d, effect = decide(view, state, envelope(ev))
        state.apply(effect)
        assert d.verdict is not Verdict.BLOCK


@settings(**common)  # type: ignore[arg-type]
@given(st.sampled_from([Mode.MONITOR, Mode.PROTECT]), st.sampled_from(list(Baseline)), rules,
       st.lists(execs, min_size=1, max_size=6), st.booleans())
def test_only_discover_learns_rules(mode: Mode, baseline: Baseline,
                                    specs: list[tuple[object, ...]], events: list[ExecEvent],
                                    system: bool) -> None:
    _, view = _view(mode, baseline, specs, system, False)
    state = ProcessState()
    for ev in events:
        d, effect = decide(view, state, envelope(ev))
        state.apply(effect)
        assert d.verdict is not Verdict.LEARN and d.learn is None
        if system:
            assert d.verdict is not Verdict.BLOCK


@settings(**common)  # type: ignore[arg-type]
@given(st.sampled_from(list(Mode)), st.sampled_from(list(Baseline)), rules, execs, st.booleans())
def test_deciding_twice_gives_the_same_answer(mode: Mode, baseline: Baseline,
                                              specs: list[tuple[object, ...]], ev: ExecEvent,
                                              hashes: bool) -> None:
    _, view = _view(mode, baseline, specs, False, hashes)
    state = ProcessState(risk={3: "nc"}, admitted_pgids={2})
    snapshot = dataclasses.replace(state, risk=dict(state.risk),
                                   admitted_pgids=set(state.admitted_pgids))
    env = envelope(ev)
    first = decide(view, state, env)
    second = decide(view, state, env)
    assert first == second
    assert state == snapshot  # decide never mutates its inputs


@settings(**common)  # type: ignore[arg-type]
@given(st.sampled_from(list(Baseline)), rules, execs)
def test_learning_is_idempotent(baseline: Baseline, specs: list[tuple[object, ...]],
                                ev: ExecEvent) -> None:
    policies, view = _view(Mode.DISCOVER, baseline, specs, False, True)
    d, _ = decide(view, ProcessState(), envelope(ev))
    if d.learn is None:
        return
    once = merge(policies, [apply_learn(policies, d.learn)])
    twice = merge(once, [apply_learn(once, d.learn)])
    assert once == twice
    if d.reason == "learn":
        again, _ = decide(build_view(once, container(), EngineSettings()), ProcessState(),
                          envelope(ev))
        assert again.verdict is not Verdict.LEARN or again.reason != "learn"


# -- the codec: any input raises only its own error ----------------------------------------------

_scalars = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20))
_json_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4)
                            | st.dictionaries(st.text(max_size=10), inner, max_size=4),
                            max_leaves=30)


@st.composite
def _deep(draw: st.DrawFn) -> object:
    """A JSON value under up to 3,000 levels of lists and objects (the 1,000-level attack)."""
    value: object = draw(_json_values)
    for step in _steps(draw, 3000):
        value = [value] if step else {"k": value}
    return value


def _steps(draw: st.DrawFn, most: int) -> list[bool]:
    """Lists (True) and objects (False) to nest, as many as `most`: a short pattern repeated
    (hypothesis draws long lists rarely, and the attack is depth)."""
    depth = draw(st.integers(0, most) | st.sampled_from([63, 64, 65, 1000, most]))
    pattern = draw(st.lists(st.booleans(), min_size=1, max_size=5))
    return [pattern[i % len(pattern)] for i in range(depth)]


def _envelopes(payload: st.SearchStrategy[object]) -> st.SearchStrategy[dict[str, object]]:
    from schemas import EventKind

    return st.fixed_dictionaries({
        "schema_version": st.sampled_from([1, 1, 1, 2, "1"]), "event_id": st.text(max_size=4),
        "node": st.just("n"), "cluster": st.just("c"), "ts": st.floats() | st.integers(),
        "kind": st.sampled_from([k.value for k in EventKind] + ["nope"]), "payload": payload})


def _only_decode_errors(fn: object, *args: object) -> None:
    import contextlib

    from schemas import DecodeError

    with contextlib.suppress(DecodeError):
        fn(*args)  # type: ignore[operator]


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=2000))
def test_any_bytes_raise_only_decode_errors(data: bytes) -> None:
    from schemas import decode_envelope, decode_json

    _only_decode_errors(decode_envelope, data)
    _only_decode_errors(decode_json, data)
    _only_decode_errors(decode_envelope, data.decode("utf-8", "surrogateescape"))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(_json_values, _deep(), _envelopes(_json_values | _deep())))
def test_any_json_value_raises_only_decode_errors(value: object) -> None:
    import orjson

    from schemas import PAYLOAD_TYPES, decode_envelope, decode_json, decode_record

    try:
        text = orjson.dumps(value)
    except (orjson.JSONEncodeError, TypeError):  # orjson writes 254 levels at most
        text = None
    if text is not None:
        _only_decode_errors(decode_envelope, text)
        _only_decode_errors(decode_json, text)
    if isinstance(value, dict):
        _only_decode_errors(decode_envelope, value)
    for cls in PAYLOAD_TYPES.values():
        _only_decode_errors(decode_record, cls, value)


@st.composite
def _deep_text(draw: st.DrawFn) -> bytes:
    """JSON text nested up to 20,000 levels around any value (orjson writes 254 at most)."""
    import orjson

    try:
        inner = orjson.dumps(draw(_json_values))
    except TypeError:  # an integer past 64 bits
        inner = b"0"
    steps = _steps(draw, 20_000)
    head = b"".join(b"[" if s else b'{"k":' for s in steps)
    tail = b"".join(b"]" if s else b"}" for s in reversed(steps))
    if draw(st.booleans()):  # in an envelope's payload, where the RecursionError came from
        head = (b'{"schema_version":1,"event_id":"e","node":"n","cluster":"c","ts":1,"kind":"'
                + draw(st.sampled_from([b"exec", b"policy", b"workload"])) + b'","payload":'
                + head)
        tail += b"}"
    return head + inner + tail


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_deep_text())
def test_deeply_nested_text_raises_only_decode_errors(text: bytes) -> None:
    from schemas import decode_envelope, decode_json

    _only_decode_errors(decode_envelope, text)
    _only_decode_errors(decode_json, text)
