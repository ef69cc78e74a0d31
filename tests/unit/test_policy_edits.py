"""§12: rule validation, profile patches, service config, custom groups and CRD import."""

from __future__ import annotations

import pytest

from schemas import (
    Baseline,
    ChangeKind,
    CriteriaKey,
    CriteriaOp,
    Criterion,
    GroupConfig,
    GroupDelete,
    GroupKind,
    Mode,
    ProfilePatch,
    RuleChange,
    RuleKey,
    RuleSource,
    ServiceConfig,
    Verdict,
)
from streams.engine import EngineSettings, PolicyError, apply_crd, validate_rule
from streams.engine.validation import parse_baseline
from streams.session import EditOutcome
from tests.builders import WEB, World, container, group, learned_rule, rule

VALID = {
    "trim name and path": (" ls ", " /bin/ls ", "allow", ("ls", "/bin/ls")),
    "empty path kept": ("ls", "", "allow", ("ls", "")),
    "star path kept": ("ls", "*", "deny", ("ls", "*")),
    "clean dotdot": ("ws", "/bin/../sbin/ws", "allow", ("ws", "/sbin/ws")),
    "clean double slash": ("ws", "//usr//bin/ws", "allow", ("ws", "/usr/bin/ws")),
    "recursive": ("*", "/usr/bin/*", "allow", ("*", "/usr/bin/*")),
    "deny star recursive is accepted": ("*", "/tmp/*", "deny", ("*", "/tmp/*")),
    "middle wildcard": ("nginx", "/usr/*/nginx", "allow", ("nginx", "/usr/*/nginx")),
    "allow all": ("*", "*", "allow", ("*", "*")),
}


@pytest.mark.parametrize("case", VALID.values(), ids=VALID.keys())
def test_valid_rules(case: tuple[str, str, str, tuple[str, str]]) -> None:
    name, path, action, expected = case
    got_name, got_path, _ = validate_rule(name, path, action)
    assert (got_name, got_path) == expected


INVALID = {
    "unknown action": ("ls", "/bin/ls", "block", "action"),
    "empty name": ("  ", "/bin/ls", "allow", "name"),
    "relative path": ("ls", "bin/ls", "allow", "path"),
    "trailing slash": ("ls", "/bin/", "allow", "path"),
    "angle brackets": ("ls", "/bin/<ls>", "allow", "path"),
    "two stars": ("ls", "/*/bin/*", "allow", "path"),
    "cleans to root": ("ls", "/bin/..", "allow", "path"),
    "star name empty path": ("*", "", "allow", "path"),
    "deny all": ("*", "*", "deny", "action"),
    "deny all slash": ("*", "/*", "deny", "action"),
}


@pytest.mark.parametrize("case", INVALID.values(), ids=INVALID.keys())
def test_invalid_rules(case: tuple[str, str, str, str]) -> None:
    name, path, action, field = case
    with pytest.raises(PolicyError) as err:
        validate_rule(name, path, action)
    assert err.value.field == field and err.value.status == 400


def test_crd_empty_name_takes_the_basename() -> None:
    assert validate_rule("", "/usr/bin/curl", "allow", crd=True)[0] == "curl"
    with pytest.raises(PolicyError):
        validate_rule("", "*", "allow", crd=True)


@pytest.mark.parametrize("text,expected", [
    ("basic", Baseline.BASIC), ("Zero-Drift", Baseline.ZERO_DRIFT),
    ("default", Baseline.ZERO_DRIFT), ("shield", Baseline.ZERO_DRIFT)])
def test_baseline_aliases(text: str, expected: Baseline) -> None:
    assert parse_baseline(text) is expected


def _reject(answer: object, status: int = 400) -> str:
    assert isinstance(answer, EditOutcome)
    assert (answer.verdict, answer.status) == (Verdict.REJECT, status)
    return answer.reason


