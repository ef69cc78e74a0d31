"""The policy API's OpenAPI 3.1 document, served at `GET /v1/openapi.json` (docs/api.md).

The request records and the records an answer carries whole (a dry run's `Decision`, an
import's `ProfileChange`s, a group's `Criterion`s, the enums) are msgspec Structs: their JSON
schemas come from msgspec, so a field added to a record is in the document at once. The answer
shapes `streams/web/api.py` builds by hand (`profile_json`, `entry_json`, the group and workload
summaries) are written out below, next to one another; tests/unit/test_openapi.py calls every
operation through the real web layer and validates each answer against the schema given here,
and holds the operations to the routes `streams/web/routes.py` installs and to docs/api.md.

Each operation carries the least role that may call it as `x-procwarden-role` (`viewer`,
`operator`, `admin`, or `none` for the probe, the scrape and the console's files).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import msgspec
import orjson

from schemas import (
    Action,
    Baseline,
    Criterion,
    Decision,
    GroupConfig,
    GroupKind,
    Mode,
    ProfileChange,
    ProfilePatch,
    RuleSource,
    ServiceConfig,
    Workload,
    WorkloadKind,
)
from schemas.envelope import PAYLOAD_TYPES, SCHEMA_VERSION
from schemas.events import WORKLOAD_EVENT_TYPES
from streams.web.api_tokens import ROLES
from streams.web.security_events import _FILTERS, _MAX_EPOCH, COLUMNS

__all__ = ["CONSOLE_ASSETS", "OPERATIONS", "Operation", "document"]

CONSOLE_ASSETS = ("app.js", "style.css")
_REF = "#/components/schemas/{name}"
_JSON = "application/json"


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": _REF.format(name=name)}


def _obj(required: dict[str, Any], optional: dict[str, Any] | None = None,
         description: str = "") -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": required | (optional or {}),
                              "required": sorted(required), "additionalProperties": False}
    if description:
        schema["description"] = description
    return schema


_STR: dict[str, Any] = {"type": "string"}
_INT: dict[str, Any] = {"type": "integer"}
_BOOL: dict[str, Any] = {"type": "boolean"}
_STRS: dict[str, Any] = {"type": "array", "items": _STR}


def _record_schemas() -> dict[str, Any]:
    """The records' schemas from msgspec, with the edits the API makes to what it decodes."""
    events = [tp for kind, tp in PAYLOAD_TYPES.items() if tp in WORKLOAD_EVENT_TYPES]
    _, components = msgspec.json.schema_components(
        [ProfilePatch, ServiceConfig, GroupConfig, Workload, Decision, ProfileChange, Criterion,
         Action, RuleSource, GroupKind, Mode, Baseline, WorkloadKind, *events],
        ref_template=_REF)
    for name in ("ProfilePatch", "ServiceConfig", "GroupConfig"):
        components[name]["properties"]["actor"]["description"] = (
            "ignored: the change is recorded under the calling token's name")
    patch = components["ProfilePatch"]
    patch["required"] = [r for r in patch.get("required", []) if r != "group"]
    patch["properties"]["group"]["description"] = "the path's group (filled in when left out)"
    # The dry run's event: an envelope of one of the event kinds the engine decides.
    kinds = {tp: kind for kind, tp in PAYLOAD_TYPES.items()}
    components["EventEnvelope"] = {
        "description": "An event as a collector publishes it (the envelope of every message)",
        "oneOf": [_obj({"schema_version": {"const": SCHEMA_VERSION},
                        "event_id": {"type": "string", "minLength": 1}, "node": _STR,
                        "cluster": _STR,
                        "ts": {"type": "number", "minimum": 0, "maximum": 253402300799},
                        "kind": {"const": kinds[tp].value}, "payload": _ref(tp.__name__)})
                  for tp in events]}
    # msgspec gives a tuple field's default as a tuple: as JSON it is the list it stands for.
    plain: dict[str, Any] = orjson.loads(orjson.dumps(components))
    return plain


_RULE_ENTRY = _obj(
    {"name": _STR, "path": _STR, "action": _ref("Action"), "cfg_type": _ref("RuleSource"),
     "uuid": _STR, "group": _STR, "allow_update": _BOOL, "created_timestamp": _INT,
     "last_modified_timestamp": _INT},
    {"users": _STRS, "user": _STR, "probe_cmds": _STRS, "learned_from": _STR,
     "hash": {"type": "string", "description": "the pinned SHA-256 of the executable"}},
    "One process rule (NeuVector's process profile entry)")
