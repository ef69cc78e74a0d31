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
