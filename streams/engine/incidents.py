"""Incidents with NeuVector's names, reserved rule ids, messages and fields (§7.4, §9, §11)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from functools import lru_cache
from typing import NamedTuple

from schemas import Envelope, Incident, IncidentAction, Level
from schemas.masking import mask_cmdline
from streams.engine.view import PolicyView

__all__ = ["ProcFacts", "incident", "incident_name"]

_NAMES = {
    # kind: (container name, host name)
    "process": ("Process.Profile.Violation", "Host.Process.Violation"),
    "suspicious": ("Container.Suspicious.Process", "Host.Suspicious.Process"),
    "tunnel": ("Container.Tunnel.Detected", "Host.Tunnel.Detected"),
    "escalation": ("Container.Privilege.Escalation", "Host.Privilege.Escalation"),
    "file": ("Container.FileAccess.Violation", "Container.FileAccess.Violation"),
    # procwarden's own: a cap on what a workload or group grows was hit (issue 21)
    "overflow": ("Container.Profile.Overflow", "Host.Profile.Overflow"),
}


@lru_cache(maxsize=4096)
def _iso_utc(second: int) -> str:
    # Memoised: incidents of one burst share their second, and strftime is slow.
    return datetime.fromtimestamp(second, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _incident_id(event_id: str, kind: str) -> str:
    """A stable uuid-shaped id per (event, incident kind), so a replayed event keeps its id."""
    h = hashlib.blake2b(f"{event_id}\x00{kind}".encode(), digest_size=16).hexdigest()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def incident_name(kind: str, is_host: bool) -> str:
    return _NAMES[kind][1 if is_host else 0]


class ProcFacts(NamedTuple):
    """The process an incident describes."""

    name: str = ""
    path: str = ""
    argv: tuple[str, ...] = ()
    ruid: int = 0
    euid: int = 0
    real_user: str = ""
    user: str = ""
    parent_name: str = ""
    parent_path: str = ""


def incident(view: PolicyView, env: Envelope, *, kind: str, level: Level, action: IncidentAction,
             group: str, rule_id: str, message: str, proc: ProcFacts, file_path: str = "",
             conn_ingress: bool = False, id_kind: str = "") -> Incident:
    wl = view.workload
    reported = int(env.ts)
    at = _iso_utc(reported)
    cmd = " ".join(proc.argv) if view.settings.full_cmdline else mask_cmdline(proc.argv)
    service = view.learned.name
    return Incident(
        name=incident_name(kind, view.is_host),
        level=level,
        reported_timestamp=reported,
        reported_at=at,
        cluster_name=env.cluster,
        host_id=wl.node,
        host_name=wl.node,
        enforcer_id=env.node,
        enforcer_name=env.node,
        id=_incident_id(env.event_id, id_kind or kind),
        workload_id=wl.id,
        workload_name=wl.name,
        workload_domain=wl.namespace,
        workload_image=wl.image,
        workload_service=service[3:] if service.startswith("nv.") else service,
        action=action,
        group=group,
        rule_id=rule_id,
        message=message,
        proc_name=proc.name,
        proc_path=proc.path,
        proc_cmd=cmd,
        proc_real_uid=proc.ruid,
        proc_effective_uid=proc.euid,
        proc_real_user=proc.real_user,
        proc_effective_user=proc.user,
        proc_parent_name=proc.parent_name,
        proc_parent_path=proc.parent_path,
        file_path=file_path,
        file_name=file_path.rsplit("/", 1)[-1] if file_path else "",
        conn_ingress=conn_ingress,
    )
