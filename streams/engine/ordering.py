"""Canonical rule order and the effective list of a workload (docs/behaviour.md §5).

The order is the match order: first match wins. It is also the order the API returns.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from schemas import Action, Rule, RuleSource

__all__ = ["category", "effective_rules", "order_group_rules"]


def category(rule: Rule) -> int:
    """The §5 category, 0 (allow all) … 6 (allow any name)."""
    name, path = rule.name, rule.path
    recursive = path.endswith("/*")
    if rule.action is Action.DENY:
        if name == "*":
            return 3
        return 2 if recursive else 1
    if name == "*":
        return 0 if path == "*" else 6
    return 5 if recursive else 4


def _positions(rules: Iterable[Rule]) -> list[tuple[tuple[int, str, str], Rule]]:
    """Each rule with its position; a non-CRD rule shadowed by a CRD rule of its own group with
    the same `name:path` takes that CRD rule's position."""
    rules = list(rules)
    crd_pos = {(r.group, r.name, r.path): (category(r), r.name, r.path)
               for r in rules if r.cfg_type is RuleSource.GROUND}
    out = []
    for r in rules:
        pos = (category(r), r.name, r.path)
        if r.cfg_type is not RuleSource.GROUND:
            pos = crd_pos.get((r.group, r.name, r.path), pos)
        out.append((pos, r))
    return out


def _sort_key(item: tuple[tuple[int, str, str], Rule]) -> tuple[object, ...]:
    (cat, name, path), r = item
    return (cat, name.encode(), path.encode(), r.cfg_type is not RuleSource.GROUND,
            r.action is not Action.DENY, r.group.encode())


def order_group_rules(rules: Iterable[Rule]) -> tuple[Rule, ...]:
    """One group's rules in canonical order (also a merged list of several custom groups)."""
    return tuple(r for _, r in sorted(_positions(rules), key=_sort_key))


def effective_rules(custom_rules: Sequence[Rule],
                    learned_rules: Sequence[Rule]) -> tuple[Rule, ...]:
    """The custom groups' rules merged and ordered together, then the learned group's rules."""
    return order_group_rules(custom_rules) + order_group_rules(learned_rules)
