"""Per-workload process state the decisions depend on (§7: risk, admitted process groups,
reverse-shell sightings, probe shells, drifted files).

The engine only reads a `ProcessState`; each decision returns a `StateEffect` that the caller
applies with `ProcessState.apply`, so `decide` itself never mutates its inputs and deciding the
same event twice against the same state gives the same answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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

    def apply(self, effect: StateEffect | None) -> None:
        if effect is None:
            return
        if effect.risk is not None:
            self.risk[effect.risk[0]] = effect.risk[1]
        if effect.probe_shell is not None:
            self.probe_shells.add(effect.probe_shell)
        if effect.admit_pgid is not None:
            self.admitted_pgids.add(effect.admit_pgid)
        if effect.tunnel_sighting is not None:
            self.tunnels.setdefault(effect.tunnel_sighting, False)
        if effect.tunnel_reported is not None:
            self.tunnels[effect.tunnel_reported] = True
        if effect.drift_path is not None:
            self.drift.add(effect.drift_path)
        if effect.clean_path is not None:
            self.drift.discard(effect.clean_path)
        pid = effect.forget_pid
        if pid is not None:
            self.risk.pop(pid, None)
            self.probe_shells.discard(pid)
            # A process group lives while its leader does (pgid == leader's pid).
            self.admitted_pgids.discard(pid)
            for key in [k for k in self.tunnels if k[0] == pid]:
                del self.tunnels[key]
