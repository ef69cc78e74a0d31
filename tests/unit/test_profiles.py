"""Learning (§10), users (§8.1), hash pins (§8.2), probes (§7.3), parent rules (§4.4), BusyBox
applets (§4.3), file drift (§6) and custom-allowed learning (§7 step 15)."""

from __future__ import annotations

import pytest

from schemas import (
    Baseline,
    ChangeKind,
    ExitEvent,
    FileEvent,
    FileOp,
    Mode,
    Origin,
    ProfilePatch,
    RuleSource,
    Verdict,
)
from schemas.records import replace
from tests.builders import WEB, World, container, custom, group, learned_rule, rule

D, M, P = Mode.DISCOVER, Mode.MONITOR, Mode.PROTECT
ZD, BASIC = Baseline.ZERO_DRIFT, Baseline.BASIC


# ---- learning ----

def test_learned_rule_is_exact_and_idempotent() -> None:
    world = World(groups=[group(mode=D, baseline=ZD)])
    first = world.exec("/usr/local/bin/app", name="app", user="app")
    assert first.verdict is Verdict.LEARN and first.learn is not None
    version = world.policy().version
    (learned,) = world.policy().rules
    assert (learned.name, learned.path, learned.cfg_type, learned.users) == (
        "app", "/usr/local/bin/app", RuleSource.LEARNED, ("app",))
    assert learned.learned_from == first.event_id
    again = world.exec("/usr/local/bin/app", name="app", user="app")
    assert again.verdict is Verdict.ALLOW
    assert world.policy().version == version and len(world.policy().rules) == 1


def test_learning_twice_from_the_same_request_adds_one_rule() -> None:
    from streams.engine import apply_learn, merge

    world = World(groups=[group(mode=D)])
    d = world.exec("/bin/ls")
    assert d.learn is not None
    before = world.session.policies
    after = merge(before, [apply_learn(before, d.learn)])
    assert after == before  # already applied once by the session: nothing changes


def test_a_learn_overtaken_by_a_switch_to_protect_still_lands() -> None:
    """The learn request travels to the group's writer apart from the admin's mode switch; when
    the switch gets there first, the rule the verdict reported as learned is still added."""

    from streams.engine import apply_learn, merge

    world = World(groups=[group(mode=D)])
    before = dict(world.session.policies)
    d = world.exec("/bin/date", name="date")
    assert d.verdict is Verdict.LEARN and d.learn is not None
    switched = {**before, WEB: replace(before[WEB], mode=P)}
    assert switched[WEB].rules == ()  # the switch got to the writer before the learn
    after = merge(switched, [apply_learn(switched, d.learn)])
    assert after[WEB].mode is P
    assert [(r.name, r.path, r.cfg_type) for r in after[WEB].rules] == [
        ("date", "/bin/date", RuleSource.LEARNED)]


def test_no_merging_of_sibling_paths() -> None:
    world = World(groups=[group(mode=D)])
    world.exec("/usr/lib/a/nginx", name="nginx")
    world.exec("/usr/lib/b/nginx", name="nginx")
    assert sorted(r.path for r in world.policy().rules) == ["/usr/lib/a/nginx", "/usr/lib/b/nginx"]


def test_custom_groups_never_learn() -> None:
    world = World(groups=[custom("tools", ()), group(mode=D)])
    world.exec("/bin/ls")
    assert world.policy("tools").rules == ()
    assert len(world.policy().rules) == 1


def test_custom_allowed_exec_is_learned_into_the_learned_group() -> None:
    world = World(groups=[custom("tools", (rule("curl", "", group="tools"),)),
                          group(mode=D, baseline=ZD)])
    d = world.exec("/usr/bin/curl")
    assert (d.verdict, d.reason, d.rule_group) == (Verdict.LEARN, "learn", "tools")
    assert [r.path for r in world.policy().rules] == ["/usr/bin/curl"]
    # Not learnable (not family under zero-drift): allowed by the custom rule, not learned.
    d = world.exec("/usr/bin/curl", name="curl", family=False, pid=9)
    assert d.verdict is Verdict.ALLOW


# ---- users (D4) ----

def test_different_user_is_a_violation_outside_discover() -> None:
    ls = learned_rule("ls", "/bin/ls", users=("app",))
    for mode, verdict in ((M, Verdict.ALERT), (P, Verdict.BLOCK)):
        world = World(groups=[group(mode=mode, rules=(ls,))])
        d = world.exec("/bin/ls", user="root")
        assert (d.verdict, d.reason) == (verdict, "violation:RU")
        assert d.incident is not None and d.incident.rule_id == ls.uuid
        assert "started by a different user" in d.incident.message


