"""NeuVector security-rule CRDs (`NvSecurityRule`, `NvClusterSecurityRule`) to group policies.

Only the process part is read (§12): the target group (learned `nv.<service>.<ns>`, `nodes`, or a
custom group with criteria), `process_profile` (mode, baseline) and `process` rules, stored as
`ground` rules that replace the group's previous ones. Network and file sections are ignored.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import orjson
import yaml

from schemas import (
    NODES_GROUP,
    Baseline,
    ChangeKind,
    CriteriaKey,
    CriteriaOp,
    Criterion,
    GroupKind,
    GroupPolicy,
    Mode,
    Rule,
    RuleSource,
)
from schemas import Action as RuleAction
from schemas.records import replace
from streams.engine.policies import EditResult, _Edit, check_record_size
from streams.engine.probes import rule_uuid
from streams.engine.validation import (
    PolicyError,
    parse_baseline,
    parse_mode,
    trim_space,
    validate_criteria,
    validate_custom_group_name,
    validate_rule,
)
from streams.engine.view import EngineSettings

__all__ = ["CRD_KINDS", "apply_crd", "apply_crd_documents", "parse_crd_documents"]

CRD_KINDS = frozenset({"NvSecurityRule", "NvClusterSecurityRule"})
_API_VERSION = "neuvector.com/v1"
# libyaml's loader when PyYAML was built with it (the wheels are): about ten times faster than
# the pure-Python one, and it refuses nesting past 1,000 levels instead of recursing.
_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
# Values a document may hold once YAML aliases are expanded (what the JSON form holds): a few
# aliases of aliases stand for a billion values.
_MAX_VALUES = 1_000_000


@dataclasses.dataclass(frozen=True, slots=True)
class _GroupImport:
    group: str
    kind: GroupKind
    criteria: tuple[Criterion, ...]
    mode: Mode | None
    baseline: Baseline | None
    rules: tuple[tuple[str, str, RuleAction, bool], ...]  # name, path, action, allow_update
    where: str


def parse_crd_documents(text: str, max_bytes: int = 1024 * 1024) -> list[dict[str, Any]]:
    """The CRD documents in YAML (or JSON) text; a `kind: List` contributes its items.

    What comes back is plain JSON data (YAML's dates and the like as strings), the same as
    what the API sends each group's writer as JSON, so both judge the same documents and only
    the API parses YAML. Too large → 413; not YAML, nested too deeply, or expanding too much
    through aliases → 400."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise PolicyError(f"the documents are {size} bytes, over the {max_bytes}-byte limit",
                          status=413, field="document")
    docs = _load(text)
    out: list[dict[str, Any]] = []
    for i, doc in enumerate(docs):
        if not isinstance(doc, dict):
            raise PolicyError("each document must be a mapping", field=f"document[{i}]")
        if doc.get("kind") == "List":
            items = doc.get("items") or []
            if not isinstance(items, list):
                raise PolicyError("items must be a list", field=f"document[{i}].items")
            out.extend(items)
        else:
            out.append(doc)
    return out


def _load(text: str) -> list[Any]:
    if text.lstrip()[:1] in ("{", "["):
        try:
            return [orjson.loads(text)]  # JSON (what the API sends the writers), in C
        except orjson.JSONDecodeError:
            pass  # YAML's flow style, or nested past orjson's limit: YAML says which
    try:
        docs = [d for d in yaml.load_all(text, Loader=_LOADER) if d is not None]
    except yaml.YAMLError as exc:
        raise PolicyError(f"not valid YAML: {exc}", field="document") from None
    except RecursionError:  # the pure-Python loader, where libyaml is missing
        raise PolicyError("not valid YAML: nested too deeply", field="document") from None
    _check_expansion(docs)
    try:
        plain = orjson.dumps(docs, default=str, option=orjson.OPT_NON_STR_KEYS)
    except orjson.JSONEncodeError as exc:  # orjson stops at 254 levels
        raise PolicyError(f"the documents are nested too deeply ({exc})",
                          field="document") from None
    result: list[Any] = orjson.loads(plain)
    return result


def _check_expansion(docs: list[Any]) -> None:
    """Count values as the JSON form would hold them (each alias expanded), iteratively."""
    stack: list[Any] = list(docs)
    count = 0
    while stack:
        value = stack.pop()
        count += 1
        if count > _MAX_VALUES:
            raise PolicyError(f"the documents expand to over {_MAX_VALUES} values through "
                              "YAML aliases", field="document")
        if isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)


def _field(obj: Any, key: str, where: str, kind: type, default: Any = None) -> Any:
    if not isinstance(obj, dict):
        raise PolicyError("must be a mapping", field=where)
    value = obj.get(key, default)
    if value is None:
        return default
    if not isinstance(value, kind):
        raise PolicyError(f"must be a {kind.__name__}", field=f"{where}.{key}")
    return value


