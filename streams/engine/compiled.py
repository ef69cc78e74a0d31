"""An effective rule list compiled for lookups that do not scan every rule.

A rule whose name is not `*` can only match when its name equals the process name or the exe
basename (§4.2 cases 3, 5, 7). Among those, a rule with an exact path matches exactly when
`exe == path and pname == name`, so exact rules (every learned rule) are keyed by that pair and
need no verification; the other named rules are bucketed by name. Rules named `*` match all
(case 1), a directory tree (case 4a: bucketed by directory) or one exact path (case 4b). A lookup
gathers the few candidate buckets, verifies candidates with `match_rule`, and keeps the lowest
position: the same answer as a linear first-match scan, in time independent of the list length.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from schemas import Action, Rule, RuleSource
from streams.engine.matching import WILDCARD_PATHS, is_parent_rule, match_rule, parent_rule_admits

__all__ = ["CompiledRules", "compile_rules", "is_user_update_rule"]

_NO_POSITIONS: frozenset[int] = frozenset()
_MEMO_LIMIT = 8192


@dataclass(frozen=True, slots=True)
class CompiledRules:
    rules: tuple[Rule, ...]
    learned_start: int  # rules[learned_start:] belong to the learned group (or nodes)
    exact: dict[tuple[str, str], tuple[int, ...]]  # (name, path) of named exact-path rules
    by_name: dict[str, tuple[int, ...]]  # other named rules
    star_all: tuple[int, ...]
    star_dir: dict[str, tuple[int, ...]]
    star_exact: dict[str, tuple[int, ...]]
    parent_rules: tuple[Rule, ...]
    names: frozenset[str]
    allows_everything: bool  # an allow `*:*` or `*:/*` in the list
    probe_positions: frozenset[int] = field(default_factory=frozenset)
    # Answers already computed. A workload runs the same few programs over and over, so most
    # lookups are repeats; the memo is bounded and never changes an answer (the list is
    # immutable), so the engine stays a function of its inputs.
    _memo: dict[tuple[str, str, bool, int], int] = field(default_factory=dict, compare=False,
                                                         repr=False)

    def first_match(self, pname: str, exe: str, skip_probe: bool = False,
                    start: int = 0) -> int:
        """Position of the first rule matching (pname, exe) at or after `start`, or -1."""
        key = (pname, exe, skip_probe, start)
        memo = self._memo
        pos = memo.get(key)
        if pos is None:
            if len(memo) >= _MEMO_LIMIT:
                memo.clear()
            pos = memo[key] = self._first_match(pname, exe, skip_probe, start)
        return pos

    def _first_match(self, pname: str, exe: str, skip_probe: bool, start: int) -> int:
        skip = self.probe_positions if skip_probe else _NO_POSITIONS
        best = -1
        hit = self.exact.get((pname, exe))
        if hit:
            for pos in hit:
                if pos >= start and pos not in skip:
                    best = pos
                    break
        rules = self.rules
        if self.star_all:
            best = _first_in(self.star_all, rules, pname, exe, best, start, skip)
        by_name = self.by_name
        if by_name:
            bucket = by_name.get(pname)
            if bucket:
                best = _first_in(bucket, rules, pname, exe, best, start, skip)
            cut = exe.rfind("/")
            base = exe[cut + 1:]
            if base != pname:
                bucket = by_name.get(base)
                if bucket:
                    best = _first_in(bucket, rules, pname, exe, best, start, skip)
        star_dir = self.star_dir
        if star_dir:
            d = exe[:exe.rfind("/")]
            while True:
                bucket = star_dir.get(d)
                if bucket:
                    best = _first_in(bucket, rules, pname, exe, best, start, skip)
                if not d:
                    break
                d = d[:d.rfind("/")]
        if self.star_exact:
            bucket = self.star_exact.get(exe)
            if bucket:
                best = _first_in(bucket, rules, pname, exe, best, start, skip)
        return best

    def parent_admission(self, pname: str, parent_name: str, parent_exe: str) -> Rule | None:
        for rule in self.parent_rules:
            if parent_rule_admits(rule, pname, parent_name, parent_exe):
                return rule
        return None

    def explicitly_allows(self, risk: str) -> bool:
        """§7 step 8: some rule is named like the risk, or the list allows `*:*` / `*:/*`."""
        return self.allows_everything or risk in self.names


def _first_in(bucket: tuple[int, ...], rules: tuple[Rule, ...], pname: str, exe: str, best: int,
              start: int, skip: frozenset[int]) -> int:
    """The lower of `best` and the first matching position of a sorted bucket."""
    for pos in bucket:
        if 0 <= best <= pos:
            return best
        if pos < start or pos in skip:
            continue
        rule = rules[pos]
        if match_rule(rule.name, rule.path, pname, exe):
            return pos
    return best


def _is_exact(rule: Rule) -> bool:
    path = rule.path
    return path not in WILDCARD_PATHS and "*" not in path


def compile_rules(rules: Sequence[Rule], learned_start: int) -> CompiledRules:
    exact: dict[tuple[str, str], list[int]] = {}
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
            if _is_exact(rule) and path.startswith("/"):
                exact.setdefault((name, path), []).append(pos)
            else:
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
        exact={k: tuple(v) for k, v in exact.items()},
        by_name={k: tuple(v) for k, v in by_name.items()},
        star_all=tuple(star_all),
        star_dir={k: tuple(v) for k, v in star_dir.items()},
        star_exact={k: tuple(v) for k, v in star_exact.items()},
        parent_rules=tuple(parents),
        names=frozenset(r.name for r in rules),
        allows_everything=allows_everything,
        probe_positions=frozenset(probes),
    )


_ALLOW = Action.ALLOW
_LEARNED = RuleSource.LEARNED


def is_user_update_rule(rule: Rule | None) -> bool:
    """A user-created or CRD allow rule with `allow_update` (covers drift executables, D7)."""
    return (rule is not None and rule.allow_update and rule.action is _ALLOW
            and rule.cfg_type is not _LEARNED)
