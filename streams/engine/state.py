"""Per-workload process state the decisions depend on (§7: risk, admitted process groups,
reverse-shell sightings, probe shells, drifted files).

The engine only reads a `ProcessState`; each decision returns a `StateEffect` that the caller
applies with `ProcessState.apply`, so `decide` itself never mutates its inputs and deciding the
same event twice against the same state gives the same answer.

The whole state is republished after every batch that changes it, and the workload controls how
much goes in, so every set is capped (`EngineSettings`): `decide` never asks for an entry past
its cap. A cap that refuses an entry is recorded in `overflow` (sticky for the workload's life,
persisted, reported once with a `Container.Profile.Overflow` incident) and fails closed:

- `drift_paths` — the engine no longer knows which of the workload's files drifted, so it
  treats the workload as drifted: no executable of it counts as an image file any more. Every
  exec is judged "not from an image file" (§7 step 10a, violation R5) unless the deciding rule
  is a user-created or CRD allow rule with `allow_update`; the nc health-check exemption (step 3)
  needs an image file and ends; probe execs get the same check (step 4); nothing more is learned
  from the workload (learning needs an image file under zero-drift); before exec, §14 (c) denies
  every exec in Protect that no such rule covers. Deleting files does not undo it.
- `risky_pids` — a risky process that could not be remembered would pass no risk on to its
  children, so every later process of the workload inherits the risk that did not fit (§7 step 5):
  a suspicious-process alert in Discover, a violation (RS) in Monitor and Protect, unless the
  risk is explicitly allowed.
- `probe_shells` — a probe shell that is not remembered makes no probes of its children: they
  are judged as ordinary execs.
- `admitted_pgids` — a process group that is not remembered is not admitted: its later
  processes are judged by the rules.
- `tunnel_sightings` — a first reverse-shell sighting that cannot be remembered is confirmed at
  once (reported, and blocked in Protect) instead of waiting for a second one.

The last three fail closed by themselves and use freed room again; the first two cannot know
what they lost and stay overflowed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from schemas import ProcessSnapshot, TunnelSighting, encode
from streams.engine.detectors import SUSPICIOUS

__all__ = ["DRIFT_PATHS", "LEARNING", "RISKY_PIDS", "ProcessState", "StateEffect", "drift_key"]

# Cap names, as in `ProcessSnapshot.overflow`, `Decision.capped` and the metric's label.
DRIFT_PATHS = "drift_paths"
RISKY_PIDS = "risky_pids"
PROBE_SHELLS = "probe_shells"
ADMITTED_PGIDS = "admitted_pgids"
TUNNEL_SIGHTINGS = "tunnel_sightings"
LEARNING = "learning"  # the workload was refused a learn (and said so); its value: which cap
CAPS = (DRIFT_PATHS, RISKY_PIDS, PROBE_SHELLS, ADMITTED_PGIDS, TUNNEL_SIGHTINGS, LEARNING)


def drift_key(path: str, max_bytes: int) -> str:
    """How a drift path is kept: as it is if its JSON form fits `max_bytes`, else by its
    digest (no real path starts with `sha256:`, and a collision could only add drift)."""
    if len(path) * 6 + 2 <= max_bytes or len(encode(path)) <= max_bytes:
        return path
    return "sha256:" + hashlib.sha256(path.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True, slots=True)
class StateEffect:
    risk: tuple[int, str] | None = None  # (pid, risk name) of a risky process
    probe_shell: int | None = None  # pid of a probe's shell: its children may be probes
    admit_pgid: int | None = None
    forget_pid: int | None = None  # the process exited
    tunnel_sighting: tuple[int, int] | None = None  # (pid, start_time) seen once
    tunnel_reported: tuple[int, int] | None = None
    drift_path: str | None = None  # this file is drift from now on (its `drift_key`)
    clean_path: str | None = None  # deleted: no longer a drift file (its `drift_key`)
    # A cap refused an entry: (cap name, what did not fit) — recorded as overflowed.
    overflow: tuple[str, str] | None = None


@dataclass(slots=True)
class ProcessState:
    risk: dict[int, str] = field(default_factory=dict)
    probe_shells: set[int] = field(default_factory=set)
    admitted_pgids: set[int] = field(default_factory=set)
    tunnels: dict[tuple[int, int], bool] = field(default_factory=dict)  # True once reported
    drift: set[str] = field(default_factory=set)
    overflow: dict[str, str] = field(default_factory=dict)  # cap name -> what did not fit
    seq: int = 0  # bumped by every change (the snapshots' order)

    def is_drift(self, path: str, max_bytes: int) -> bool:
        """Whether an exec of `path` is of a drift file (every file, once the set overflowed)."""
        if DRIFT_PATHS in self.overflow:
            return True
        return bool(self.drift) and drift_key(path, max_bytes) in self.drift

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
        if effect.overflow is not None and effect.overflow[0] not in self.overflow:
            self.overflow[effect.overflow[0]] = effect.overflow[1]
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
            drift=tuple(sorted(self.drift)), overflow=dict(sorted(self.overflow.items())))

    @classmethod
    def restore(cls, snap: ProcessSnapshot) -> ProcessState:
        """The state a snapshot describes; ValueError if it names a risk or a cap this build
        does not know (a later decision would look it up)."""
        for name in (*snap.risk.values(), snap.overflow.get(RISKY_PIDS, "")):
            if name and name not in SUSPICIOUS:
                raise ValueError(f"unknown risk {name[:40]!r}")
        for cap in snap.overflow:
            if cap not in CAPS:
                raise ValueError(f"unknown cap {cap[:40]!r} (known: {', '.join(CAPS)})")
        return cls(risk={int(pid): name for pid, name in snap.risk.items()},
                   probe_shells=set(snap.probe_shells), admitted_pgids=set(snap.admitted_pgids),
                   tunnels={(t.pid, t.start_time): t.reported for t in snap.tunnels},
                   drift=set(snap.drift), overflow=dict(snap.overflow), seq=snap.seq)


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
