"""A hostile workload against the engine's state: every set it can grow is capped, the records the
worker republishes stay under the producer's 1 MB limit, an overflow fails closed and is reported
once, and a capped group still takes the admin's changes (issue 21)."""

from __future__ import annotations

import time

import pytest

from schemas import (
    Baseline,
    CriteriaKey,
    CriteriaOp,
    Criterion,
    Decision,
    Envelope,
    ExitEvent,
    FileEvent,
    FileOp,
    GroupPolicy,
    Mode,
    Origin,
    ProcessSnapshot,
    ServiceConfig,
    StdioEvent,
    Verdict,
    decode_envelope,
    encode,
)
from streams.engine import EngineSettings, PolicyError, ProcessState, criteria_match
from streams.engine.validation import validate_criteria
from tests.builders import WEB, World, container, group, learned_rule, rule

D, M, P = Mode.DISCOVER, Mode.MONITOR, Mode.PROTECT
ZD, BASIC = Baseline.ZERO_DRIFT, Baseline.BASIC
MB = 1_000_000  # librdkafka's message.max.bytes: a record over it cannot be produced


def _state_record(world: World, wid: str = "c1") -> bytes:
    state = world.session.states[wid]
    snap = state.snapshot(wid)
    return encode(Envelope.wrap(snap, event_id=f"state:{wid}:{snap.seq}", node="streams",
                                ts=1.7e9))


def _policy_record(policy: GroupPolicy) -> bytes:
    return encode(Envelope.wrap(policy, event_id=f"api-x:{policy.name}", node="streams",
                                ts=1.7e9))


def _overflows(decisions: list[Decision]) -> list[Decision]:
    return [d for d in decisions if d.overflow is not None]


def _created(path: str) -> FileEvent:
    return FileEvent("c1", FileOp.CREATE, path, executable=True)


# ---- drift (task 1) ----------------------------------------------------------------------------

@pytest.mark.parametrize(("count", "length"), [(25_000, 48), (1_500, 4_000)],
                         ids=["many short paths", "long paths"])
def test_a_flood_of_created_executables_keeps_the_state_publishable(count: int,
                                                                    length: int) -> None:
    world = World(groups=[group(mode=P, baseline=ZD, rules=(rule("ls", "/bin/ls"),))])
    assert world.exec("/bin/ls").verdict is Verdict.ALLOW
    decisions = []
    for i in range(count):
        path = f"/tmp/{i:08d}".ljust(length, "x")
        decisions.append(world.decide(_created(path)))
    assert len(_state_record(world)) < MB
    assert all(d.verdict is Verdict.BLOCK for d in decisions)  # every one still judged drift
    (first,) = _overflows(decisions)  # one incident, not one per event
    assert first.overflow is not None
    assert first.overflow.name == "Container.Profile.Overflow"
    assert "treated as drifted" in first.overflow.message
    assert first.capped == "drift_paths"
    assert sum(d.capped == "drift_paths" for d in decisions) == count - 1_000
    # Fail closed: the engine no longer knows which files drifted, so none counts as an image
    # file any more, even one the collector says came from the image.
    after = world.exec("/bin/ls", origin=Origin.IMAGE)
    assert (after.verdict, after.reason) == (Verdict.BLOCK, "violation:R5")


def test_an_overflowed_drift_set_stays_overflowed_after_a_restart() -> None:
    settings = EngineSettings(max_drift_paths=3)
    world = World(groups=[group(mode=M, baseline=ZD, rules=(rule("ls", "/bin/ls"),))],
                  settings=settings)
    for i in range(5):
        world.decide(_created(f"/tmp/{i}"))
    snap = decode_envelope(_state_record(world)).payload
    assert isinstance(snap, ProcessSnapshot)
    restarted = World(groups=[group(mode=M, baseline=ZD, rules=(rule("ls", "/bin/ls"),))],
                      settings=settings)
    assert restarted.session.restore_state(snap)
    assert restarted.exec("/bin/ls").reason == "violation:R5"
    # ...and says so only once: the restored worker knows it was reported.
    assert restarted.decide(_created("/tmp/more")).overflow is None
    # Deleting drift files frees slots but forgets nothing: the container stays drifted.
    for i in range(5):
        restarted.decide(FileEvent("c1", FileOp.DELETE, f"/tmp/{i}"))
    assert restarted.exec("/bin/ls").reason == "violation:R5"


