"""Repeated incidents are folded for SIEMs: one line with count and aggregation_from."""

from __future__ import annotations

from schemas import IncidentAction
from schemas.records import replace
from sinks.siem.aggregation import aggregate
from tests.unit.test_siem_formats import BASE


def _at(second: int, **kw: object) -> object:
    return replace(BASE, id=f"i-{second}-{len(kw)}", reported_timestamp=second,
                               reported_at=f"t{second}", **kw)  # type: ignore[arg-type]


def test_repeats_fold_into_the_first() -> None:
    a1, a2, a3 = _at(100), _at(101), _at(105)
    other = _at(102, proc_path="/usr/bin/other")
    flipped = IncidentAction.VIOLATE if BASE.action is IncidentAction.DENY else IncidentAction.DENY
    denied = _at(103, action=flipped)
    out = aggregate([a1, a2, other, a3, denied])  # type: ignore[list-item]
    assert [i.id for i in out] == [a1.id, other.id, denied.id]  # type: ignore[attr-defined]
    first = out[0]
    assert (first.count, first.aggregation_from, first.reported_timestamp,
            first.reported_at) == (3, 100, 105, "t105")
    assert (out[1].count, out[1].aggregation_from) == (1, 0)  # alone: untouched


def test_already_aggregated_counts_add_up() -> None:
    a = replace(_at(200), count=4, aggregation_from=150)  # type: ignore[type-var]
    b = _at(210)
    (out,) = aggregate([b, a])  # type: ignore[list-item]
    assert (out.count, out.aggregation_from, out.reported_timestamp) == (5, 150, 210)