def test_patch_deletes_then_changes_all_or_nothing() -> None:
    world = World(groups=[group(rules=(learned_rule("ls", "/bin/ls"),))])
    version = world.policy().version
    bad = world.send(ProfilePatch(group=WEB, process_change_list=(
        RuleChange("cat", "/bin/cat", "allow"), RuleChange("x", "rel", "allow"))))
    assert "process_change_list[1].path" in _reject(bad)
    assert world.policy().version == version and len(world.policy().rules) == 1
    missing = world.send(ProfilePatch(group=WEB, process_delete_list=(RuleKey("nope", ""),)))
    assert "not in the profile" in _reject(missing)
    ok = world.send(ProfilePatch(group=WEB, process_delete_list=(RuleKey("ls", "/bin/ls"),),
                                 process_change_list=(RuleChange("cat", "/bin/cat", "deny"),)))
    assert isinstance(ok, EditOutcome) and ok.verdict is Verdict.ACCEPT
    assert [c.change for c in ok.changes] == [ChangeKind.RULE_DELETED, ChangeKind.RULE_ADDED]
    assert world.policy().version == version + 1
    assert [(r.name, r.action.value) for r in world.policy().rules] == [("cat", "deny")]


def test_a_patch_is_held_to_the_deployments_policy_record_limit() -> None:
    # It was held to the default limit (900 KB) whatever STREAMS_MAX_POLICY_BYTES said, so an
    # admin could grow a group past what the deployment's producers publish.
    world = World(groups=[group(rules=(learned_rule("ls", "/bin/ls"),))],
                  settings=EngineSettings(max_policy_bytes=10_000))
    many = tuple(RuleChange(f"tool{i}", f"/opt/{'d' * 80}/tool{i}", "allow") for i in range(100))
    assert "limit of a policy record" in _reject(world.send(ProfilePatch(
        group=WEB, process_change_list=many)))
    assert len(world.policy().rules) == 1
    world.send(ProfilePatch(group=WEB, process_change_list=many[:20]))
    assert len(world.policy().rules) == 21


def test_patch_turns_a_learned_rule_into_a_user_rule() -> None:
    learned = learned_rule("ls", "/bin/ls", users=("app",))
    world = World(groups=[group(rules=(learned,))])
    world.send(ProfilePatch(group=WEB, process_change_list=(
        RuleChange("ls", "/bin/ls", "allow", allow_update=True),)))
    (r,) = world.policy().rules
    assert r.cfg_type is RuleSource.USER_CREATED and r.uuid != learned.uuid
    assert r.users == () and r.allow_update


def test_patch_never_touches_crd_rules() -> None:
    crd = rule("ls", "/bin/ls", source=RuleSource.GROUND)
    world = World(groups=[group(rules=(crd,))])
    reason = _reject(world.send(ProfilePatch(group=WEB,
                                             process_delete_list=(RuleKey("ls", "/bin/ls"),))))
    assert "CRD" in reason
    world.send(ProfilePatch(group=WEB, process_change_list=(RuleChange("ls", "/bin/ls", "deny"),)))
    assert len(world.policy().rules) == 2
    assert world.exec("/bin/ls").verdict is Verdict.ALLOW  # the CRD rule shadows


def test_patch_baseline_rules() -> None:
    world = World(groups=[group(), group("nodes")])
    world.send(ProfilePatch(group=WEB, baseline="shield"))
    assert world.policy().baseline is Baseline.ZERO_DRIFT
    _reject(world.send(ProfilePatch(group=WEB, baseline="strict")))
    _reject(world.send(ProfilePatch(group="nodes", baseline="zero-drift")))
    _reject(world.send(ProfilePatch(group="nope", baseline="basic")), 404)


def test_custom_groups_reject_baseline_and_flags() -> None:
    world = World()
    world.send(GroupConfig(name="tools", criteria=(
        Criterion(CriteriaKey.NAMESPACE, CriteriaOp.EQ, "demo"),)))
    _reject(world.send(ProfilePatch(group="tools", baseline="basic")))
    _reject(world.send(ProfilePatch(group="tools", alert_disabled=True)))


