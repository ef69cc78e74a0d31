"""§3 and §7: the decision matrix, one table, mode × baseline × finding, with readable ids.

Each row: mode, baseline, the rule list, exec facts, then the expected verdict, reason and
incident rule id (last two digits of NeuVector's reserved id, or "uuid" for the matched rule's).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from schemas import Baseline, IncidentAction, Mode, Origin, RuleSource, Verdict
from tests.builders import WEB, World, group, learned_rule, rule

D, M, P = Mode.DISCOVER, Mode.MONITOR, Mode.PROTECT
BASIC, ZD = Baseline.BASIC, Baseline.ZERO_DRIFT
LEARNED_LS = learned_rule("ls", "/bin/ls")
USER_LS = rule("ls", "/bin/ls")
DENY_LS = rule("ls", "/bin/ls", "deny")
USER_LS_UPDATE = rule("ls", "/bin/ls", allow_update=True)
CRD_LS_UPDATE = rule("ls", "/bin/ls", allow_update=True, source=RuleSource.GROUND)


@dataclass(frozen=True)
class Row:
    mode: Mode
    baseline: Baseline
    rules: tuple[Any, ...]
    verdict: Verdict
    reason: str
    rule_id: str = ""  # "00".."07", "uuid", or "" for no incident
    facts: dict[str, Any] = field(default_factory=dict)


ROWS = {
    # basic: rules alone decide
    "basic/Discover/allowed": Row(D, BASIC, (LEARNED_LS,), Verdict.ALLOW, "rule"),
    "basic/Monitor/allowed": Row(M, BASIC, (LEARNED_LS,), Verdict.ALLOW, "rule"),
    "basic/Protect/allowed": Row(P, BASIC, (LEARNED_LS,), Verdict.ALLOW, "rule"),
    "basic/Discover/unlisted learns": Row(D, BASIC, (), Verdict.LEARN, "learn"),
    "basic/Monitor/unlisted alerts": Row(M, BASIC, (), Verdict.ALERT, "violation:R0", "00"),
    "basic/Protect/unlisted blocks": Row(P, BASIC, (), Verdict.BLOCK, "violation:R0", "00"),
    "basic/Discover/denied alerts": Row(D, BASIC, (DENY_LS,), Verdict.ALERT, "violation:RD",
                                        "uuid"),
    "basic/Monitor/denied alerts": Row(M, BASIC, (DENY_LS,), Verdict.ALERT, "violation:RD",
                                       "uuid"),
    "basic/Protect/denied blocks": Row(P, BASIC, (DENY_LS,), Verdict.BLOCK, "violation:RD",
                                       "uuid"),
    "basic/Protect/not family is irrelevant": Row(P, BASIC, (LEARNED_LS,), Verdict.ALLOW, "rule",
                                                  facts={"family": False}),
    "basic/Protect/new exe is irrelevant": Row(P, BASIC, (LEARNED_LS,), Verdict.ALLOW, "rule",
                                               facts={"origin": Origin.NEW}),
    # zero-drift, family process of an image file
    "zero-drift/Discover/family allowed": Row(D, ZD, (LEARNED_LS,), Verdict.ALLOW, "rule"),
    "zero-drift/Protect/family allowed": Row(P, ZD, (LEARNED_LS,), Verdict.ALLOW, "rule"),
    "zero-drift/Discover/family unlisted learns": Row(D, ZD, (), Verdict.LEARN, "learn"),
    "zero-drift/Monitor/family unlisted": Row(M, ZD, (), Verdict.ALERT, "violation:R7", "07"),
    "zero-drift/Protect/family unlisted": Row(P, ZD, (), Verdict.BLOCK, "violation:R7", "07"),
    "zero-drift/Discover/denied": Row(D, ZD, (DENY_LS,), Verdict.ALERT, "violation:RD", "uuid"),
    "zero-drift/Monitor/denied": Row(M, ZD, (DENY_LS,), Verdict.ALERT, "violation:RD", "uuid"),
    "zero-drift/Protect/denied family uses 007": Row(P, ZD, (DENY_LS,), Verdict.BLOCK,
                                                     "violation:RD", "07"),
    "zero-drift/Protect/denied not family uses 006": Row(P, ZD, (DENY_LS,), Verdict.BLOCK,
                                                         "violation:RD", "06",
                                                         {"family": False}),
    # zero-drift, not family
    "zero-drift/Discover/not family unlisted": Row(D, ZD, (), Verdict.ALERT, "violation:R6",
                                                   "06", {"family": False}),
    "zero-drift/Monitor/not family unlisted is R0": Row(M, ZD, (), Verdict.ALERT,
                                                        "violation:R0", "00", {"family": False}),
    "zero-drift/Protect/not family unlisted": Row(P, ZD, (), Verdict.BLOCK, "violation:R6", "06",
                                                  {"family": False}),
    "zero-drift/Discover/not family learned rule": Row(D, ZD, (LEARNED_LS,), Verdict.ALERT,
                                                       "violation:R6", "06", {"family": False}),
    "zero-drift/Monitor/not family learned rule": Row(M, ZD, (LEARNED_LS,), Verdict.ALERT,
                                                      "violation:R6", "06", {"family": False}),
    "zero-drift/Protect/not family learned rule": Row(P, ZD, (LEARNED_LS,), Verdict.BLOCK,
                                                      "violation:R6", "06", {"family": False}),
    "zero-drift/Protect/not family user rule allows": Row(P, ZD, (USER_LS,), Verdict.ALLOW,
                                                          "rule", facts={"family": False}),
    # zero-drift, executable not from the image
    "zero-drift/Discover/new exe": Row(D, ZD, (), Verdict.ALERT, "violation:R5", "05",
                                       {"origin": Origin.NEW}),
    "zero-drift/Monitor/modified exe": Row(M, ZD, (LEARNED_LS,), Verdict.ALERT, "violation:R5",
                                           "05", {"origin": Origin.MODIFIED}),
    "zero-drift/Protect/new exe with learned rule": Row(P, ZD, (LEARNED_LS,), Verdict.BLOCK,
                                                        "violation:R5", "05",
                                                        {"origin": Origin.NEW}),
    "zero-drift/Protect/new exe with user rule": Row(P, ZD, (USER_LS,), Verdict.BLOCK,
                                                     "violation:R5", "05", {"origin": Origin.NEW}),
    "zero-drift/Protect/new exe with allow_update": Row(P, ZD, (USER_LS_UPDATE,), Verdict.ALLOW,
                                                        "rule", facts={"origin": Origin.NEW}),
    "zero-drift/Protect/new exe with CRD allow_update": Row(P, ZD, (CRD_LS_UPDATE,),
                                                            Verdict.ALLOW, "rule",
                                                            facts={"origin": Origin.NEW}),
    "zero-drift/Protect/learned allow_update ignored": Row(
        P, ZD, (learned_rule("ls", "/bin/ls", allow_update=True),), Verdict.BLOCK,
        "violation:R5", "05", {"origin": Origin.NEW}),
}


def _rule_id(row: Row) -> str:
    if row.rule_id == "uuid":
        return row.rules[0].uuid
    return f"00000000-0000-0000-0000-0000000000{row.rule_id}"


@pytest.mark.parametrize("row", ROWS.values(), ids=ROWS.keys())
def test_decision_matrix(row: Row) -> None:
    world = World(groups=[group(mode=row.mode, baseline=row.baseline, rules=row.rules)])
    d = world.exec("/bin/ls", **row.facts)
    assert (d.verdict, d.reason) == (row.verdict, row.reason)
    assert d.mode is row.mode and d.baseline is row.baseline
    if row.rule_id:
        assert d.incident is not None
        assert d.incident.rule_id == _rule_id(row)
        assert d.incident.name == "Process.Profile.Violation"
        blocked = row.verdict is Verdict.BLOCK
        assert d.incident.action is (IncidentAction.DENY if blocked else IncidentAction.VIOLATE)
        assert d.incident.message.endswith(": execution denied") is blocked
        assert d.would_block is (row.mode is Mode.MONITOR)
    else:
        assert d.incident is None
        assert not d.would_block


MESSAGES = {
    "R0": ((), {}, "Process profile violation"),
    "R5": ((), {"origin": Origin.NEW}, "Process profile violation, not from an image file"),
    "R6": ((), {"family": False}, "Process profile violation, not from its root process"),
    "R7": ((), {}, "Process profile violation, not a listed family process"),
}


@pytest.mark.parametrize("case", MESSAGES.values(), ids=MESSAGES.keys())
def test_violation_messages_in_protect(case: tuple[tuple[Any, ...], dict[str, Any], str]) -> None:
    rules, facts, message = case
    baseline = BASIC if message == "Process profile violation" else ZD
    world = World(groups=[group(mode=P, baseline=baseline, rules=rules)])
    d = world.exec("/bin/ls", **facts)
    assert d.incident is not None
    assert d.incident.message == message + ": execution denied"
    assert d.incident.group == WEB


def test_monitor_message_has_no_denied_suffix() -> None:
    d = World(groups=[group(mode=M)]).exec("/bin/ls")
    assert d.incident is not None and d.incident.message == "Process profile violation"