def test_discover_adds_the_user() -> None:
    world = World(groups=[group(mode=D, rules=(learned_rule("ls", "/bin/ls", users=("app",)),))])
    d = world.exec("/bin/ls", user="root")
    assert (d.verdict, d.reason) == (Verdict.LEARN, "user-learn")
    assert world.policy().rules[0].users == ("app", "root")
    assert world.exec("/bin/ls", user="root").verdict is Verdict.ALLOW


def test_user_rules_match_any_user() -> None:
    world = World(groups=[group(mode=P, rules=(rule("ls", "/bin/ls"),))])
    assert world.exec("/bin/ls", user="nobody").verdict is Verdict.ALLOW


# ---- hash pinning (D12) ----

def test_hash_pin_learned_then_enforced() -> None:
    world = World(groups=[group(mode=P, hash_enabled=True, rules=(rule("ls", "/bin/ls"),))])
    d = world.exec("/bin/ls", hash="aa")
    assert (d.verdict, d.reason) == (Verdict.LEARN, "hash-learn")
    assert world.policy().hash_pins == {"/bin/ls": "aa"}
    assert world.exec("/bin/ls", hash="aa").verdict is Verdict.ALLOW
    bad = world.exec("/bin/ls", hash="bb")
    assert (bad.verdict, bad.reason) == (Verdict.BLOCK, "violation:RH")
    assert bad.incident is not None and bad.incident.rule_id == rule("ls", "/bin/ls").uuid


def test_hash_mismatch_alerts_in_discover_and_monitor() -> None:
    for mode in (D, M):
        world = World(groups=[group(mode=mode, hash_enabled=True, hash_pins={"/bin/ls": "aa"},
                                    rules=(rule("ls", "/bin/ls"),))])
        assert world.exec("/bin/ls", hash="bb").verdict is Verdict.ALERT


def test_discover_learning_pins_the_hash() -> None:
    world = World(groups=[group(mode=D, hash_enabled=True)])
    world.exec("/bin/ls", hash="cc")
    assert world.policy().hash_pins == {"/bin/ls": "cc"}


def test_turning_hash_off_forgets_pins() -> None:
    world = World(groups=[group(mode=P, hash_enabled=True, hash_pins={"/bin/ls": "aa"})])
    world.send(ProfilePatch(group=WEB, hash_enabled=False))
    assert world.policy().hash_pins == {} and not world.policy().hash_enabled
    world.send(ProfilePatch(group=WEB, hash_enabled=True))
    assert world.policy().hash_pins == {}


def test_no_hash_check_without_hash_enabled() -> None:
    world = World(groups=[group(mode=P, hash_pins={"/bin/ls": "aa"},
                                rules=(rule("ls", "/bin/ls"),))])
    assert world.exec("/bin/ls", hash="bb").verdict is Verdict.ALLOW


# ---- probes (§7.3, D13) ----

PROBES = ((("cat", "/tmp/healthy"),),)


def test_probe_rules_are_added_in_every_mode() -> None:
    for mode in (D, M, P):
        world = World(groups=[group(mode=mode)],
                      workloads=[container(probe_cmds=(("cat", "/tmp/healthy"),
                                                       ("/bin/sh", "-c", "exec ls /x; echo"),))])
        rules = {r.name: r for r in world.policy().rules}
        assert rules["cat"].path == "*" and rules["cat"].probe_cmds == ("cat,/tmp/healthy",)
        assert rules["sh"].path == "/bin/sh"
        assert rules["ls"].probe_cmds == ("ls,/x",)
        assert all(r.cfg_type is RuleSource.LEARNED and not r.users for r in rules.values())


def test_second_probe_command_with_same_name_widens_the_path() -> None:
    world = World(groups=[group()], workloads=[container(
        probe_cmds=(("/bin/cat", "/a"), ("/bin/cat", "/b")))])
    (cat,) = world.policy().rules
    assert (cat.path, cat.probe_cmds) == ("*", ("/bin/cat,/a", "/bin/cat,/b"))


def test_probe_exec_is_allowed_and_never_learned() -> None:
    world = World(groups=[group(mode=D, baseline=ZD)],
                  workloads=[container(probe_cmds=(("cat", "/tmp/healthy"),))])
    rules_before = world.policy().rules
    d = world.exec("/bin/cat", argv=("cat", "/tmp/healthy"), runtime_injected=True, family=False)
    assert (d.verdict, d.reason) == (Verdict.ALLOW, "probe")
    assert d.rule_uuid == rules_before[0].uuid
    assert world.policy().rules == rules_before


