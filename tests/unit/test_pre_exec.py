"""§14: the pre-exec answer, and its invariant: it never denies what post-exec would allow."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import Baseline, ExecEvent, Mode, Origin, RuleSource, Verdict
from streams.engine import EngineSettings, ProcessState, build_view, decide, pre_exec_decide
from tests.builders import WEB, container, envelope, group, host, rule


def view(rules: tuple[object, ...] = (), mode: Mode = Mode.PROTECT,
         baseline: Baseline = Baseline.BASIC, system: bool = False):  # type: ignore[no-untyped-def]
    policies = {WEB: group(mode=mode, baseline=baseline, rules=rules),  # type: ignore[arg-type]
                "nodes": group("nodes", mode=mode)}
    return build_view(policies, container(system=system), EngineSettings())


CASES = {
    "unlisted is denied": ((), {}, False, "not-in-profile"),
    "allowed by name": ((rule("app", ""),), {}, True, "decided-after-exec"),
    "deny any name first": ((rule("*", "/tmp/*", "deny"), rule("*", "*")), {}, True,
                            "decided-after-exec"),
    "deny any name for the path": ((rule("*", "/opt/*", "deny"), rule("app", "/opt/app")), {},
                                   False, "deny-rule"),
    "named deny is left to post-exec": ((rule("app", "", "deny"),), {}, False, "not-in-profile"),
    "runtime-injected is held for post-exec": ((), {"runtime_injected": True}, True,
                                               "runtime-injected"),
    "busybox is decided after exec": ((), {"exe": "/bin/busybox"}, True, "decided-after-exec"),
    "parent rules defer": ((rule("sh/*", ""),), {}, True, "parent-rules"),
    "exe outside the container": ((), {"exe_on_host": True}, True, "outside-container"),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_pre_exec(case: tuple[tuple[object, ...], dict[str, object], bool, str]) -> None:
    rules, facts, allow, reason = case
    exe = str(facts.pop("exe", "/opt/app"))
    answer = pre_exec_decide(view(rules), exe, runtime_injected=bool(facts.get("runtime_injected")),
                             image_file=True, exe_on_host=bool(facts.get("exe_on_host")))
    assert answer.allow is allow
    assert answer.reason.startswith(reason)


def test_pre_exec_zero_drift_new_file() -> None:
    v = view((rule("app", "/opt/app"),), baseline=Baseline.ZERO_DRIFT)
    assert not pre_exec_decide(v, "/opt/app", runtime_injected=False, image_file=False).allow
    v = view((rule("app", "/opt/app", allow_update=True),), baseline=Baseline.ZERO_DRIFT)
    assert pre_exec_decide(v, "/opt/app", runtime_injected=False, image_file=False).allow


def test_pre_exec_only_in_protect_for_non_system_containers() -> None:
    for v in (view(mode=Mode.MONITOR), view(system=True)):
        assert pre_exec_decide(v, "/opt/app", runtime_injected=False, image_file=True).allow
    hv = build_view({"nodes": group("nodes", mode=Mode.PROTECT)}, host(), EngineSettings())
    assert pre_exec_decide(hv, "/opt/app", runtime_injected=False, image_file=True).allow


def test_netcat_paths_are_decided_after_exec() -> None:
    answer = pre_exec_decide(view(), "/usr/bin/nc", runtime_injected=False, image_file=True,
                             netcat_paths=frozenset({"/usr/bin/nc"}))
    assert answer.allow


names = st.sampled_from(["*", "sh", "app", "busybox", "nc"])
paths = st.sampled_from(["", "*", "/*", "/opt/*", "/opt/app", "/usr/*/app", "/tmp/*"])


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(names, paths, st.sampled_from(["allow", "deny"]), st.booleans(),
                          st.sampled_from([RuleSource.USER_CREATED, RuleSource.LEARNED,
                                           RuleSource.GROUND])), max_size=6),
       st.sampled_from(["/opt/app", "/opt/x/app", "/tmp/app", "/usr/local/app"]),
       st.sampled_from(list(Baseline)), st.booleans(), st.booleans())
def test_pre_exec_never_denies_what_post_exec_allows(
        specs: list[tuple[str, str, str, bool, RuleSource]], exe: str, baseline: Baseline,
        image: bool, family: bool) -> None:
    rules = tuple(rule(n, p, a, allow_update=u, source=s, uuid=f"r{i}", users=())
                  for i, (n, p, a, u, s) in enumerate(specs)
                  if not (n == "*" and p == "") and not (a == "deny" and n == "*" and p in ("*", "/*")))
    v = view(rules, baseline=baseline)
    if pre_exec_decide(v, exe, runtime_injected=False, image_file=image).allow:
        return
    for pname in ("sh", "app", "busybox", "nc", "x", exe.rsplit("/", 1)[-1]):
        ev = ExecEvent(workload_id="c1", pid=5, path=exe, name=pname, argv=(pname,),
                       family=family, origin=Origin.IMAGE if image else Origin.NEW, user="root",
                       parent_name="bash")
        d, _ = decide(v, ProcessState(), envelope(ev))
        assert d.verdict is Verdict.BLOCK, (pname, d.reason)