def test_service_config_sets_mode_and_baseline() -> None:
    world = World(groups=[group(mode=Mode.DISCOVER), group("nodes", mode=Mode.DISCOVER)])
    world.send(ServiceConfig(services=("web.demo", "nodes"), profile_mode="protect",
                             baseline_profile="zero-drift"))
    assert (world.policy().mode, world.policy().baseline) == (Mode.PROTECT, Baseline.ZERO_DRIFT)
    nodes = world.policy("nodes")
    assert (nodes.mode, nodes.baseline) == (Mode.PROTECT, Baseline.BASIC)
    _reject(world.send(ServiceConfig(services=("web.demo",), profile_mode="Lockdown")))
    _reject(world.send(ServiceConfig(services=("ghost.demo",), profile_mode="Monitor")), 404)


def test_new_workload_creates_its_learned_group_with_defaults() -> None:
    world = World(workloads=[container(name="Api_Server", namespace="Prod", service="")])
    policy = world.session.policies["nv.api-server.prod"]
    assert (policy.mode, policy.baseline, policy.kind) == (
        Mode.DISCOVER, Baseline.ZERO_DRIFT, GroupKind.LEARNED)
    bare = World(workloads=[container(id="c9", name="redis", namespace="", service="")])
    assert "nv.redis.default" in bare.session.policies


def test_custom_group_lifecycle_and_name_rules() -> None:
    world = World()
    crit = (Criterion(CriteriaKey.LABEL, CriteriaOp.EQ, "app=w*"),)
    accepted = world.send(GroupConfig(name="web-apps", criteria=crit))
    assert isinstance(accepted, EditOutcome) and accepted.verdict is Verdict.ACCEPT
    for bad in ("nv.x", "fed.x", "nodes", "bad name", "x" * 65):
        _reject(world.send(GroupConfig(name=bad, criteria=crit)))
    _reject(world.send(GroupConfig(name="re", criteria=(
        Criterion(CriteriaKey.IMAGE, CriteriaOp.REGEX, "(unclosed"),))))
    _reject(world.send(GroupDelete(name=WEB)))
    world.send(GroupDelete(name="web-apps"))
    assert "web-apps" not in world.session.policies


CRITERIA = {
    "namespace equals": ([("namespace", "=", "demo")], True),
    "namespace glob": ([("namespace", "=", "de*")], True),
    "namespace differs": ([("namespace", "=", "prod")], False),
    "same key OR-ed": ([("namespace", "=", "prod"), ("namespace", "=", "demo")], True),
    "negatives AND-ed": ([("namespace", "!=", "prod"), ("namespace", "!=", "demo")], False),
    "keys AND-ed": ([("namespace", "=", "demo"), ("image", "=", "redis*")], False),
    "image prefix": ([("image", "prefix", "nginx:")], True),
    "image contains": ([("image", "contains", "ginx")], True),
    "image regex": ([("image", "regex", "^ngi.x:1")], True),
    "image not regex": ([("image", "!regex", "^redis")], True),
    "service": ([("service", "=", "web.demo")], True),
    "container": ([("container", "=", "web")], True),
    "node": ([("node", "=", "node-*")], True),
    "label": ([("label", "=", "tier=front*")], True),
    "label missing": ([("label", "=", "team=x")], False),
    "label not equal when absent": ([("label", "!=", "team=x")], True),
}


@pytest.mark.parametrize("case", CRITERIA.values(), ids=CRITERIA.keys())
def test_criteria(case: tuple[list[tuple[str, str, str]], bool]) -> None:
    from streams.engine import criteria_match

    spec, expected = case
    crit = [Criterion(CriteriaKey(k), CriteriaOp(o), v) for k, o, v in spec]
    wl = container(image="nginx:1.25", labels={"tier": "frontend"})
    assert criteria_match(crit, wl) is expected
    from tests.builders import host

    assert not criteria_match(crit, host())  # custom groups select containers only


CRD = """
apiVersion: neuvector.com/v1
kind: NvSecurityRule
metadata: {name: web, namespace: demo}
spec:
  target:
    policymode: Monitor
    selector: {name: nv.web.demo}
  process_profile: {baseline: basic}
  process:
    - {name: ls, path: /bin/ls, action: allow}
    - {name: "", path: /usr/bin/curl, action: deny}
  network: [{ignored: true}]
---
apiVersion: neuvector.com/v1
kind: NvClusterSecurityRule
metadata: {name: lockdown}
spec:
  target:
    selector:
      name: lockdown
      criteria: [{key: namespace, op: "=", value: demo}]
  process:
    - {name: nc, path: "*", action: deny}
"""