def test_kubectl_exec_is_not_covered_by_a_probe_rule() -> None:
    world = World(groups=[group(mode=P, baseline=ZD)],
                  workloads=[container(probe_cmds=(("cat", "/tmp/healthy"),))])
    d = world.exec("/bin/cat", argv=("cat", "/etc/shadow"), runtime_injected=True, family=False)
    assert (d.verdict, d.reason) == (Verdict.BLOCK, "violation:R6")


def test_children_of_a_probe_shell_are_probes() -> None:
    world = World(groups=[group(mode=P, baseline=ZD)],
                  workloads=[container(probe_cmds=(("sh", "-c", "exec cat /ready"),))])
    sh = world.exec("/bin/sh", argv=("sh", "-c", "exec cat /ready"), runtime_injected=True,
                    family=False, pid=40)
    assert sh.reason == "probe"
    child = world.exec("/bin/cat", argv=("cat", "/ready"), ppid=40, family=False, pid=41)
    assert child.reason == "probe"
    world.decide(ExitEvent(workload_id="c1", pid=40))
    later = world.exec("/bin/cat", argv=("cat", "/ready"), ppid=40, family=False, pid=42)
    assert later.verdict is Verdict.BLOCK


def test_probe_still_gets_drift_check() -> None:
    world = World(groups=[group(mode=P, baseline=ZD)],
                  workloads=[container(probe_cmds=(("cat", "/tmp/healthy"),))])
    d = world.exec("/bin/cat", argv=("cat", "/tmp/healthy"), runtime_injected=True,
                   origin=Origin.MODIFIED)
    assert (d.verdict, d.reason) == (Verdict.BLOCK, "violation:R5")


# ---- parent rules (§4.4, D15) ----

def test_parent_rule_admits_children_and_their_process_group() -> None:
    world = World(groups=[group(mode=P, rules=(rule("sh/*", "/bin/sh"), rule("sh", "/bin/sh")))])
    d = world.exec("/usr/bin/id", ppid=10, parent_name="sh", parent_path="/bin/sh", pgid=77)
    assert (d.verdict, d.reason) == (Verdict.ALLOW, "parent-rule:sh/*")
    grandchild = world.exec("/usr/bin/tr", ppid=11, parent_name="id", parent_path="/usr/bin/id",
                            pgid=77)
    assert (grandchild.verdict, grandchild.reason) == (Verdict.ALLOW, "parent-rule:pgid")
    world.decide(ExitEvent(workload_id="c1", pid=77))  # the group's leader exits
    after = world.exec("/usr/bin/tr", ppid=11, parent_name="id", parent_path="/usr/bin/id",
                       pgid=77)
    assert after.verdict is Verdict.BLOCK


def test_parent_rule_overrides_a_deny_rule() -> None:
    world = World(groups=[group(mode=P, rules=(rule("sh/*", ""), rule("id", "", "deny")))])
    d = world.exec("/usr/bin/id", parent_name="sh", parent_path="/bin/sh")
    assert d.verdict is Verdict.ALLOW


def test_discover_learns_children_instead_of_admitting() -> None:
    world = World(groups=[group(mode=D, rules=(rule("sh/*", ""),))])
    assert world.exec("/usr/bin/id", parent_name="sh").verdict is Verdict.LEARN


def test_admitted_process_counts_as_explicitly_allowed_risk() -> None:
    world = World(groups=[group(mode=P, rules=(rule("sh/*", ""),))])
    assert world.exec("/usr/bin/nc", parent_name="sh").verdict is Verdict.ALLOW


# ---- BusyBox (§4.3, D8) ----

def test_busybox_applets_are_judged_one_by_one() -> None:
    world = World(groups=[group(mode=P, rules=(rule("ping", "", "deny"),
                                               rule("*", "/bin/busybox")))])
    ping = world.exec("/bin/busybox", name="ping", argv=("ping", "-c1", "x"))
    assert (ping.verdict, ping.name) == (Verdict.BLOCK, "ping")
    assert world.exec("/bin/busybox", name="ls", argv=("ls",)).verdict is Verdict.ALLOW
    bypass = world.exec("/bin/busybox", name="busybox", argv=("busybox", "ping", "x"))
    assert bypass.verdict is Verdict.BLOCK


def test_busybox_rule_covers_only_a_process_named_busybox() -> None:
    world = World(groups=[group(mode=P, rules=(rule("busybox", "/bin/busybox"),))])
    assert world.exec("/bin/busybox", name="busybox", argv=("busybox",)).verdict is Verdict.ALLOW
    assert world.exec("/bin/busybox", name="ls", argv=("ls",)).verdict is Verdict.BLOCK


