"""Group policies, their rules, and the edits that change them (REST, CLI, CRD, learning)."""

from __future__ import annotations

from schemas.enums import (
    Action,
    Baseline,
    CriteriaKey,
    CriteriaOp,
    FailMode,
    GroupKind,
    Mode,
    RuleSource,
)
from schemas.records import Record, field

__all__ = [
    "CrdImport",
    "Criterion",
    "GroupConfig",
    "GroupDelete",
    "GroupPolicy",
    "LearnRequest",
    "NODES_GROUP",
    "ProfilePatch",
    "Rule",
    "RuleChange",
    "RuleKey",
    "ServiceConfig",
]

NODES_GROUP = "nodes"


class Criterion(Record, frozen=True):
    key: CriteriaKey
    op: CriteriaOp
    value: str


class Rule(Record, frozen=True):
    """One process rule (NeuVector's process profile entry)."""

    name: str
    path: str
    action: Action
    cfg_type: RuleSource
    uuid: str
    group: str
    allow_update: bool = False
    users: tuple[str, ...] = ()  # learned rules: the users they were learned with
    probe_cmds: tuple[str, ...] = ()  # probe rules: each probe command line, args joined by ","
    created_timestamp: int = 0
    last_modified_timestamp: int = 0
    learned_from: str = ""  # event_id of the exec that taught a learned rule

    @property
    def key(self) -> tuple[str, str]:
        return (self.name, self.path)


class GroupPolicy(Record, frozen=True):
    """A group's profile: the value of the compacted policy topic, keyed by group name."""

    name: str
    kind: GroupKind
    mode: Mode | None = None  # learned groups and nodes only
    baseline: Baseline | None = None
    alert_disabled: bool = False
    hash_enabled: bool = False
    criteria: tuple[Criterion, ...] = ()  # custom groups only
    rules: tuple[Rule, ...] = ()
    hash_pins: dict[str, str] = field(default_factory=dict)  # exe path -> sha256
    version: int = 0
    crd_managed: bool = False  # mode/baseline came from a CRD: REST may not change them
    updated_at: float = 0.0
    # What a collector does with a held exec when no verdict comes in time (None: its own
    # COLLECTOR_FAIL_MODE). Learned groups and nodes only.
    fail_mode: FailMode | None = None
    # The cap on learning (learned rules, users, hash pins, string lengths, record size) that
    # refused a learn ("" while none has): the group learns nothing more until an admin changes
    # its mode, deletes rules or turns hash pinning on or off.
    learn_capped: str = ""

    def __post_init__(self) -> None:
        if self.kind is GroupKind.CUSTOM:
            if self.mode is not None or self.baseline is not None or self.fail_mode is not None:
                raise ValueError("a custom group has no mode, baseline or fail mode")
        elif self.mode is None or self.baseline is None:
            raise ValueError(f"a {self.kind.value} group needs a mode and a baseline")
        if self.kind is GroupKind.NODES and self.baseline is not Baseline.BASIC:
            raise ValueError("the nodes group's baseline is always basic")


class RuleKey(Record, frozen=True):
    name: str
    path: str


class RuleChange(Record, frozen=True):
    name: str
    path: str
    action: str  # validated by the engine, so a bad value is a 400 that names it
    allow_update: bool = False


class ProfilePatch(Record, frozen=True):
    """NeuVector's `PATCH /v1/process_profile/{group}` body (`process_profile_config`)."""

    group: str
    baseline: str | None = None
    alert_disabled: bool | None = None
    hash_enabled: bool | None = None
    fail_mode: str | None = None  # procwarden's: open | closed | default (the collector's)
    process_change_list: tuple[RuleChange, ...] = ()
    process_delete_list: tuple[RuleKey, ...] = ()
    actor: str = "api"


class ServiceConfig(Record, frozen=True):
    """NeuVector's `PATCH /v1/service/config` body (`config`)."""

    services: tuple[str, ...]
    profile_mode: str | None = None
    baseline_profile: str | None = None
    actor: str = "api"


class GroupConfig(Record, frozen=True):
    """Create or update a custom group (`POST /v1/group`, `PATCH /v1/group/{name}`)."""

    name: str
    criteria: tuple[Criterion, ...]
    actor: str = "api"


class GroupDelete(Record, frozen=True):
    name: str
    actor: str = "api"


class CrdImport(Record, frozen=True):
    """The text of one or more NvSecurityRule / NvClusterSecurityRule documents."""

    text: str
    actor: str = "crd"


class LearnRequest(Record, frozen=True):
    """A rule, user or hash the engine learned, for the group's single writer to apply."""

    group: str
    name: str
    path: str
    user: str = ""
    hash: str = ""
    rule_uuid: str = ""  # the learned rule that gains a user (user-learn)
    cause_event_id: str = ""
    ts: float = 0.0
    add_rule: bool = True  # False: only pin the hash / add the user to rule_uuid
    # The cap the decider found this learn over (`learned_rules`, ...): the writer learns
    # nothing from it and marks the group capped.
    capped: str = ""