def test_long_drift_paths_are_kept_by_digest() -> None:
    """A path over the length cap is remembered by its digest: still drift, still bounded."""
    world = World(groups=[group(mode=M, baseline=ZD, rules=(rule("*", "/opt/*"),))])
    long = "/opt/" + "a" * 5_000
    world.decide(_created(long))
    assert world.exec(long, name="a", origin=Origin.IMAGE).reason == "violation:R5"
    assert world.exec("/opt/" + "a" * 4_999 + "b", name="a").verdict is Verdict.ALLOW
    assert max(len(p) for p in world.session.states["c1"].drift) <= 256


def test_the_worst_process_state_record_is_under_a_megabyte() -> None:
    """Every set filled to its cap with the longest values it can hold."""
    s = EngineSettings()
    big = 2**63 - 1
    drift = {"/" + f"{i:08d}".ljust(s.max_drift_path_bytes - 1, "\x01")[
        : (s.max_drift_path_bytes - 2) // 6] for i in range(s.max_drift_paths)}
    state = ProcessState(
        risk={big - i: "dns2tcpc" for i in range(s.max_tracked_pids)},
        probe_shells={big - i for i in range(s.max_tracked_pids)},
        admitted_pgids={big - i for i in range(s.max_tracked_pids)},
        tunnels={(big - i, 2**64 - 1): False for i in range(s.max_tracked_pids)},
        drift=drift,
        overflow={k: "dns2tcpc" for k in ("drift_paths", "risky_pids", "probe_shells",
                                          "admitted_pgids", "tunnel_sightings")},
        seq=big)
    wid = "w" * 256
    record = encode(Envelope.wrap(state.snapshot(wid), event_id=f"state:{wid}:{big}",
                                  node="n" * 256, ts=1.7e9, cluster="c" * 256))
    assert len(record) < MB, len(record)
    # each stored drift key encodes to at most the cap (escapes included)
    assert all(len(encode(p)) <= s.max_drift_path_bytes for p in drift)


# ---- pid-keyed state (task 3) -----------------------------------------------------------------

def test_risky_processes_are_capped_and_the_overflow_fails_closed() -> None:
    settings = EngineSettings(max_tracked_pids=10)
    world = World(groups=[group(mode=P, baseline=BASIC,
                                rules=(rule("*", "/bin/nc"), rule("ls", "/bin/ls")))],
                  settings=settings)
    decisions = [world.exec("/bin/nc", pid=1000 + i) for i in range(25)]
    assert len(world.session.states["c1"].risk) <= 10
    (first,) = _overflows(decisions)
    assert first.overflow is not None and "risky" in first.overflow.message
    # A process whose parent's risk could not be remembered would run unflagged: so every
    # process of the workload is treated as risky from then on.
    d = world.exec("/bin/ls", ppid=1024, parent_name="sh")
    assert d.reason == "violation:RS" and d.verdict is Verdict.BLOCK


def test_tunnel_sightings_are_capped_and_an_unrecorded_one_is_reported_at_once() -> None:
    settings = EngineSettings(max_tracked_pids=4)
    world = World(groups=[group(mode=M)], settings=settings)

    def stdio(pid: int) -> Decision:
        return world.decide(StdioEvent("c1", pid, name="sh", path="/bin/sh", fd0="socket:[9]",
                                       fd1="socket:[9]", peer="10.0.0.1:4444", start_time=7))

    first = [stdio(pid) for pid in range(1, 5)]
    assert all(d.reason == "none:tunnel-sighted" for d in first)
    late = stdio(99)  # no room to remember a first sighting: confirmed now (fail closed)
    assert late.reason == "reverse-shell" and late.verdict is Verdict.ALERT
    assert late.overflow is not None
    assert len(world.session.states["c1"].tunnels) <= 4
    world.decide(ExitEvent("c1", 1))
    assert stdio(100).reason == "none:tunnel-sighted"  # room again


def test_probe_shells_and_admitted_groups_are_capped() -> None:
    settings = EngineSettings(max_tracked_pids=3)
    world = World(groups=[group(mode=M, rules=(rule("sh/*", "*"), rule("sh", "/bin/sh")))],
                  settings=settings)
    decisions = [world.exec("/bin/cat", pid=100 + i, pgid=100 + i, parent_name="sh",
                            parent_path="/bin/sh") for i in range(6)]
    assert all(d.reason == "parent-rule:sh/*" for d in decisions)
    assert len(world.session.states["c1"].admitted_pgids) <= 3
    assert len(_overflows(decisions)) == 1
    # a group that was not remembered is not admitted later (the cap fails closed by itself)
    later = world.exec("/bin/cat", pgid=105, parent_name="init", parent_path="/sbin/init")
    assert later.verdict is Verdict.ALERT


# ---- learning (task 2) ------------------------------------------------------------------------

def test_a_discover_flood_of_distinct_paths_keeps_the_group_publishable() -> None:
    world = World(groups=[group(mode=D, baseline=BASIC)])
    decisions = [world.exec(f"/opt/{i:06d}/" + "p" * 190, name="p" * 15, user=f"u{i}")
                 for i in range(2_500)]
    policy = world.policy()
    assert len(_policy_record(policy)) < MB
    learned = [d for d in decisions if d.verdict is Verdict.LEARN]
    assert 0 < len(learned) <= EngineSettings().max_learned_rules
    (first,) = _overflows(decisions)
    assert first.overflow is not None and first.overflow.name == "Container.Profile.Overflow"
    assert first.learn is not None and first.learn.capped  # tells the writer to mark the group
    assert policy.learn_capped
    later = decisions[-1]
    assert (later.verdict, later.reason, later.learn) == (Verdict.ALLOW, "learn-capped", None)
    assert later.capped == "learned_rules"
    # The admin can still switch the group out of Discover, and the record stays publishable.
    answer = world.send(ServiceConfig(services=("web.demo",), profile_mode="Monitor"))
    assert answer.verdict is Verdict.ACCEPT
    assert world.policy().mode is M
    assert len(_policy_record(world.policy())) < MB


def test_the_writer_enforces_the_cap_too() -> None:
    """Two workers may each send learns that together pass the cap: the writer refuses them."""
    from schemas import LearnRequest
    from streams.engine import apply_learn

    settings = EngineSettings(max_learned_rules=3)
    policies: dict[str, GroupPolicy] = {WEB: group(mode=D)}
    for i in range(6):
        req = LearnRequest(group=WEB, name="x", path=f"/bin/x{i}", user="root")
        policies.update(apply_learn(policies, req, settings).updated)
    assert sum(r.cfg_type.value == "learned" for r in policies[WEB].rules) == 3
    assert policies[WEB].learn_capped


def test_a_group_the_writer_capped_is_still_reported_once_per_workload() -> None:
    # Found by the real-stack flood: a burst's learns overtake the policy they fill, so the
    # writer caps the group, no decision is the group's first refusal, and no incident told
    # the SOC that learning had stopped.
    capped = group(mode=D, rules=(learned_rule("ls", "/bin/ls"),), learn_capped="learned_rules")
    world = World(groups=[capped], settings=EngineSettings(max_learned_rules=1))
    first, again = world.exec("/bin/cat"), world.exec("/bin/tac")
    assert (first.reason, again.reason) == ("learn-capped", "learn-capped")
    assert first.overflow is not None and first.overflow.name == "Container.Profile.Overflow"
    assert again.overflow is None and again.learn is None
    assert first.learn is not None and first.learn.capped == "learned_rules"
    snap = decode_envelope(_state_record(world)).payload
    assert isinstance(snap, ProcessSnapshot) and snap.overflow == {"learning": "learned_rules"}
    restarted = World(groups=[capped], workloads=[container(), container("c2")],
                      settings=EngineSettings(max_learned_rules=1))
    assert restarted.session.restore_state(snap)
    assert restarted.exec("/bin/od").overflow is None  # the restored worker knows it was said
    other = restarted.exec("/bin/od", workload="c2")  # another replica says it once too
    assert other.overflow is not None


def test_users_and_hash_pins_per_group_are_capped() -> None:
    settings = EngineSettings(max_rule_users=2, max_hash_pins=2)
    world = World(groups=[group(mode=D, hash_enabled=True)], settings=settings)
    for user in ("a", "b", "c", "d"):
        world.exec("/bin/ls", user=user, hash="1" * 64)
    (ls,) = world.policy().rules
    assert len(ls.users) <= 2
    for i in range(4):
        world.exec(f"/bin/t{i}", user="a", hash=f"{i}" * 64)
    assert len(world.policy().hash_pins) <= 2
    assert world.policy().learn_capped


def test_overlong_learned_strings_are_not_learned() -> None:
    world = World(groups=[group(mode=D)])
    d = world.exec("/opt/" + "y" * 3_000, name="y" * 15)
    assert d.verdict is Verdict.ALLOW and d.reason == "learn-capped" and d.capped
    assert world.policy().rules == ()


def test_the_worst_learned_group_record_is_under_a_megabyte() -> None:
    """The caps filled with the longest rules they admit, in a group with the longest name a
    learned group can have (Kubernetes: a 253-character owner and a 63-character namespace):
    learning stops before the record reaches the producer's limit."""
    s = EngineSettings()
    name = "nv." + "s" * 253 + "." + "n" * 63
    world = World(groups=[group(name=name, mode=D, hash_enabled=True)],
                  workloads=[container(service="s" * 253, namespace="n" * 63)])
    path_len = s.max_rule_path_bytes
    for i in range(s.max_learned_rules + 10):
        path = f"/{i:06d}".ljust(path_len, "q")
        for u in range(s.max_rule_users + 1):
            world.exec(path, name="n" * s.max_rule_name_bytes, user=f"{u:02d}".ljust(32, "u"),
                       hash="f" * 64)
    policy = world.policy(name)
    assert policy.learn_capped
    assert len(_policy_record(policy)) < MB


# ---- CPU (task 4) ------------------------------------------------------------------------------

@pytest.mark.timeout(20)
def test_a_backtracking_regex_criterion_is_matched_in_linear_time() -> None:
    label = "a" * 10_000 + "b"
    workload = container(labels={"app": label})
    started = time.perf_counter()
    for op in (CriteriaOp.REGEX, CriteriaOp.NOT_REGEX):
        criteria = validate_criteria((Criterion(CriteriaKey.LABEL, op, "app=^(a+)+$"),))
        assert criteria_match(criteria, workload) is (op is CriteriaOp.NOT_REGEX)
    assert time.perf_counter() - started < 1.0


@pytest.mark.parametrize("pattern", [r"(a)\1", r"(?=a)b", r"(?<!x)y", "(unclosed"])
def test_a_pattern_re2_cannot_run_is_refused_at_validation(pattern: str) -> None:
    with pytest.raises(PolicyError) as err:
        validate_criteria((Criterion(CriteriaKey.IMAGE, CriteriaOp.REGEX, pattern),))
    assert err.value.status == 400 and "regular expression" in err.value.message


def test_every_engine_cap_is_a_worker_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from dataclasses import fields

    from streams.settings import StreamSettings

    caps = {f.name for f in fields(EngineSettings) if f.name.startswith("max_")}
    for name in caps:
        monkeypatch.setenv(f"STREAMS_{name.upper()}", "777777")
    engine = StreamSettings().engine()
    assert {name: getattr(engine, name) for name in caps} == dict.fromkeys(caps, 777777)
