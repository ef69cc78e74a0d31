"""The one JSON envelope every message travels in, and its typed payloads by kind."""

from __future__ import annotations

from typing import Any

import msgspec

from schemas import codec as _codec
from schemas.codec import DecodeError, _check_shape, _convert, check_size, decode_json, encode
from schemas.enums import EventKind
from schemas.events import (
    CollectorReport,
    DockerCpEvent,
    ExecCheck,
    ExecEvent,
    ExitEvent,
    FileEvent,
    StdioEvent,
    UidChangeEvent,
    Workload,
)
from schemas.outcomes import (
    Decision,
    DlqEntry,
    HoldSettings,
    Incident,
    ProcessSnapshot,
    ProfileChange,
)
from schemas.policy import (
    CrdImport,
    GroupConfig,
    GroupDelete,
    GroupPolicy,
    LearnRequest,
    ProfilePatch,
    ServiceConfig,
)
from schemas.records import Record

__all__ = ["Envelope", "PAYLOAD_TYPES", "Payload", "SCHEMA_VERSION", "decode_envelope", "encode"]

SCHEMA_VERSION = 1
# The last second of the year 9999: a later or negative time breaks every store and format
# that turns it into a date (ClickHouse DateTime64, RFC 5424, CEF), so it is refused here.
MAX_TS = 253402300799.0

Payload = (
    Workload | ExecEvent | ExecCheck | ExitEvent | FileEvent | StdioEvent | UidChangeEvent
    | DockerCpEvent
    | GroupPolicy | ProfilePatch | ServiceConfig | GroupConfig | GroupDelete | CrdImport
    | LearnRequest | Decision | HoldSettings | Incident | ProfileChange | DlqEntry | CollectorReport
    | ProcessSnapshot
)

PAYLOAD_TYPES: dict[EventKind, type] = {
    EventKind.WORKLOAD: Workload,
    EventKind.EXEC: ExecEvent,
    EventKind.EXEC_CHECK: ExecCheck,
    EventKind.EXIT: ExitEvent,
    EventKind.FILE: FileEvent,
    EventKind.STDIO: StdioEvent,
    EventKind.UID_CHANGE: UidChangeEvent,
    EventKind.DOCKER_CP: DockerCpEvent,
    EventKind.POLICY: GroupPolicy,
    EventKind.PROFILE_PATCH: ProfilePatch,
    EventKind.SERVICE_CONFIG: ServiceConfig,
    EventKind.GROUP_CONFIG: GroupConfig,
    EventKind.GROUP_DELETE: GroupDelete,
    EventKind.CRD_IMPORT: CrdImport,
    EventKind.LEARN: LearnRequest,
    EventKind.VERDICT: Decision,
    EventKind.HOLD_SETTINGS: HoldSettings,
    EventKind.SECURITY_EVENT: Incident,
    EventKind.PROFILE_CHANGE: ProfileChange,
    EventKind.DLQ: DlqEntry,
    EventKind.COLLECTOR_REPORT: CollectorReport,
    EventKind.PROCESS_STATE: ProcessSnapshot,
}
_KIND_OF = {tp: kind for kind, tp in PAYLOAD_TYPES.items()}


class Envelope(Record, frozen=True):
    schema_version: int
    event_id: str
    node: str
    cluster: str
    ts: float  # seconds since the epoch, UTC
    kind: EventKind
    payload: Payload

    def __post_init__(self) -> None:
        if not 0.0 <= self.ts <= MAX_TS:  # (NaN too)
            raise ValueError(f"ts {self.ts!r} is not a time (0 to {MAX_TS:.0f})")
        expected = PAYLOAD_TYPES[self.kind]
        if type(self.payload) is not expected:
            raise ValueError(f"kind {self.kind.value} carries {expected.__name__}, "
                             f"not {type(self.payload).__name__}")

    @classmethod
    def wrap(cls, payload: Payload, *, event_id: str, node: str, ts: float,
             cluster: str = "default") -> Envelope:
        return cls(SCHEMA_VERSION, event_id, node, cluster, ts, _KIND_OF[type(payload)], payload)