_PROFILE = _obj(
    {"group": _STR, "version": _INT, "process_list": {"type": "array",
                                                      "items": _ref("ProcessRule")}},
    {"mode": _ref("Mode"), "baseline": _ref("Baseline"), "alert_disabled": _BOOL,
     "hash_enabled": _BOOL,
     "fail_mode": {"enum": ["open", "closed", "default"],
                   "description": "default: each collector's own COLLECTOR_FAIL_MODE"}},
    "A group's process profile, rules in match order; custom groups have no mode, baseline "
    "or fail mode")
_GROUP = _obj(
    {"name": _STR, "kind": _ref("GroupKind"), "mode": {"anyOf": [_ref("Mode"), {"type": "null"}]},
     "baseline": {"anyOf": [_ref("Baseline"), {"type": "null"}]},
     "criteria": {"type": "array", "items": _ref("Criterion")}, "rules": _INT,
     "members": {"type": "integer", "description": "0 in a single group's answer"},
     "version": _INT, "crd_managed": _BOOL})
_ERROR = _obj(
    {"code": {"type": "integer", "description": "the HTTP status"},
     "error": {"enum": ["invalid", "unauthorized", "forbidden", "not found", "conflict",
                        "precondition failed", "too large", "unavailable", "timeout",
                        "error"]},
     "message": _STR},
    {"field": {"type": "string", "description": "the request field at fault, when one is"},
     "error_id": {"type": "string", "description": "500 only: the worker's log has the "
                                                   "detail under this id"}},
    "Every error the API answers")
_UINT = {"type": "integer", "minimum": 0}
_SECURITY_EVENT = _obj(
    {name: (_UINT if name in ("proc_real_uid", "proc_effective_uid", "count")
            else _BOOL if name == "conn_ingress" else _STR)
     for name in COLUMNS if name != "ts"} | {"reported_timestamp": _UINT},
    description="One incident as the ClickHouse sink stored it (docs/soc.md)")

_ANSWERS: dict[str, Any] = {
    "ProcessRule": _RULE_ENTRY,
    "ProcessProfile": _PROFILE,
    "Group": _GROUP,
    "Error": _ERROR,
    "SecurityEvent": _SECURITY_EVENT,
    "ProfileList": _obj({"process_profiles": {"type": "array",
                                              "items": _ref("ProcessProfile")}}),
    "ProfileAnswer": _obj({"process_profile": _ref("ProcessProfile")}),
    "RuleAnswer": _obj({"process_rules": {"type": "array", "minItems": 1, "items": _obj(
        {"active": {"const": 1}, "group": _STR, "rule": _ref("ProcessRule")})}}),
    "WorkloadProfile": _obj({"process_profile": _obj(
        {"group": _STR, "mode": _ref("Mode"), "baseline": _ref("Baseline"),
         "custom_groups": _STRS,
         "process_list": {"type": "array", "items": _ref("ProcessRule")}},
        description="What applies to one workload: its learned group's mode and baseline, "
                    "the custom groups it is in, all their rules in match order")}),
    "GroupList": _obj({"groups": {"type": "array", "items": _ref("Group")}}),
    "GroupAnswer": _obj({"group": _ref("Group")}),
    "Deleted": _obj({"deleted": _STR}),
    "ImportAnswer": _obj({"groups": _STRS,
                          "changes": {"type": "array", "items": _ref("ProfileChange")}}),
    "DryRunAnswer": _obj({"decision": _ref("Decision")}),
    "Status": _obj({"ready": _BOOL, "groups": _INT, "workloads": _INT,
                    "counts": {"type": "object", "additionalProperties": _INT}}),
    "WorkloadList": _obj({"workloads": {"type": "array", "items": _obj(
        {"id": _STR, "kind": _ref("WorkloadKind"), "name": _STR, "namespace": _STR,
         "image": _STR, "node": _STR, "service": _STR, "group": _STR,
         "custom_groups": _STRS, "system": _BOOL})}}),
    "SecurityEventList": _obj({"security_events": {"type": "array",
                                                   "items": _ref("SecurityEvent")}}),
    "Ready": _obj({"role": {"const": "streams"}, "ready": _BOOL, "reason": _STR}),
    "OpenApi": {"type": "object", "required": ["openapi", "paths"],
                "description": "This document"},
}

_REQUESTS: dict[str, Any] = {
    "ProfilePatchBody": _obj({"process_profile_config": _ref("ProfilePatch")}),
    "ServiceConfigBody": _obj({"config": _ref("ServiceConfig")}),
    "GroupConfigBody": _obj({"config": _ref("GroupConfig")}),
    "DryRunBody": _obj({"event": _ref("EventEnvelope")}, {"workload": _ref("Workload")}),
}

