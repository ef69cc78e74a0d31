"""An effective rule list compiled for lookups that do not scan every rule.

A rule whose name is not `*` can only match when its name equals the process name or the exe
basename (§4.2 cases 3, 5, 7), so those rules are bucketed by name. Rules named `*` match all
(case 1), a directory tree (case 4a: bucketed by directory) or one exact path (case 4b). A lookup
gathers the few candidate buckets, verifies each candidate with `match_rule`, and keeps the lowest
position: the same answer as a linear first-match scan, in time independent of the list length.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from schemas import Action, Rule, RuleSource
from streams.engine.matching import is_parent_rule, match_rule, parent_rule_admits

__all__ = ["CompiledRules", "compile_rules", "is_user_update_rule"]

_EMPTY: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class CompiledRules:
    rules: tuple[Rule, ...]
    learned_start: int  # rules[learned_start:] belong to the learned group (or nodes)
    by_name: dict[str, tuple[int, ...]]
    star_all: tuple[int, ...]
    star_dir: dict[str, tuple[int, ...]]
    star_exact: dict[str, tuple[int, ...]]
    parent_rules: tuple[Rule, ...]
    names: frozenset[str]
    allows_everything: bool  # an allow `*:*` or `*:/*` in the list
    probe_positions: frozenset[int] = field(default_factory=frozenset)

    def first_match(self, pname: str, exe: str, *, skip_probe: bool = False,
                    start: int = 0) -> int:
        """Position of the first rule matching (pname, exe) at or after `start`, or -1."""
        best = -1
        rules = self.rules
        skip = self.probe_positions if skip_probe else _NO_POSITIONS
        buckets: list[tuple[int, ...]] = [self.star_all]
        by_name = self.by_name
        bucket = by_name.get(pname)
        if bucket:
            buckets.append(bucket)
        cut = exe.rfind("/")
        if cut >= 0:
            base = exe[cut + 1:]
            if base != pname:
                bucket = by_name.get(base)
                if bucket:
                    buckets.append(bucket)
            if self.star_dir:
                d = exe[:cut]
                star_dir = self.star_dir
                while True:
                    bucket = star_dir.get(d)
                    if bucket:
                        buckets.append(bucket)
                    if not d:
                        break
                    d = d[:d.rfind("/")]
        bucket = self.star_exact.get(exe)
        if bucket:
            buckets.append(bucket)
        for bucket in buckets:
            for pos in bucket:
                if best >= 0 and pos >= best:
                    break
                if pos < start or pos in skip:
                    continue
                rule = rules[pos]
                if match_rule(rule.name, rule.path, pname, exe):
                    best = pos
                    break
        return best

    def parent_admission(self, pname: str, parent_name: str, parent_exe: str) -> Rule | None:
        for rule in self.parent_rules:
            if parent_rule_admits(rule, pname, parent_name, parent_exe):
                return rule
        return None

    def explicitly_allows(self, risk: str) -> bool:
        """§7 step 8: some rule is named like the risk, or the list allows `*:*` / `*:/*`."""
        return self.allows_everything or risk in self.names


_NO_POSITIONS: frozenset[int] = frozenset()


def compile_rules(rules: Sequence[Rule], learned_start: int) -> CompiledRules:
    by_name: dict[str, list[int]] = {}
    star_all: list[int] = []
    star_dir: dict[str, list[int]] = {}
    star_exact: dict[str, list[int]] = {}
    parents: list[Rule] = []
    probes: set[int] = set()
    allows_everything = False
    for pos, rule in enumerate(rules):
        if rule.probe_cmds:
            probes.add(pos)
        if is_parent_rule(rule):
            parents.append(rule)
            continue
        name, path = rule.name, rule.path
        if name != "*":
            by_name.setdefault(name, []).append(pos)
        elif path in ("*", "/*"):
            star_all.append(pos)
            if rule.action is Action.ALLOW:
                allows_everything = True
        elif path.endswith("/*"):
            star_dir.setdefault(path[:-2], []).append(pos)
        else:
            star_exact.setdefault(path, []).append(pos)
    return CompiledRules(
        rules=tuple(rules),
        learned_start=learned_start,
        by_name={k: tuple(v) for k, v in by_name.items()},
        star_all=tuple(star_all),
        star_dir={k: tuple(v) for k, v in star_dir.items()},
        star_exact={k: tuple(v) for k, v in star_exact.items()},
        parent_rules=tuple(parents),
        names=frozenset(r.name for r in rules),
        allows_everything=allows_everything,
        probe_positions=frozenset(probes),
    )


def is_user_update_rule(rule: Rule | None) -> bool:
    """A user-created or CRD allow rule with `allow_update` (covers drift executables, D7)."""
    return (rule is not None and rule.allow_update and rule.action is Action.ALLOW
            and rule.cfg_type is not RuleSource.LEARNED)