# ---- file drift (§6, D7) ----

DRIFT = {
    "new executable": (FileEvent("c1", FileOp.CREATE, "/tmp/x", executable=True), True,
                       "File drift, new executable file"),
    "new data file": (FileEvent("c1", FileOp.CREATE, "/tmp/log"), False, ""),
    "image file modified": (FileEvent("c1", FileOp.MODIFY, "/etc/passwd", from_image=True), True,
                            "File drift, image file modified"),
    "executable modified": (FileEvent("c1", FileOp.MODIFY, "/tmp/x", executable=True), True,
                            "File drift, image file modified"),
    "new data written": (FileEvent("c1", FileOp.MODIFY, "/tmp/log"), False, ""),
    "made executable": (FileEvent("c1", FileOp.ATTRIB, "/tmp/y", executable=True), True,
                        "File drift, file made executable"),
    "already executable": (FileEvent("c1", FileOp.ATTRIB, "/tmp/y", executable=True,
                                     was_executable=True), False, ""),
    "delete": (FileEvent("c1", FileOp.DELETE, "/bin/ls", from_image=True), False, ""),
}


@pytest.mark.parametrize("mode", [D, M, P], ids=["Discover", "Monitor", "Protect"])
@pytest.mark.parametrize("case", DRIFT.values(), ids=DRIFT.keys())
def test_file_drift(case: tuple[FileEvent, bool, str], mode: Mode) -> None:
    event, drift, message = case
    world = World(groups=[group(mode=mode, baseline=ZD)])
    d = world.decide(event)
    if not drift:
        assert d.verdict is Verdict.ALLOW and d.incident is None
        return
    blocked = mode is P
    assert d.verdict is (Verdict.BLOCK if blocked else Verdict.ALERT)
    assert d.incident is not None
    assert d.incident.name == "Container.FileAccess.Violation"
    assert d.incident.rule_id.endswith("005")
    assert d.incident.message == message + (": access denied" if blocked else "")
    assert d.incident.file_path == event.path
    assert d.incident.file_name == event.path.rsplit("/", 1)[-1]


def test_drift_is_not_judged_for_basic_volumes_and_hosts() -> None:
    created = FileEvent("c1", FileOp.CREATE, "/tmp/x", executable=True)
    assert World(groups=[group(baseline=BASIC)]).decide(created).verdict is Verdict.NONE
    volume = FileEvent("c1", FileOp.CREATE, "/data/x", executable=True, in_container_fs=False)
    assert World(groups=[group(baseline=ZD)]).decide(volume).verdict is Verdict.NONE


def test_exec_of_a_drifted_file_is_not_from_an_image() -> None:
    world = World(groups=[group(mode=M, baseline=ZD, rules=(learned_rule("ls", "/bin/ls"),))])
    world.decide(FileEvent("c1", FileOp.MODIFY, "/bin/ls", from_image=True, executable=True))
    d = world.exec("/bin/ls")  # the collector still says image; the write happened
    assert d.reason == "violation:R5"
    world.decide(FileEvent("c1", FileOp.DELETE, "/bin/ls"))
    assert world.exec("/bin/ls").verdict is Verdict.ALLOW


def test_held_write_denied_in_protect_leaves_the_file_clean() -> None:
    world = World(groups=[group(mode=P, baseline=ZD, rules=(learned_rule("ls", "/bin/ls"),))])
    d = world.decide(FileEvent("c1", FileOp.MODIFY, "/bin/ls", from_image=True, held=True))
    assert d.verdict is Verdict.BLOCK
    assert world.exec("/bin/ls").verdict is Verdict.ALLOW
    world.decide(FileEvent("c1", FileOp.CREATE, "/bin/ls", executable=True))  # not holdable
    assert world.exec("/bin/ls").reason == "violation:R5"


def test_system_container_drift_alerts() -> None:
    world = World(groups=[group(mode=P, baseline=ZD)], workloads=[container(system=True)])
    d = world.decide(FileEvent("c1", FileOp.CREATE, "/tmp/x", executable=True))
    assert d.verdict is Verdict.ALERT


def test_profile_changes_record_learning() -> None:
    world = World(groups=[group(mode=D)])
    d = world.exec("/bin/ls")
    assert d.learn is not None
    from streams.engine import apply_learn

    fresh = World(groups=[group(mode=D)])
    result = apply_learn(fresh.session.policies, d.learn)
    (change,) = result.changes
    assert (change.change, change.cause_event_id, change.actor) == (
        ChangeKind.RULE_LEARNED, d.event_id, "learning")