def test_crd_import_creates_groups_and_ground_rules() -> None:
    world = World(groups=[group(mode=Mode.DISCOVER, rules=(learned_rule("sh", "/bin/sh"),))])
    from schemas import CrdImport

    answer = world.send(CrdImport(text=CRD))
    assert isinstance(answer, EditOutcome) and answer.verdict is Verdict.ACCEPT
    web = world.policy()
    assert (web.mode, web.baseline, web.crd_managed) == (Mode.MONITOR, Baseline.BASIC, True)
    ground = [(r.name, r.path, r.action.value) for r in web.rules
              if r.cfg_type is RuleSource.GROUND]
    assert ground == [("ls", "/bin/ls", "allow"), ("curl", "/usr/bin/curl", "deny")]
    assert any(r.name == "sh" for r in web.rules)  # learned rules stay
    assert world.policy("lockdown").kind is GroupKind.CUSTOM
    assert world.exec("/usr/bin/nc").rule_group == "lockdown"
    # CRD-managed mode and baseline refuse REST changes.
    _reject(world.send(ServiceConfig(services=("web.demo",), profile_mode="Protect")))
    _reject(world.send(ProfilePatch(group=WEB, baseline="zero-drift")))
    # A second import replaces the ground rules.
    world.send(CrdImport(text=CRD.split("---", maxsplit=1)[0].replace("/usr/bin/curl", "/usr/bin/wget")))
    assert {r.path for r in world.policy().rules if r.cfg_type is RuleSource.GROUND} == {
        "/bin/ls", "/usr/bin/wget"}


CRD_ERRORS = {
    "bad yaml": ("a: [", "document"),
    "wrong api": ("apiVersion: v1\nkind: NvSecurityRule\nspec: {}", "apiVersion"),
    "wrong kind": ("apiVersion: neuvector.com/v1\nkind: Pod\nspec: {}", "kind"),
    "no group": ("apiVersion: neuvector.com/v1\nkind: NvSecurityRule\nspec: {target: {}}",
                 "selector.name"),
    "deny all": ("apiVersion: neuvector.com/v1\nkind: NvSecurityRule\nspec: {target: {selector: "
                 "{name: nv.a.b}}, process: [{name: '*', path: '*', action: deny}]}",
                 "process[0].action"),
    "empty name wildcard path": ("apiVersion: neuvector.com/v1\nkind: NvSecurityRule\nspec: "
                                 "{target: {selector: {name: nv.a.b}}, process: [{name: '', "
                                 "path: '*', action: allow}]}", "process[0].name"),
    "custom without criteria": ("apiVersion: neuvector.com/v1\nkind: NvSecurityRule\nspec: "
                                "{target: {selector: {name: newgroup}}}", "criteria"),
    "custom with mode": ("apiVersion: neuvector.com/v1\nkind: NvSecurityRule\nspec: {target: "
                         "{selector: {name: g, criteria: [{key: node, op: '=', value: x}]}}, "
                         "process_profile: {mode: Protect}}", "process_profile"),
    "nodes zero-drift": ("apiVersion: neuvector.com/v1\nkind: NvSecurityRule\nspec: {target: "
                         "{selector: {name: nodes}}, process_profile: {baseline: zero-drift}}",
                         "baseline"),
}


@pytest.mark.parametrize("case", CRD_ERRORS.values(), ids=CRD_ERRORS.keys())
def test_crd_errors_name_the_field(case: tuple[str, str]) -> None:
    from streams.engine import EngineSettings, nodes_group

    text, field = case
    with pytest.raises(PolicyError) as err:
        apply_crd({"nodes": nodes_group(EngineSettings())}, text, EngineSettings(), 0.0)
    assert field in err.value.field


def test_crd_import_is_all_or_nothing() -> None:
    from streams.engine import EngineSettings

    bad = CRD + "---\n" + CRD_ERRORS["deny all"][0]
    with pytest.raises(PolicyError):
        apply_crd({}, bad, EngineSettings(), 0.0)