# Why each status is answered, as the operations below list them.
_WHY = {
    "400": "invalid request (the message and `field` say what)",
    "401": "missing or wrong bearer token",
    "403": "the token's role does not allow this, the API has no tokens, or (open reads) "
           "the Host is not served",
    "404": "no such group, rule, workload or file",
    "409": "conflict: the group exists already, or is of another kind",
    "412": "If-Match names a version the group is no longer at",
    "413": "the body is over the limit (4 x `STREAMS_MAX_CRD_BYTES` + 64 KiB read at all; "
           "`STREAMS_MAX_CRD_BYTES` for an import's text)",
    "500": "unexpected error: a generic message with an error id",
    "503": "not available now (ClickHouse not configured or unreachable; /ready: not "
           "deciding)",
    "504": "sent to the group's writer but not published within the write timeout",
}


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    role: str  # the least role that may call it, or "none"
    summary: str
    answer: str  # the 200 answer's schema (components), or a media type for non-JSON
    errors: tuple[str, ...] = ()
    body: str = ""  # the request body's schema (components), or a media type
    query: tuple[dict[str, Any], ...] = ()
    if_match: bool = False
    etag: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


_READ_ERRORS = ("401", "403", "500")
_WRITE_ERRORS = ("400", "401", "403", "404", "409", "413", "500", "504")


def _query() -> tuple[dict[str, Any], ...]:
    params: list[dict[str, Any]] = [
        {"name": key, "in": "query", "required": False, "schema": _STR,
         "description": f"only incidents whose {column} is this"}
        for key, (column, _) in sorted(_FILTERS.items())]
    for key, op in (("since", "at or after"), ("until", "at or before")):
        params.append({"name": key, "in": "query", "required": False,
                       "schema": {"type": "number", "minimum": 0, "maximum": _MAX_EPOCH},
                       "description": f"only incidents reported {op} this time (epoch seconds, "
                                      f"0 to {_MAX_EPOCH}; anything else is a 400)"})
    params.append({"name": "limit", "in": "query", "required": False,
                   "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
                   "description": "at most this many, newest first (clamped to 1..1000)"})
    return tuple(params)


OPERATIONS: tuple[Operation, ...] = (
    Operation("GET", "/v1/process_profile", "viewer", "Every group's process profile",
              "ProfileList", _READ_ERRORS),
    Operation("GET", "/v1/process_profile/{group}", "viewer", "One group's process profile",
              "ProfileAnswer", ("404", *_READ_ERRORS), etag=True),
    Operation("PATCH", "/v1/process_profile/{group}", "operator",
              "Change a group's rules, baseline, alerting, hash pinning or fail mode",
              "ProfileAnswer", (*_WRITE_ERRORS, "412"), body="ProfilePatchBody",
              if_match=True, etag=True),
    Operation("GET", "/v1/process_rules/{uuid}", "viewer", "The rule with this uuid",
              "RuleAnswer", ("404", *_READ_ERRORS)),
    Operation("GET", "/v1/workload/{wid}/process_profile", "viewer",
              "What applies to one container", "WorkloadProfile", ("404", *_READ_ERRORS)),
    Operation("GET", "/v1/host/{wid}/process_profile", "viewer", "What applies to one host",
              "WorkloadProfile", ("404", *_READ_ERRORS)),
    Operation("PATCH", "/v1/service/config", "operator",
              "Set the mode and baseline of services' learned groups (or `nodes`)",
              "ProfileList", _WRITE_ERRORS, body="ServiceConfigBody"),
    Operation("GET", "/v1/group", "viewer", "Every group", "GroupList", _READ_ERRORS),
    Operation("POST", "/v1/group", "admin", "Create a custom group", "GroupAnswer",
              _WRITE_ERRORS, body="GroupConfigBody"),
    Operation("GET", "/v1/group/{name}", "viewer", "One group", "GroupAnswer",
              ("404", *_READ_ERRORS), etag=True),
    Operation("PATCH", "/v1/group/{name}", "admin", "Change a custom group's criteria",
              "GroupAnswer", (*_WRITE_ERRORS, "412"), body="GroupConfigBody", if_match=True,
              etag=True),
    Operation("DELETE", "/v1/group/{name}", "admin", "Delete a custom group", "Deleted",
              ("400", "401", "403", "404", "409", "412", "500", "504"), if_match=True),
    Operation("POST", "/v1/policy/import", "admin",
              "Import NvSecurityRule / NvClusterSecurityRule documents (CRD YAML or JSON)",
              "ImportAnswer", _WRITE_ERRORS, body="application/yaml"),
    Operation("POST", "/v1/dry-run", "viewer",
              "What the engine would decide for one event; nothing is learned or kept",
              "DryRunAnswer", ("400", "401", "403", "404", "413", "500"), body="DryRunBody"),
    Operation("GET", "/v1/status", "viewer", "The worker's readiness and counts", "Status",
              _READ_ERRORS),
    Operation("GET", "/v1/workload", "viewer", "Every announced workload and its groups",
              "WorkloadList", _READ_ERRORS),
    Operation("GET", "/v1/security_events", "viewer",
              "The latest incidents from ClickHouse, newest first", "SecurityEventList",
              ("400", *_READ_ERRORS, "503"), query=_query()),
    Operation("GET", "/v1/openapi.json", "viewer", "This document", "OpenApi", _READ_ERRORS),
    Operation("GET", "/console", "none", "The console's page (docs/console.md)", "text/html",
              ("403",)),
    Operation("GET", "/console/{asset}", "none", "The console's script and style sheet",
              "text/javascript", ("403", "404")),
    Operation("GET", "/ready", "none", "Readiness probe: 200 while the worker decides",
              "Ready", ("503",)),
    Operation("GET", "/metrics", "none", "Prometheus metrics", "text/plain"),
)

