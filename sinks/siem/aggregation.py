"""Incident aggregation for SIEMs (NeuVector's `count` and `aggregation_from`).

A process looping on a denied exec raises the same incident many times a second. Within one
forwarding window, incidents that say the same thing (same incident, group, workload, process,
rule, action and message) are sent once: the first one's id, `count` the number folded in,
`aggregation_from` when the first happened and `reported_timestamp` the last.
"""

from __future__ import annotations

from collections.abc import Iterable

from schemas import Incident
from schemas.records import replace

__all__ = ["aggregate"]


def _same_incident(i: Incident) -> tuple[str, ...]:
    return (i.name, i.group, i.workload_id, i.proc_name, i.proc_path, i.rule_id,
            i.action.value, i.message, i.file_path)


def aggregate(incidents: Iterable[Incident]) -> list[Incident]:
    """Fold repeats together, in the order each first arrived."""
    folded: dict[tuple[str, ...], Incident] = {}
    for incident in incidents:
        key = _same_incident(incident)
        first = folded.get(key)
        if first is None:
            folded[key] = incident
            continue
        start = min(first.aggregation_from or first.reported_timestamp,
                    incident.aggregation_from or incident.reported_timestamp)
        latest = max(first, incident, key=lambda i: i.reported_timestamp)
        folded[key] = replace(
            first, count=first.count + incident.count, aggregation_from=start,
            reported_timestamp=latest.reported_timestamp, reported_at=latest.reported_at)
    return list(folded.values())
