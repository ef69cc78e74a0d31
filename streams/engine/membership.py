"""Which groups a workload belongs to (docs/behaviour.md §2): its learned group, custom groups, or
`nodes`."""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

import re2

from schemas import (
    NODES_GROUP,
    CriteriaKey,
    CriteriaOp,
    Criterion,
    GroupKind,
    GroupPolicy,
    Workload,
    WorkloadKind,
)
from streams.engine.validation import PolicyError, compile_regex

__all__ = ["criteria_match", "custom_groups_of", "learned_group_name", "service_name"]

_NOT_ALLOWED = re.compile(r"[^a-z0-9.-]")


def _normalise(text: str) -> str:
    return _NOT_ALLOWED.sub("-", text.lower())


def service_name(workload: Workload) -> str:
    """`<service>.<namespace>`: the learned group's name without `nv.`."""
    if workload.namespace:
        service = workload.service or workload.pod or workload.name
        namespace = workload.namespace
    else:
        service, namespace = workload.name, "default"
    return f"{_normalise(service)}.{_normalise(namespace)}"


def learned_group_name(workload: Workload) -> str:
    if workload.kind is WorkloadKind.HOST:
        return NODES_GROUP
    return "nv." + service_name(workload)


@lru_cache(maxsize=4096)
def _glob(pattern: str) -> Any:
    # RE2 too: `*a*a*a*...b` as a backtracking `.*a.*a...` is polynomial in the label's length.
    return compile_regex("(?s)" + ".*".join(re2.escape(part) for part in pattern.split("*")))


def _search(pattern: str, actual: str) -> bool:
    try:
        return compile_regex(pattern).search(actual) is not None
    except PolicyError:
        # Only a policy validated before patterns were RE2 can hold one RE2 refuses: the
        # criterion is false (for `regex` and `!regex` alike) rather than run by a backtracker.
        return False


def _test(op: CriteriaOp, value: str, actual: str | None) -> bool:
    """Whether `actual` satisfies `op value`; `actual` None means the attribute is absent.
    Patterns run on RE2, in time linear in `actual`."""
    if op is CriteriaOp.NE:
        return actual is None or _glob(value).fullmatch(actual) is None
    if op is CriteriaOp.NOT_REGEX:
        if actual is None:
            return True
        try:
            return compile_regex(value).search(actual) is None
        except PolicyError:
            return False  # see _search
    if actual is None:
        return False
    if op is CriteriaOp.EQ:
        return _glob(value).fullmatch(actual) is not None
    if op is CriteriaOp.CONTAINS:
        return value in actual
    if op is CriteriaOp.PREFIX:
        return actual.startswith(value)
    return _search(value, actual)  # REGEX


def _check(c: Criterion, workload: Workload) -> bool:
    if c.key is CriteriaKey.LABEL:
        key, sep, value = c.value.partition("=")
        actual = workload.labels.get(key)
        if not sep:  # `label = k`: the label is present (or absent, for negative ops)
            present = actual is not None
            return not present if c.op in (CriteriaOp.NE, CriteriaOp.NOT_REGEX) else present
        return _test(c.op, value, actual)
    actual = {
        CriteriaKey.NAMESPACE: workload.namespace or "default",
        CriteriaKey.SERVICE: service_name(workload),
        CriteriaKey.IMAGE: workload.image,
        CriteriaKey.CONTAINER: workload.name,
        CriteriaKey.NODE: workload.node,
    }[c.key]
    return _test(c.op, c.value, actual)


_NEGATIVE = (CriteriaOp.NE, CriteriaOp.NOT_REGEX)


def criteria_match(criteria: Iterable[Criterion], workload: Workload) -> bool:
    """Same key: positive ops OR-ed, negative ops AND-ed; different keys AND-ed. Containers only."""
    if workload.kind is not WorkloadKind.CONTAINER:
        return False
    by_key: dict[tuple[CriteriaKey, str], list[Criterion]] = {}
    for c in criteria:
        label_key = c.value.partition("=")[0] if c.key is CriteriaKey.LABEL else ""
        by_key.setdefault((c.key, label_key), []).append(c)
    if not by_key:
        return False
    for group in by_key.values():
        positives = [c for c in group if c.op not in _NEGATIVE]
        if positives and not any(_check(c, workload) for c in positives):
            return False
        if not all(_check(c, workload) for c in group if c.op in _NEGATIVE):
            return False
    return True


def custom_groups_of(workload: Workload, policies: Iterable[GroupPolicy]) -> tuple[str, ...]:
    return tuple(sorted(p.name for p in policies
                        if p.kind is GroupKind.CUSTOM and criteria_match(p.criteria, workload)))