def _parse(doc: Any, where: str) -> _GroupImport:
    if not isinstance(doc, dict):
        raise PolicyError("must be a mapping", field=where)
    if doc.get("apiVersion") != _API_VERSION:
        raise PolicyError(f"apiVersion must be {_API_VERSION}", field=f"{where}.apiVersion")
    if doc.get("kind") not in CRD_KINDS:
        raise PolicyError(f"kind must be one of {', '.join(sorted(CRD_KINDS))}",
                          field=f"{where}.kind")
    spec = _field(doc, "spec", where, dict, {})
    target = _field(spec, "target", f"{where}.spec", dict, {})
    selector = _field(target, "selector", f"{where}.spec.target", dict, {})
    group = trim_space(str(_field(selector, "name", f"{where}.spec.target.selector", str, "")))
    if not group:
        raise PolicyError("must name the group", field=f"{where}.spec.target.selector.name")
    if group.startswith("nv.ip.") or group.startswith("fed."):
        raise PolicyError(f"group {group} cannot hold process rules",
                          field=f"{where}.spec.target.selector.name")
    kind = (GroupKind.NODES if group == NODES_GROUP else
            GroupKind.LEARNED if group.startswith("nv.") else GroupKind.CUSTOM)
    criteria: tuple[Criterion, ...] = ()
    raw_criteria = _field(selector, "criteria", f"{where}.spec.target.selector", list, [])
    if kind is GroupKind.CUSTOM:
        validate_custom_group_name(group)
        parsed = []
        for i, c in enumerate(raw_criteria):
            cw = f"{where}.spec.target.selector.criteria[{i}]"
            try:
                parsed.append(Criterion(CriteriaKey(str(_field(c, "key", cw, str, ""))),
                                        CriteriaOp(str(_field(c, "op", cw, str, ""))),
                                        str(_field(c, "value", cw, str, ""))))
            except ValueError:
                raise PolicyError("unknown criteria key or op", field=cw) from None
        criteria = validate_criteria(tuple(parsed)) if parsed else ()
    profile = _field(spec, "process_profile", f"{where}.spec", dict, {})
    mode_text = _field(profile, "mode", f"{where}.spec.process_profile", str, "") or \
        _field(target, "policymode", f"{where}.spec.target", str, "")
    if mode_text in ("N/A", ""):
        mode_text = ""
    baseline_text = _field(profile, "baseline", f"{where}.spec.process_profile", str, "")
    if kind is GroupKind.CUSTOM and (mode_text or baseline_text):
        raise PolicyError("a custom group has no mode and no baseline",
                          field=f"{where}.spec.process_profile")
    try:
        mode = parse_mode(mode_text) if mode_text else None
        baseline = parse_baseline(baseline_text) if baseline_text else None
    except PolicyError as exc:
        raise PolicyError(exc.message, field=f"{where}.spec.process_profile.{exc.field}") from None
    if kind is GroupKind.NODES and baseline not in (None, Baseline.BASIC):
        raise PolicyError("the nodes group only accepts the basic baseline",
                          field=f"{where}.spec.process_profile.baseline")
    rules = []
    for i, entry in enumerate(_field(spec, "process", f"{where}.spec", list, [])):
        rw = f"{where}.spec.process[{i}]"
        try:
            name, path, action = validate_rule(
                str(_field(entry, "name", rw, str, "")), str(_field(entry, "path", rw, str, "")),
                str(_field(entry, "action", rw, str, "")), crd=True)
        except PolicyError as exc:
            raise PolicyError(exc.message, field=f"{rw}.{exc.field}" if exc.field else rw) \
                from None
        allow_update = bool(_field(entry, "allow_update", rw, bool, False))
        rules.append((name, path, action, allow_update))
    return _GroupImport(group, kind, criteria, mode, baseline, tuple(rules), where)


def apply_crd(policies: Mapping[str, GroupPolicy], text: str, settings: EngineSettings,
              ts: float, actor: str = "crd") -> EditResult:
    """Import CRD documents, all or nothing; each replaces the ground rules of its group."""
    return apply_crd_documents(policies, parse_crd_documents(text, settings.max_crd_bytes),
                               settings, ts, actor)


def apply_crd_documents(policies: Mapping[str, GroupPolicy], docs: list[dict[str, Any]],
                        settings: EngineSettings, ts: float, actor: str = "crd") -> EditResult:
    """`apply_crd` for documents already parsed by `parse_crd_documents`."""
    if not docs:
        raise PolicyError("no CRD documents found", field="document")
    imports = [_parse(doc, f"document[{i}]") for i, doc in enumerate(docs)]
    edit = _Edit(policies, ts, actor)
    now = int(ts)
    for imp in imports:
        policy = edit.get(imp.group)
        if policy is None:
            if imp.kind is GroupKind.CUSTOM and not imp.criteria:
                raise PolicyError(f"custom group {imp.group} does not exist; give its criteria",
                                  field=f"{imp.where}.spec.target.selector.criteria")
            policy = GroupPolicy(
                name=imp.group, kind=imp.kind,
                mode=None if imp.kind is GroupKind.CUSTOM else settings.new_group_mode,
                baseline=None if imp.kind is GroupKind.CUSTOM else
                Baseline.BASIC if imp.kind is GroupKind.NODES else settings.new_group_baseline,
                criteria=imp.criteria)
        elif policy.kind is not imp.kind:
            raise PolicyError(f"{imp.group} is a {policy.kind.value} group", status=409,
                              field=f"{imp.where}.spec.target.selector.name")
        ground = tuple(
            Rule(name=name, path=path, action=action, cfg_type=RuleSource.GROUND,
                 uuid=rule_uuid(imp.group, "ground", name, path), group=imp.group,
                 allow_update=allow_update, created_timestamp=now, last_modified_timestamp=now)
            for name, path, action, allow_update in imp.rules)
        new = replace(
            policy,
            rules=tuple(r for r in policy.rules if r.cfg_type is not RuleSource.GROUND) + ground,
            criteria=imp.criteria or policy.criteria,
            mode=imp.mode or policy.mode,
            baseline=imp.baseline or policy.baseline,
            crd_managed=policy.crd_managed or imp.mode is not None or imp.baseline is not None,
        )
        if new != policy or imp.group not in policies:
            detail = [f"{len(ground)} rules"]
            if imp.mode:
                detail.append(f"mode={imp.mode.value}")
            if imp.baseline:
                detail.append(f"baseline={imp.baseline.value}")
            if len(new.rules) > len(policy.rules):
                check_record_size(new, settings)
            edit.put(new, ChangeKind.CRD_IMPORTED, detail=", ".join(detail))
    return edit.result()
