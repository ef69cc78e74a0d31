"""§5: canonical order, custom-group precedence and CRD shadowing, checked through decisions."""

from __future__ import annotations

import pytest

from schemas import Mode, RuleSource, Verdict
from streams.engine import category, order_group_rules
from tests.builders import WEB, World, custom, group, learned_rule, rule

CATEGORY_CASES = {
    "allow all": (("*", "*", "allow"), 0),
    "deny specific exact": (("ls", "/bin/ls", "deny"), 1),
    "deny specific empty path": (("ls", "", "deny"), 1),
    "deny specific star path": (("ls", "*", "deny"), 1),
    "deny recursive": (("ls", "/bin/*", "deny"), 2),
    "deny recursive root": (("ls", "/*", "deny"), 2),
    "deny any name": (("*", "/bin/*", "deny"), 3),
    "allow specific": (("ls", "/bin/ls", "allow"), 4),
    "allow specific middle wildcard": (("nginx", "/usr/*/nginx", "allow"), 4),
    "allow recursive": (("ls", "/bin/*", "allow"), 5),
    "allow any name": (("*", "/bin/ls", "allow"), 6),
    "allow star slash-star is any name": (("*", "/*", "allow"), 6),
}


@pytest.mark.parametrize("case", CATEGORY_CASES.values(), ids=CATEGORY_CASES.keys())
def test_category(case: tuple[tuple[str, str, str], int]) -> None:
    (name, path, action), expected = case
    assert category(rule(name, path, action)) == expected


def test_canonical_order_in_one_group() -> None:
    rules = [rule("*", "/*"), rule("ls", "/bin/*"), rule("ls", "/bin/ls"), rule("*", "/x/*", "deny"),
             rule("sh", "/bin/*", "deny"), rule("cat", "", "deny"), rule("*", "*"),
             rule("bash", "/bin/bash"), rule("a", "/z")]
    ordered = [(r.name, r.path, r.action.value) for r in order_group_rules(rules)]
    assert ordered == [
        ("*", "*", "allow"), ("cat", "", "deny"), ("sh", "/bin/*", "deny"),
        ("*", "/x/*", "deny"), ("a", "/z", "allow"), ("bash", "/bin/bash", "allow"),
        ("ls", "/bin/ls", "allow"), ("ls", "/bin/*", "allow"), ("*", "/*", "allow"),
    ]


def test_crd_rule_shadows_same_key_in_its_own_group() -> None:
    crd = rule("ls", "/bin/ls", "allow", source=RuleSource.GROUND)
    user = rule("ls", "/bin/ls", "deny")
    ordered = order_group_rules([user, crd, rule("aaa", "/bin/aaa", "deny")])
    assert ordered[1:] == (crd, user)  # the user rule takes the CRD rule's position
    world = World(groups=[group(rules=(user, crd))])
    assert world.exec("/bin/ls").verdict is Verdict.ALLOW


def test_spec_example_custom_deny_beats_custom_allow_and_learned() -> None:
    """§5's worked example."""
    world = World(groups=[
        custom("a-tools", (rule("wget", "/usr/bin/wget", group="a-tools"),)),
        custom("b-lockdown", (rule("*", "/usr/bin/*", "deny", group="b-lockdown"),)),
        group(rules=(learned_rule("*", "*", users=()),)),
    ])
    wget = world.exec("/usr/bin/wget")
    assert (wget.verdict, wget.rule_group, wget.reason) == (Verdict.BLOCK, "b-lockdown",
                                                             "violation:RD")
    ls = world.exec("/bin/ls")
    assert (ls.verdict, ls.rule_group) == (Verdict.ALLOW, WEB)


def test_custom_allow_beats_learned_deny() -> None:
    world = World(groups=[custom("tools", (rule("curl", "/usr/bin/curl", group="tools"),)),
                          group(rules=(rule("curl", "", "deny"),))])
    d = world.exec("/usr/bin/curl")
    assert (d.verdict, d.rule_group, d.group) == (Verdict.ALLOW, "tools", "tools")


def test_custom_allow_all_beats_every_custom_deny() -> None:
    world = World(groups=[custom("a", (rule("*", "*", group="a"),)),
                          custom("b", (rule("nc", "", "deny", group="b"),)),
                          group()])
    assert world.exec("/bin/cat").verdict is Verdict.ALLOW
    assert world.exec("/usr/bin/vim").verdict is Verdict.ALLOW


def test_custom_any_name_allow_loses_to_custom_denies() -> None:
    world = World(groups=[custom("a", (rule("*", "/*", group="a"),)),
                          custom("b", (rule("vim", "", "deny", group="b"),)),
                          group()])
    assert world.exec("/usr/bin/vim").verdict is Verdict.BLOCK
    assert world.exec("/usr/bin/cat").verdict is Verdict.ALLOW


def test_same_rule_in_two_custom_groups_is_attributed_to_the_first_name() -> None:
    world = World(groups=[custom("zeta", (rule("ls", "/bin/ls", group="zeta"),)),
                          custom("alpha", (rule("ls", "/bin/ls", group="alpha"),)),
                          group()])
    assert world.exec("/bin/ls").rule_group == "alpha"


def test_crd_rule_of_another_custom_group_does_not_shadow() -> None:
    # Different groups, same key, different actions: the deny comes first even before a CRD allow.
    world = World(groups=[
        custom("a", (rule("ls", "/bin/ls", source=RuleSource.GROUND, group="a"),)),
        custom("b", (rule("ls", "/bin/ls", "deny", group="b"),)),
        group(),
    ])
    d = world.exec("/bin/ls")
    assert (d.verdict, d.rule_group) == (Verdict.BLOCK, "b")


def test_custom_group_rules_do_not_apply_outside_its_criteria() -> None:
    world = World(groups=[custom("prod-lock", (rule("ls", "", "deny", group="prod-lock"),),
                                 namespace="prod"),
                          group(rules=(rule("ls", ""),))])
    assert world.exec("/bin/ls").verdict is Verdict.ALLOW


def test_discover_skips_probe_rules_for_ordinary_execs() -> None:
    probe = learned_rule("cat", "*", users=(), probe_cmds=("cat,/tmp/ready",))
    world = World(groups=[group(mode=Mode.DISCOVER, rules=(probe,))])
    d = world.exec("/bin/cat")
    assert d.verdict is Verdict.LEARN  # the real path gets learned
    assert any(r.path == "/bin/cat" for r in world.policy().rules)
