"""procwarden's shared vocabulary: the records every stage reads and writes, and their codec."""

from schemas.codec import DecodeError, decode_json, decode_record, encode, to_plain
from schemas.enums import (
    Action,
    Baseline,
    ChangeKind,
    CopyDirection,
    CriteriaKey,
    CriteriaOp,
    EventKind,
    FailMode,
    FileOp,
    GroupKind,
    IncidentAction,
    Level,
    Mode,
    Origin,
    RuleSource,
    Verdict,
    WorkloadKind,
    WorkloadState,
)
from schemas.envelope import PAYLOAD_TYPES, SCHEMA_VERSION, Envelope, Payload, decode_envelope
from schemas.events import (
    WORKLOAD_EVENT_TYPES,
    CollectorReport,
    DockerCpEvent,
    ExecCheck,
    ExecEvent,
    ExitEvent,
    FileEvent,
    StdioEvent,
    UidChangeEvent,
    Workload,
    WorkloadEvent,
)
from schemas.outcomes import (
    RESERVED_RULE_ID_PREFIX,
    Decision,
    DlqEntry,
    Incident,
    ProcessSnapshot,
    ProfileChange,
    TunnelSighting,
    reserved_rule_id,
)
from schemas.policy import (
    NODES_GROUP,
    CrdImport,
    Criterion,
    GroupConfig,
    GroupDelete,
    GroupPolicy,
    LearnRequest,
    ProfilePatch,
    Rule,
    RuleChange,
    RuleKey,
    ServiceConfig,
)

__all__ = [
    "Action", "Baseline", "ChangeKind", "CollectorReport", "CopyDirection", "CrdImport",
    "CriteriaKey", "CriteriaOp",
    "Criterion", "DecodeError", "Decision", "DlqEntry", "DockerCpEvent", "Envelope", "EventKind",
    "ExecCheck", "ExecEvent", "ExitEvent", "FailMode", "FileEvent", "FileOp", "GroupConfig",
    "GroupDelete",
    "GroupKind", "GroupPolicy", "Incident", "IncidentAction", "LearnRequest", "Level", "Mode",
    "NODES_GROUP", "Origin", "PAYLOAD_TYPES", "Payload", "ProcessSnapshot", "ProfileChange",
    "ProfilePatch",
    "RESERVED_RULE_ID_PREFIX", "Rule", "RuleChange", "RuleKey", "RuleSource", "SCHEMA_VERSION",
    "ServiceConfig", "StdioEvent", "TunnelSighting", "UidChangeEvent", "Verdict",
    "WORKLOAD_EVENT_TYPES", "Workload",
    "WorkloadEvent", "WorkloadKind",
    "WorkloadState", "decode_envelope", "decode_json", "decode_record", "encode",
    "reserved_rule_id", "to_plain",
]
