"""Closed vocabularies of the wire format.

Every enum here is parsed at the boundary: an unknown value is a decode error, never a silent
default. Values are the exact strings that travel on the wire and appear in NeuVector's API.
"""

from __future__ import annotations

from enum import Enum

__all__ = [
    "Action",
    "Baseline",
    "ChangeKind",
    "CopyDirection",
    "CriteriaKey",
    "CriteriaOp",
    "EventKind",
    "FailMode",
    "FileOp",
    "GroupKind",
    "IncidentAction",
    "Level",
    "Mode",
    "Origin",
    "RuleSource",
    "Verdict",
    "WorkloadKind",
    "WorkloadState",
]


class _WireEnum(str, Enum):
    """A str-valued enum whose str() is its wire value."""

    def __str__(self) -> str:
        return str(self.value)


class Mode(_WireEnum):
    DISCOVER = "Discover"
    MONITOR = "Monitor"
    PROTECT = "Protect"


class Baseline(_WireEnum):
    ZERO_DRIFT = "zero-drift"
    BASIC = "basic"


class Action(_WireEnum):
    ALLOW = "allow"
    DENY = "deny"


class RuleSource(_WireEnum):
    """NeuVector's `cfg_type`: who owns a rule."""

    LEARNED = "learned"
    USER_CREATED = "user_created"
    GROUND = "ground"  # imported from a CRD


class GroupKind(_WireEnum):
    LEARNED = "learned"
    CUSTOM = "custom"
    NODES = "nodes"


class Verdict(_WireEnum):
    ALLOW = "allow"
    LEARN = "learn"
    ALERT = "alert"
    BLOCK = "block"
    ACCEPT = "accept"
    REJECT = "reject"
    NONE = "none"


class EventKind(_WireEnum):
    """The `kind` of an envelope; it names the payload's record type."""

    WORKLOAD = "workload"
    EXEC = "exec"
    EXEC_CHECK = "exec_check"
    EXIT = "exit"
    FILE = "file"
    STDIO = "stdio"
    UID_CHANGE = "uid_change"
    DOCKER_CP = "docker_cp"
    POLICY = "policy"
    PROFILE_PATCH = "profile_patch"
    SERVICE_CONFIG = "service_config"
    GROUP_CONFIG = "group_config"
    GROUP_DELETE = "group_delete"
    CRD_IMPORT = "crd_import"
    LEARN = "learn"
    VERDICT = "verdict"
    HOLD_SETTINGS = "hold_settings"
    SECURITY_EVENT = "security_event"
    PROFILE_CHANGE = "profile_change"
    DLQ = "dlq"
    COLLECTOR_REPORT = "collector_report"
    PROCESS_STATE = "process_state"


class FileOp(_WireEnum):
    CREATE = "create"
    MODIFY = "modify"
    ATTRIB = "attrib"
    DELETE = "delete"


class WorkloadKind(_WireEnum):
    CONTAINER = "container"
    HOST = "host"


class WorkloadState(_WireEnum):
    RUNNING = "running"
    STOPPED = "stopped"


class Origin(_WireEnum):
    """Where an executable came from, relative to the container's start snapshot."""

    IMAGE = "image"
    NEW = "new"
    MODIFIED = "modified"


class CriteriaKey(_WireEnum):
    NAMESPACE = "namespace"
    SERVICE = "service"
    IMAGE = "image"
    CONTAINER = "container"
    LABEL = "label"
    NODE = "node"


class CriteriaOp(_WireEnum):
    EQ = "="
    NE = "!="
    CONTAINS = "contains"
    PREFIX = "prefix"
    REGEX = "regex"
    NOT_REGEX = "!regex"


class IncidentAction(_WireEnum):
    VIOLATE = "violate"
    DENY = "deny"


class Level(_WireEnum):
    CRITICAL = "CRITICAL"
    WARNING = "WARNING"
    INFO = "INFO"


class CopyDirection(_WireEnum):
    TO_CONTAINER = "to_container"
    FROM_CONTAINER = "from_container"


class FailMode(_WireEnum):
    OPEN = "open"
    CLOSED = "closed"


class ChangeKind(_WireEnum):
    GROUP_CREATED = "group_created"
    GROUP_DELETED = "group_deleted"
    RULE_LEARNED = "rule_learned"
    USER_LEARNED = "user_learned"
    HASH_LEARNED = "hash_learned"
    PROBE_RULE = "probe_rule"
    RULE_ADDED = "rule_added"
    RULE_CHANGED = "rule_changed"
    RULE_DELETED = "rule_deleted"
    MODE_CHANGED = "mode_changed"
    BASELINE_CHANGED = "baseline_changed"
    FLAGS_CHANGED = "flags_changed"
    CRITERIA_CHANGED = "criteria_changed"
    CRD_IMPORTED = "crd_imported"
    LEARNING_CAPPED = "learning_capped"  # a cap refused a learn: the group stopped learning
