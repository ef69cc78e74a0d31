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
from streams.worker.session import EditOutcome
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


# Fidelity with NeuVector's own validation (issue 23), found by running both on generated edits.

# What Go's strings.TrimSpace removes (unicode.IsSpace), printed by Go 1.26 over every rune.
# Python's str.strip removes these and U+001C..U+001F too.
GO_TRIMSPACE = frozenset(chr(c) for c in (
    0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x20, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B),
    0x2028, 0x2029, 0x202F, 0x205F, 0x3000))


def test_trim_space_removes_exactly_what_gos_strings_trimspace_removes() -> None:
    from streams.engine import trim_space

    trimmed = {chr(c) for c in range(0x110000) if trim_space(f"{chr(c)}a{chr(c)}") == "a"}
    assert trimmed == GO_TRIMSPACE
    assert trim_space("\u3000\t ls \u00a0\n") == "ls" and trim_space("\x1cls\x1f") == "\x1cls\x1f"
    assert trim_space("a \u2028 b") == "a \u2028 b"  # only the ends


@pytest.mark.parametrize("action", ["\tdeny", "deny ", " allow", "allow\n", "\u00a0deny"])
def test_a_rest_action_with_surrounding_whitespace_is_refused(action: str) -> None:
    # It was trimmed and accepted; NeuVector's REST handler compares the action as sent.
    with pytest.raises(PolicyError) as err:
        validate_rule("ls", "/bin/ls", action)
    assert (err.value.field, err.value.status) == ("action", 400)
    world = World(groups=[group(rules=(learned_rule("ls", "/bin/ls"),))])
    before = world.policy()
    answer = world.send(ProfilePatch(group=WEB, process_change_list=(
        RuleChange("cat", "/bin/cat", action),)))
    assert "process_change_list[0].action" in _reject(answer)
    assert world.policy() == before


def test_a_rest_action_with_whitespace_is_a_400_from_the_api() -> None:
    import asyncio

    from streams.web.api import ApiError
    from tests.unit.test_policy_import import _api

    api, _ = _api()
    body = {"process_profile_config": {"process_change_list": [
        {"name": "ls", "path": "/bin/ls", "action": "deny "}]}}
    with pytest.raises(ApiError) as err:
        asyncio.run(api.patch_profile("nodes", body, "test"))
    assert err.value.status == 400 and err.value.field == "process_change_list[0].action"
    assert not [r for r in api.handlers.published["nodes"].rules if r.name == "ls"]


def test_the_crd_path_still_trims_the_action() -> None:
    from schemas import Action

    assert validate_rule("ls", "/bin/ls", "\tdeny ", crd=True)[2] is Action.DENY
    text = ("apiVersion: neuvector.com/v1\nkind: NvSecurityRule\nspec: {target: {selector: "
            "{name: nv.a.b}}, process: [{name: ls, path: /bin/ls, action: \"deny\\t\"}]}")
    result = apply_crd({}, text, EngineSettings(), 0.0)
    assert [(r.name, r.action) for r in result.updated["nv.a.b"].rules] == [("ls", Action.DENY)]


TRIMMED_AS_GO = {
    "unicode spaces go": ("\u00a0ls\u3000", "\u2028 /bin/ls\u0085", ("ls", "/bin/ls")),
    "separators stay in a name": ("\x1cls\x1f", "/bin/ls", ("\x1cls\x1f", "/bin/ls")),
    "a separator stays at a path's end": ("ls", "/bin/ls\x1d", ("ls", "/bin/ls\x1d")),
    "zero width space stays": ("ls\u200b", "/bin/ls", ("ls\u200b", "/bin/ls")),
}


@pytest.mark.parametrize("case", TRIMMED_AS_GO.values(), ids=TRIMMED_AS_GO.keys())
def test_names_and_paths_are_trimmed_as_go_trims_them(
        case: tuple[str, str, tuple[str, str]]) -> None:
    name, path, expected = case
    assert validate_rule(name, path, "allow")[:2] == expected
    assert validate_rule(name, path, "allow", crd=True)[:2] == expected