_PATH_PARAMS = {
    "group": "a group: `nodes`, `nv.<service>` (learned) or a custom group's name",
    "uuid": "a rule's uuid",
    "wid": "a workload's id (the container id, or the host's for /v1/host)",
    "name": "a group's name",
    "asset": "one of the console's files",
}


def _content(what: str) -> dict[str, Any]:
    if what == "text/javascript":  # the console's files: its script or its style sheet
        return {"text/javascript": {"schema": _STR}, "text/css": {"schema": _STR}}
    if "/" in what:
        return {what: {"schema": _STR}}
    return {_JSON: {"schema": _ref(what)}}


def _operation_id(op: Operation) -> str:
    words = [w.strip("{}") for w in op.path.replace("-", "_").replace(".", "_").split("/") if w]
    return "_".join([op.method.lower(), *words])


def _role_text(role: str) -> str:
    if role == "none":
        return "No token: open to probes, scrapers and browsers."
    text = f"Least role: `{role}` (a bearer token of this role or above)."
    if role == "viewer":
        text += " No token is needed when `STREAMS_OPEN_READS=true` (then Host is checked)."
    return text


def _operation(op: Operation) -> dict[str, Any]:
    params: list[dict[str, Any]] = []
    for part in op.path.split("/"):
        if part.startswith("{"):
            name = part[1:-1]
            schema = {"enum": list(CONSOLE_ASSETS)} if name == "asset" else _STR
            params.append({"name": name, "in": "path", "required": True, "schema": schema,
                           "description": _PATH_PARAMS[name]})
    params += op.query
    if op.if_match:
        params.append({"name": "If-Match", "in": "header", "required": False, "schema": _STR,
                       "description": 'the ETag read before (`"<version>"`, or `*`): the '
                                      "change is refused with 412 if the group changed since"})
    responses: dict[str, Any] = {"200": {"description": op.summary, "content":
                                         _content(op.answer)}}
    if op.etag:
        responses["200"]["headers"] = {"ETag": {
            "description": 'the group\'s version, `"<version>"`: send it back in If-Match',
            "schema": _STR}}
    for code in sorted(op.errors):
        if op.path == "/ready" and code == "503":
            responses[code] = {"description": "not deciding: the reason says why",
                               "content": _content("Ready")}
        else:
            responses[code] = {"description": _WHY[code], "content": _content("Error")}
    out: dict[str, Any] = {
        "operationId": _operation_id(op),
        "summary": op.summary, "description": _role_text(op.role),
        "x-procwarden-role": op.role, "responses": responses,
        "security": [] if op.role == "none" else [{"bearerToken": []}]}
    if params:
        out["parameters"] = params
    if op.body:
        media = op.body if "/" in op.body else _JSON
        schema = _STR if "/" in op.body else _ref(op.body)
        out["requestBody"] = {"required": True, "content": {media: {"schema": schema}}}
    return out


@functools.cache
def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document (built once: it depends on the code only)."""
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "procwarden policy API", "version": "1",
            "description": (
                "NeuVector-compatible process profile API served by the stream worker "
                "(`procwarden streams`). docs/api.md is the reference with examples. Roles: "
                + ", ".join(f"`{r}`" for r in ROLES) + ", each allowed what the ones before "
                "it are. HEAD is answered on every path as GET without a body (405 where the "
                "path has no GET); anything not listed here answers 404.")},
        "servers": [{"url": "http://127.0.0.1:6066"}],
        "security": [{"bearerToken": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearerToken": {
                "type": "http", "scheme": "bearer",
                "description": "a token from `procwarden token add NAME --role ROLE` (or "
                               "STREAMS_API_TOKEN, an admin named env)"}},
            "schemas": _record_schemas() | _ANSWERS | _REQUESTS},
    }
