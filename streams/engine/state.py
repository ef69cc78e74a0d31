"""Per-workload process state the decisions depend on (§7: risk, admitted process groups,
reverse-shell sightings, probe shells, drifted files).

The engine only reads a `ProcessState`; each decision returns a `StateEffect` that the caller
applies with `ProcessState.apply`, so `decide` itself never mutates its inputs and deciding the
same event twice against the same state gives the same answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from schemas import ProcessSnapshot, TunnelSighting

__all__ = ["ProcessState", "StateEffect"]


@dataclass(frozen=True, slots=True)
class StateEffect:
    risk: tuple[int, str] | None = None  # (pid, risk name) of a risky process
    probe_shell: int | None = None  # pid of a probe's shell: its children may be probes
    admit_pgid: int | None = None
    forget_pid: int | None = None  # the process exited
    tunnel_sighting: tuple[int, int] | None = None  # (pid, start_time) seen once
    tunnel_reported: tuple[int, int] | None = None
    drift_path: str | None = None  # this file is drift from now on
    clean_path: str | None = None  # deleted: no longer a drift file


@dataclass(slots=True)
class ProcessState:
    risk: dict[int, str] = field(default_factory=dict)
    probe_shells: set[int] = field(default_factory=set)
    admitted_pgids: set[int] = field(default_factory=set)
    tunnels: dict[tuple[int, int], bool] = field(default_factory=dict)  # True once reported
    drift: set[str] = field(default_factory=set)
    seq: int = 0  # bumped by every change (the snapshots' order)

    def apply(self, effect: StateEffect | None) -> bool:
        """Apply a decision's effect; whether anything changed."""
        if effect is None:
            return False
        changed = False
        if effect.risk is not None:
            pid, name = effect.risk
            changed |= self.risk.get(pid) != name
            self.risk[pid] = name
        if effect.probe_shell is not None:
            changed |= _add(self.probe_shells, effect.probe_shell)
        if effect.admit_pgid is not None:
            changed |= _add(self.admitted_pgids, effect.admit_pgid)
        if effect.tunnel_sighting is not None and effect.tunnel_sighting not in self.tunnels:
            self.tunnels[effect.tunnel_sighting] = False
            changed = True
        if effect.tunnel_reported is not None:
            changed |= self.tunnels.get(effect.tunnel_reported) is not True
            self.tunnels[effect.tunnel_reported] = True
        if effect.drift_path is not None:
            changed |= _add(self.drift, effect.drift_path)
        if effect.clean_path is not None and effect.clean_path in self.drift:
            self.drift.discard(effect.clean_path)
            changed = True
        forget = effect.forget_pid
        if forget is not None:
            changed |= self.risk.pop(forget, None) is not None
            changed |= _discard(self.probe_shells, forget)
            # A process group lives while its leader does (pgid == leader's pid).
            changed |= _discard(self.admitted_pgids, forget)
            for key in [k for k in self.tunnels if k[0] == forget]:
                del self.tunnels[key]
                changed = True
        if changed:
            self.seq += 1
        return changed

    def snapshot(self, workload_id: str) -> ProcessSnapshot:
        return ProcessSnapshot(
            workload_id=workload_id, seq=self.seq,
            risk={str(pid): name for pid, name in sorted(self.risk.items())},
            probe_shells=tuple(sorted(self.probe_shells)),
            admitted_pgids=tuple(sorted(self.admitted_pgids)),
            tunnels=tuple(TunnelSighting(pid, start, reported)
                          for (pid, start), reported in sorted(self.tunnels.items())),
            drift=tuple(sorted(self.drift)))

    @classmethod
    def restore(cls, snap: ProcessSnapshot) -> ProcessState:
        return cls(risk={int(pid): name for pid, name in snap.risk.items()},
                   probe_shells=set(snap.probe_shells), admitted_pgids=set(snap.admitted_pgids),
                   tunnels={(t.pid, t.start_time): t.reported for t in snap.tunnels},
                   drift=set(snap.drift), seq=snap.seq)


def _add(items: set[Any], item: Any) -> bool:
    if item in items:
        return False
    items.add(item)
    return True


def _discard(items: set[Any], item: Any) -> bool:
    if item not in items:
        return False
    items.discard(item)
    return True