_HEADER_FIELDS = ("schema_version", "event_id", "node", "cluster", "ts", "kind", "payload")
_HEADER_SET = frozenset(_HEADER_FIELDS)


class _Header(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """The envelope as the fast path reads it: the payload left as text for its kind's type."""

    schema_version: int
    event_id: str
    node: str
    cluster: str
    ts: float
    kind: EventKind
    payload: msgspec.Raw


_HEADER = msgspec.json.Decoder(_Header)
_PAYLOADS: dict[EventKind, msgspec.json.Decoder[Any]] = {
    kind: msgspec.json.Decoder(tp) for kind, tp in PAYLOAD_TYPES.items()}


def decode_envelope(data: bytes | str | dict[str, Any]) -> Envelope:
    """Decode one message; raises DecodeError naming the field and the reason, and nothing
    else whatever `data` is (see `schemas.codec` for the size and nesting bounds)."""
    if not isinstance(data, dict):
        # A valid message is decoded in one pass over its text; anything msgspec refuses is
        # decoded again below, step by step, to name what is wrong the same way every time.
        # Typed decoding nests no deeper than the schema, so depth is measured only there.
        if type(data) is not bytes or len(data) > _codec._limits.max_message_bytes:
            check_size(data)  # (data is text, or too large: this says so)
        try:
            head = _HEADER.decode(data)
            if head.schema_version == SCHEMA_VERSION and head.event_id:
                return Envelope(SCHEMA_VERSION, head.event_id, head.node, head.cluster,
                                head.ts, head.kind, _PAYLOADS[head.kind].decode(head.payload))
        except (msgspec.MsgspecError, ValueError, TypeError, RecursionError):
            pass  # RecursionError: msgspec skipping a deeply nested payload
    else:
        _check_shape(data, "")
    obj = data if isinstance(data, dict) else decode_json(data)
    if type(obj) is not dict:
        raise DecodeError("", "a message must be a JSON object")
    # The version first: a message from another version may have other fields.
    version = obj.get("schema_version")
    if version != SCHEMA_VERSION or type(version) is not int:
        reason = ("required field is missing" if version is None else
                  f"unsupported version {version!r} (this build reads {SCHEMA_VERSION})")
        raise DecodeError("schema_version", reason)
    if obj.keys() != _HEADER_SET:
        for name in obj:
            if name not in _HEADER_SET:
                raise DecodeError(name, f"unknown field (known: {', '.join(_HEADER_FIELDS)})")
        for name in _HEADER_FIELDS:
            if name not in obj:
                raise DecodeError(name, "required field is missing")
    kind = _KINDS.get(obj["kind"]) if type(obj["kind"]) is str else None
    if kind is None:
        raise DecodeError("kind", f"unknown value {obj['kind']!r} (allowed: {_KIND_NAMES})")
    event_id, node, cluster, ts = obj["event_id"], obj["node"], obj["cluster"], obj["ts"]
    if type(event_id) is not str or type(node) is not str or type(cluster) is not str:
        for name, value in (("event_id", event_id), ("node", node), ("cluster", cluster)):
            if type(value) is not str:
                raise DecodeError(name, "expected a string")
    if not event_id:
        raise DecodeError("event_id", "must not be empty")
    if type(ts) is not float and type(ts) is not int:
        raise DecodeError("ts", "expected a number")
    if not 0 <= ts <= MAX_TS:
        raise DecodeError("ts", f"{ts!r} is not a time (epoch seconds, 0 to {MAX_TS:.0f})")
    payload: Payload = _convert(PAYLOAD_TYPES[kind], obj["payload"], "payload")
    return Envelope(SCHEMA_VERSION, event_id, node, cluster, float(ts), kind, payload)


_KINDS = {k.value: k for k in EventKind}
_KIND_NAMES = ", ".join(sorted(_KINDS))
