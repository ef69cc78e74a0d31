"""What the pipeline produces: decisions (verdicts), hold settings, incidents, profile changes,
DLQ entries."""

from __future__ import annotations

from schemas.enums import (
    Baseline,
    ChangeKind,
    EventKind,
    FailMode,
    IncidentAction,
    Level,
    Mode,
    Verdict,
)
from schemas.policy import LearnRequest, Rule
from schemas.reasons import WHOLE_REASONS, Reason, parse
from schemas.records import Record, field

__all__ = [
    "Decision",
    "DlqEntry",
    "HoldSettings",
    "Incident",
    "ProcessSnapshot",
    "ProfileChange",
    "RESERVED_RULE_ID_PREFIX",
    "TunnelSighting",
    "reserved_rule_id",
]

RESERVED_RULE_ID_PREFIX = "00000000-0000-0000-0000-0000000000"


def reserved_rule_id(n: int) -> str:
    """NeuVector's reserved rule ids `…000`…`…007` (two final digits)."""
    return f"{RESERVED_RULE_ID_PREFIX}{n:02d}"


class Incident(Record, frozen=True):
    """A security event with NeuVector's names and fields, so existing SIEM parsers work."""

    name: str
    level: Level
    reported_timestamp: int
    reported_at: str
    cluster_name: str
    host_id: str
    host_name: str
    enforcer_id: str
    enforcer_name: str
    id: str
    workload_id: str
    workload_name: str
    workload_domain: str
    workload_image: str
    workload_service: str
    action: IncidentAction
    group: str
    rule_id: str
    message: str
    proc_name: str = ""
    proc_path: str = ""
    proc_cmd: str = ""
    proc_real_uid: int = 0
    proc_effective_uid: int = 0
    proc_real_user: str = ""
    proc_effective_user: str = ""
    proc_parent_name: str = ""
    proc_parent_path: str = ""
    file_path: str = ""
    file_name: str = ""
    conn_ingress: bool = False
    aggregation_from: int = 0
    count: int = 1


class Decision(Record, frozen=True):
    """The engine's answer for one event; also the record on the verdicts topic.

    `reason` is a reason's wire string (schemas/reasons.py: `rule`, `learn`, `violation:R5`,
    `pre-exec:deny-rule:<uuid>`, ...), checked as the record is built or decoded: an unknown
    code is a decode error. `why` is the same reason as code and detail.

    Every decision also carries its workload's hold settings (`pre_exec`, `pre_write`,
    `fail_mode`, `policy_stamp`): a collector that holds none for the workload (it started after
    they were sent, or lost its holds.json) takes them from the next verdict it reads rather than
    wait for a policy change to send `HoldSettings` again; and an `exec_check` answer's stamp
    says which policies the answer holds for, the key it is cached under.
    """

    event_id: str
    event_kind: EventKind
    workload_id: str
    node: str
    verdict: Verdict
    reason: str
    group: str = ""  # the group the decision is attributed to
    rule_uuid: str = ""
    rule_group: str = ""
    mode: Mode | None = None
    baseline: Baseline | None = None
    would_block: bool = False  # Monitor: Protect would have blocked this
    suppressed: bool = False  # alert_disabled: incident kept out of published outputs
    pid: int = 0
    start_time: int = 0
    name: str = ""  # process name as judged (BusyBox applet resolved)
    path: str = ""
    user: str = ""
    ts: float = 0.0
    policy_version: int = 0
    # The workload's hold settings as this decision was made (HoldSettings says each one).
    pre_exec: bool = False
    pre_write: bool = False
    fail_mode: FailMode | None = None  # the group's; None: the collector's own setting
    policy_stamp: str = ""
    # An allowed `exec_check`: the file is allowed before exec whoever runs it (the container's
    # own processes too), so the collector may let the kernel answer its later execs.
    any_caller: bool = False
    incident: Incident | None = None
    learn: LearnRequest | None = None
    # A cap on what a workload or group grows refused something for this decision (its name:
    # `drift_paths`, `learned_rules`, ...; the worker counts them), and, the first time that cap
    # is hit for the workload or group, the incident that says so (published like `incident`).
    capped: str = ""
    overflow: Incident | None = None

    def __post_init__(self) -> None:
        if self.reason not in WHOLE_REASONS:  # (inline: every decision is built through here)
            parse(self.reason)

    @property
    def why(self) -> Reason:
        return parse(self.reason)


class HoldSettings(Record, frozen=True):
    """How a workload's collector holds its execs and writes before they happen: sent on the
    verdicts topic (keyed by node) when they change (a policy change, a workload announced into
    a group in Protect). A control message, not a decision: it answers no event, so a collector
    takes it only for a workload of its node and signed for that node (unsigned, if at all, only
    when it holds no less: collectors/enforcement/verdict_checks.py)."""

    workload_id: str
    node: str
    group: str  # the workload's learned group (`nodes` for a host): whose policy this follows
    policy_version: int  # of that group; the stamp covers its custom groups too
    pre_exec: bool  # hold its execs before they run (a non-system container in Protect)
    pre_write: bool  # ...and, zero-drift, deny its drift writes before they happen
    # Changes whenever any policy the workload's decisions read changes: the collector's cached
    # answers are kept under it, so a new stamp invalidates them.
    policy_stamp: str
    fail_mode: FailMode | None = None  # the group's; None: the collector's own setting


class ProfileChange(Record, frozen=True):
    """One change to a group's profile, with who or what made it and why."""

    group: str
    change: ChangeKind
    version: int
    ts: float
    actor: str  # "learning", "probe", "api", "crd", ...
    rule: Rule | None = None
    detail: str = ""
    cause_event_id: str = ""


class DlqEntry(Record, frozen=True):
    """An undecodable or invalid message, with where it came from and why it was refused."""

    topic: str
    partition: int
    offset: int
    error: str
    key: str = ""
    # The original bytes as text (replacement characters for invalid UTF-8), cut to a bound
    # (transport.guard): a refused message must never make a DLQ record too large to publish.
    value: str = ""
    ts: float = 0.0
    value_length: int = 0  # of the original value, in bytes
    value_sha256: str = ""  # of the original value, whole: finds it again on its topic
    truncated: bool = False  # `value` (or `key`, `error`) holds only the start
    stage: str = ""  # the role that refused it (streams, sink-clickhouse, siem, collector)


class TunnelSighting(Record, frozen=True):
    pid: int
    start_time: int
    reported: bool = False


class ProcessSnapshot(Record, frozen=True):
    """What earlier events of a workload left for its later decisions (risky processes, probe
    shells, admitted process groups, reverse-shell sightings, drifted files): the value of the
    compacted process-state topic, keyed by workload id, so a worker that restarts or takes the
    workload over decides as the one before it would have."""

    workload_id: str
    seq: int  # grows with every change: a worker keeps only newer snapshots than it has
    risk: dict[str, str] = field(default_factory=dict)  # pid (as text) -> risk name
    probe_shells: tuple[int, ...] = ()
    admitted_pgids: tuple[int, ...] = ()
    tunnels: tuple[TunnelSighting, ...] = ()
    drift: tuple[str, ...] = ()  # paths; a path too long to keep as it is, by its digest
    # The caps this workload overflowed (cap name -> what could not be kept): sticky for the
    # workload's life, each reported once (streams/engine/state.py says what each one changes).
    overflow: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for pid in self.risk:
            # (int() would also take other scripts' digits: no pid this project wrote)
            if not (pid.isascii() and pid.isdecimal() and len(pid) <= 20):
                raise ValueError(f"risk is keyed by pid, not {pid[:40]!r}")