def test_a_separator_before_a_path_leaves_it_relative() -> None:
    # str.strip made "\x1e/bin/ls" the absolute /bin/ls; NeuVector refuses it.
    with pytest.raises(PolicyError) as err:
        validate_rule("ls", "\x1e/bin/ls", "allow")
    assert err.value.field == "path"
    with pytest.raises(PolicyError):
        validate_rule("\x1f", "\x1e/bin/ls", "allow", crd=True)


def test_a_delete_key_is_trimmed_as_go_trims_it() -> None:
    world = World(groups=[group(rules=(rule("ls", "/bin/ls"), rule("cat", "/bin/cat")))])
    assert "not in the profile" in _reject(world.send(ProfilePatch(
        group=WEB, process_delete_list=(RuleKey("ls\x1c", "/bin/ls"),))))
    ok = world.send(ProfilePatch(group=WEB, process_delete_list=(
        RuleKey("\u00a0cat", "/bin/cat\u3000"),)))
    assert isinstance(ok, EditOutcome) and ok.verdict is Verdict.ACCEPT
    assert [r.name for r in world.policy().rules] == ["ls"]


def test_group_names_are_trimmed_as_go_trims_them() -> None:
    crit = (Criterion(CriteriaKey.NAMESPACE, CriteriaOp.EQ, "demo"),)
    world = World(groups=[group()])
    assert "name" in _reject(world.send(GroupConfig(name="\x1ctools", criteria=crit)))
    ok = world.send(GroupConfig(name="\u3000tools\u00a0", criteria=crit))
    assert isinstance(ok, EditOutcome) and ok.verdict is Verdict.ACCEPT
    assert world.policy("tools").kind is GroupKind.CUSTOM
    assert _reject(world.send(ServiceConfig(services=("web.demo\x1f",), profile_mode="Monitor")),
                   404)
    ok = world.send(ServiceConfig(services=("\u2003web.demo",), profile_mode="Monitor"))
    assert isinstance(ok, EditOutcome) and world.policy().mode is Mode.MONITOR


def test_a_crd_groups_writer_is_the_group_the_engine_named() -> None:
    # The API publishes each document under its group's name; it must trim that name as the
    # engine does, or a document lands with another group's writer.
    import asyncio

    from schemas.topics import POLICY_UPDATES
    from tests.unit.test_policy_import import _api

    api, out = _api()
    text = ("apiVersion: neuvector.com/v1\nkind: NvSecurityRule\nspec: {target: {selector: "
            "{name: \"nv.a.b\\x1c\"}}, process: [{name: ls, path: /bin/ls, action: allow}]}")
    answer = asyncio.run(api.import_policy(text, "test"))
    assert answer[1]["groups"] == ["nv.a.b\x1c"]
    assert {key for topic, key, _ in out.sent if topic == POLICY_UPDATES.name} == {b"nv.a.b\x1c"}


EMPTY_NAME_SLASH_STAR = {
    "as written": ("", "/*"), "blank name": ("  ", " /* "), "unicode blanks": ("\u3000", "/*\u00a0"),
    "double slash": ("", "//*"), "dot": ("", "/./*"),
}


@pytest.mark.parametrize("case", EMPTY_NAME_SLASH_STAR.values(), ids=EMPTY_NAME_SLASH_STAR.keys())
def test_a_crd_rule_with_an_empty_name_and_path_slash_star_stays_refused(
        case: tuple[str, str]) -> None:
    # NeuVector names it after the path's basename, `*`, and so imports `allow *:/*`: a rule
    # that allows every process. procwarden refuses it (a deliberate difference).
    import json

    name, path = case
    with pytest.raises(PolicyError) as err:
        validate_rule(name, path, "allow", crd=True)
    assert (err.value.field, err.value.status) == ("name", 400)
    text = json.dumps({"apiVersion": "neuvector.com/v1", "kind": "NvSecurityRule", "spec": {
        "target": {"selector": {"name": "nv.a.b"}},
        "process": [{"name": name, "path": path, "action": "allow"}]}})
    with pytest.raises(PolicyError) as err:
        apply_crd({}, text, EngineSettings(), 0.0)
    assert err.value.field == "document[0].spec.process[0].name"
