"""Pure transformations of group policies: learning, REST edits, custom groups, new workloads.

Each function takes the current policies and returns an `EditResult` with the groups it changed
(version bumped once), the groups it deleted and one `ProfileChange` per change. Refusals raise
`PolicyError` with the HTTP status the API answers (400 invalid, 404 unknown, 409 conflict).
Edits are all-or-nothing: nothing is returned unless everything in the request was valid.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from schemas import (
    NODES_GROUP,
    Baseline,
    ChangeKind,
    GroupConfig,
    GroupDelete,
    GroupKind,
    GroupPolicy,
    LearnRequest,
    ProfileChange,
    ProfilePatch,
    Rule,
    RuleSource,
    ServiceConfig,
    Workload,
    encode,
)
from schemas import Action as RuleAction
from schemas.records import replace
from streams.engine.membership import learned_group_name
from streams.engine.probes import probe_rules, rule_uuid
from streams.engine.validation import (
    PolicyError,
    clean_path,
    parse_baseline,
    parse_fail_mode,
    parse_mode,
    trim_space,
    validate_criteria,
    validate_custom_group_name,
    validate_rule,
)
from streams.engine.view import EngineSettings

__all__ = [
    "EditResult",
    "apply_group_config",
    "apply_group_delete",
    "apply_learn",
    "apply_profile_patch",
    "apply_service_config",
    "check_record_size",
    "ensure_workload_groups",
    "learn_refusal",
    "merge",
    "nodes_group",
]


@dataclass(frozen=True, slots=True)
class EditResult:
    updated: dict[str, GroupPolicy] = field(default_factory=dict)
    deleted: tuple[str, ...] = ()
    changes: tuple[ProfileChange, ...] = ()

    @property
    def changed(self) -> bool:
        return bool(self.updated or self.deleted)


class _Edit:
    """Collects the changes of one request against a snapshot of the policies."""

    def __init__(self, policies: Mapping[str, GroupPolicy], ts: float, actor: str,
                 cause: str = "") -> None:
        self.base = policies
        self.ts = ts
        self.actor = actor
        self.cause = cause
        self.updated: dict[str, GroupPolicy] = {}
        self.changes: list[ProfileChange] = []
        self.deleted: list[str] = []

    def get(self, name: str) -> GroupPolicy | None:
        return self.updated.get(name, self.base.get(name))

    def require(self, name: str) -> GroupPolicy:
        policy = self.get(name)
        if policy is None:
            raise PolicyError(f"group {name!r} does not exist", status=404, field="group")
        return policy

    def put(self, policy: GroupPolicy, change: ChangeKind, rule: Rule | None = None,
            detail: str = "") -> None:
        self.put_many(policy, [(change, rule, detail)])

    def put_many(self, policy: GroupPolicy,
                 changes: Iterable[tuple[ChangeKind, Rule | None, str]]) -> None:
        """Store `policy`; one request bumps a group's version once, however many changes."""
        before = self.base.get(policy.name)
        version = (before.version if before else 0) + 1
        policy = replace(policy, version=version, updated_at=self.ts)
        self.updated[policy.name] = policy
        self.changes.extend(ProfileChange(group=policy.name, change=change, version=version,
                                          ts=self.ts, actor=self.actor, rule=rule, detail=detail,
                                          cause_event_id=self.cause)
                            for change, rule, detail in changes)

    def result(self) -> EditResult:
        return EditResult(dict(self.updated), tuple(self.deleted), tuple(self.changes))


def nodes_group(settings: EngineSettings, ts: float = 0.0) -> GroupPolicy:
    """The reserved `nodes` group, as it exists from the start."""
    return GroupPolicy(name=NODES_GROUP, kind=GroupKind.NODES, mode=settings.new_group_mode,
                       baseline=Baseline.BASIC, version=1, updated_at=ts)


def ensure_workload_groups(policies: Mapping[str, GroupPolicy], workload: Workload,
                           settings: EngineSettings, ts: float) -> EditResult:
    """Create the learned group of a new workload and add its pod's exec probe rules."""
    edit = _Edit(policies, ts, "workload")
    name = learned_group_name(workload)
    _create_learned_group(edit, name, settings, f"first workload {workload.id}")
    policy = edit.require(name)
    edit.actor = "probe"
    wanted = probe_rules(name, workload.probe_cmds, int(ts))
    if wanted:
        rules = list(policy.rules)
        index = {r.uuid: i for i, r in enumerate(rules)}
        added = []
        for rule in wanted:
            i = index.get(rule.uuid)
            if i is None:
                rules.append(rule)
                added.append(rule)
            elif (rules[i].path, rules[i].probe_cmds) != (rule.path, rule.probe_cmds):
                merged = _merge_probe(rules[i], rule, int(ts))
                if merged != rules[i]:
                    rules[i] = merged
                    added.append(merged)
        if added:
            policy = replace(policy, rules=tuple(rules))
            for rule in added:
                edit.put(policy, ChangeKind.PROBE_RULE, rule)
    return edit.result()


def _create_learned_group(edit: _Edit, name: str, settings: EngineSettings, why: str) -> None:
    """Create a learned group (or `nodes`) with the deployment defaults, if it is missing."""
    if edit.get(name) is not None:
        return
    if name == NODES_GROUP:
        policy = nodes_group(settings, edit.ts)
    else:
        policy = GroupPolicy(name=name, kind=GroupKind.LEARNED, mode=settings.new_group_mode,
                             baseline=settings.new_group_baseline)
    edit.put(policy, ChangeKind.GROUP_CREATED, detail=why)


def _merge_probe(old: Rule, new: Rule, ts: int) -> Rule:
    lines = list(old.probe_cmds)
    lines.extend(line for line in new.probe_cmds if line not in lines)
    path = old.path if (old.path == new.path and len(lines) == len(old.probe_cmds)) else "*"
    return replace(old, path=path, probe_cmds=tuple(lines), last_modified_timestamp=ts)


# Cap names, as in `GroupPolicy.learn_capped`, `Decision.capped` and the metric's label.
LEARNED_RULES = "learned_rules"
RULE_USERS = "rule_users"
HASH_PINS = "hash_pins"
RULE_STRINGS = "rule_strings"
POLICY_BYTES = "policy_bytes"

_LEARNED_FROM_MAX = 128  # a learned rule's `learned_from` (an event id the collector chose)
_DEFAULT_LIMITS = EngineSettings()


def _encoded_len(text: str) -> int:
    return len(encode(text))  # JSON escapes count: a control character takes six bytes


def check_record_size(policy: GroupPolicy, limits: EngineSettings = _DEFAULT_LIMITS) -> None:
    """Refuse an edit after which the group's policy record could not be published."""
    size = len(encode(policy))
    if size > limits.max_policy_bytes:
        raise PolicyError(f"the group's profile would be {size} bytes, over the "
                          f"{limits.max_policy_bytes}-byte limit of a policy record: "
                          "delete rules first", field="process_change_list")


def _learn_target(rules: Sequence[Rule], req: LearnRequest) -> int | None:
    for i, r in enumerate(rules):
        if (r.uuid == req.rule_uuid if req.rule_uuid else
                (r.key == (req.name, req.path) and r.cfg_type is not RuleSource.GROUND)):
            return i
    return None


def learn_refusal(policy: GroupPolicy, req: LearnRequest, limits: EngineSettings) -> str:
    """The cap this learn would pass, or "" when it fits (§10; caps in `EngineSettings`).

    Learning is what a workload grows its group's policy record with, and the record is
    republished whole with every version, so a group's learning is capped: learned rules, users
    per rule, hash pins, the length of each learned string, and the record's encoded size. A
    group a cap refused (`learn_capped`) learns nothing more: no rule, user or pin, in any mode,
    until an admin changes its mode or deletes rules; its execs are judged as before, so what it
    did not learn is a violation once it leaves Discover."""
    if policy.learn_capped:
        return policy.learn_capped
    growth = 0
    target = _learn_target(policy.rules, req) if (req.add_rule or req.rule_uuid) else None
    if target is None and req.add_rule:
        if _encoded_len(req.name) > limits.max_rule_name_bytes \
                or _encoded_len(req.path) > limits.max_rule_path_bytes \
                or _encoded_len(req.user) > limits.max_rule_name_bytes:
            return RULE_STRINGS
        learned = sum(1 for r in policy.rules if r.cfg_type is RuleSource.LEARNED)
        if learned >= limits.max_learned_rules:
            return LEARNED_RULES
        growth += len(encode(_learned(policy, req))) + 1
    elif target is not None:
        rule = policy.rules[target]
        if (rule.cfg_type is RuleSource.LEARNED and rule.users and req.user
                and req.user not in rule.users):
            if len(rule.users) >= limits.max_rule_users:
                return RULE_USERS
            if _encoded_len(req.user) > limits.max_rule_name_bytes:
                return RULE_STRINGS
            growth += _encoded_len(req.user) + 1
    if req.hash and policy.hash_enabled and req.path not in policy.hash_pins:
        if len(policy.hash_pins) >= limits.max_hash_pins:
            return HASH_PINS
        if _encoded_len(req.path) > limits.max_rule_path_bytes:
            return RULE_STRINGS
        growth += _encoded_len(req.path) + _encoded_len(req.hash) + 2
    if growth and len(encode(policy)) + growth > limits.max_policy_bytes:
        return POLICY_BYTES
    return ""


def _learned(policy: GroupPolicy, req: LearnRequest) -> Rule:
    ts = int(req.ts)
    return Rule(name=req.name, path=req.path, action=RuleAction.ALLOW,
                cfg_type=RuleSource.LEARNED,
                uuid=rule_uuid(policy.name, "learned", req.name, req.path),
                group=policy.name, users=(req.user,) if req.user else (),
                created_timestamp=ts, last_modified_timestamp=ts,
                learned_from=req.cause_event_id[:_LEARNED_FROM_MAX])


def apply_learn(policies: Mapping[str, GroupPolicy], req: LearnRequest,
                settings: EngineSettings | None = None) -> EditResult:
    """Apply what the engine learned; idempotent per `name:path`, user and hash pin (§10).

    With `settings` (the group's writer), a learned group that does not exist yet (its
    workload's announcement is still on its way) is created with the deployment defaults first,
    and the learning caps (`learn_refusal`) are enforced here too: workers that each learn
    within the caps may together pass them. Without (a worker applying its own learn at once),
    its `decide` already checked them against the same copy. A request the decider found over a
    cap (`capped`) learns nothing and marks the group capped."""
    edit = _Edit(policies, req.ts, "learning", req.cause_event_id)
    if settings is not None and (req.group.startswith("nv.") or req.group == NODES_GROUP):
        _create_learned_group(edit, req.group, settings, f"learning from {req.cause_event_id}")
    policy = edit.get(req.group)
    if policy is None or policy.kind is GroupKind.CUSTOM:
        return edit.result()  # the group went away meanwhile: nothing to learn into
    why = req.capped or policy.learn_capped or (
        learn_refusal(policy, req, settings) if settings is not None else "")
    if why:
        if not policy.learn_capped:
            edit.put(replace(policy, learn_capped=why), ChangeKind.LEARNING_CAPPED,
                     detail=f"{why}: learning stopped ({req.name}:{req.path}"[:200] + ")")
        return edit.result()
    ts = int(req.ts)
    rules = list(policy.rules)
    # Not checked against the group's mode now: the request was decided in Discover, and a
    # switch to Monitor or Protect that overtakes it on its way here (another producer, another
    # moment) must not drop a rule its verdict already reported as learned.
    if req.add_rule or req.rule_uuid:
        target = _learn_target(rules, req)
        if target is None and req.add_rule:
            rule = _learned(policy, req)
            rules.append(rule)
            policy = replace(policy, rules=tuple(rules))
            edit.put(policy, ChangeKind.RULE_LEARNED, rule)
        elif target is not None:
            rule = rules[target]
            if (rule.cfg_type is RuleSource.LEARNED and rule.users and req.user
                    and req.user not in rule.users):
                rule = replace(rule, users=(*rule.users, req.user),
                                           last_modified_timestamp=ts)
                rules[target] = rule
                policy = replace(policy, rules=tuple(rules))
                edit.put(policy, ChangeKind.USER_LEARNED, rule, detail=req.user)
    if req.hash and policy.hash_enabled and req.path not in policy.hash_pins:
        policy = replace(policy, hash_pins={**policy.hash_pins, req.path: req.hash})
        edit.put(policy, ChangeKind.HASH_LEARNED, detail=f"{req.path} sha256:{req.hash}")
    return edit.result()


def _normalise_key(name: str, path: str) -> tuple[str, str]:
    path = trim_space(path)
    return trim_space(name), clean_path(path) if path.startswith("/") else path


def apply_profile_patch(policies: Mapping[str, GroupPolicy], patch: ProfilePatch, ts: float,
                        limits: EngineSettings = _DEFAULT_LIMITS) -> EditResult:
    """`PATCH /v1/process_profile/{group}`: deletes first, then changes, then baseline/flags.

    An edit that grows the record past `limits.max_policy_bytes` is refused; one that shrinks
    it never is, so an admin can always make room."""
    edit = _Edit(policies, ts, patch.actor)
    policy = edit.require(patch.group)
    custom = policy.kind is GroupKind.CUSTOM
    if custom and (patch.baseline is not None or patch.alert_disabled is not None
                   or patch.hash_enabled is not None or patch.fail_mode is not None):
        raise PolicyError("a custom group has no baseline and no flags", field="baseline")
    now = int(ts)
    version = policy.version + 1
    rules = list(policy.rules)
    deleted: list[Rule] = []
    for i, key in enumerate(patch.process_delete_list):
        name, path = _normalise_key(key.name, key.path)
        hits = [r for r in rules if r.key == (name, path)]
        mine = [r for r in hits if r.cfg_type is not RuleSource.GROUND]
        if not mine:
            why = "is managed by a CRD" if hits else "is not in the profile"
            raise PolicyError(f"rule {name}:{path} {why}",
                              field=f"process_delete_list[{i}]")
        rules.remove(mine[0])
        deleted.append(mine[0])
    changed: list[tuple[ChangeKind, Rule]] = []
    for i, change in enumerate(patch.process_change_list):
        try:
            name, path, action = validate_rule(change.name, change.path, change.action)
        except PolicyError as exc:
            raise PolicyError(exc.message, field=f"process_change_list[{i}].{exc.field}") from None
        rule = Rule(name=name, path=path, action=action, cfg_type=RuleSource.USER_CREATED,
                    uuid=rule_uuid(policy.name, "user", name, path, str(version)),
                    group=policy.name, allow_update=change.allow_update,
                    created_timestamp=now, last_modified_timestamp=now)
        existing = next((j for j, r in enumerate(rules)
                         if r.key == rule.key and r.cfg_type is not RuleSource.GROUND), None)
        if existing is None:
            rules.append(rule)
            changed.append((ChangeKind.RULE_ADDED, rule))
        else:
            rule = replace(rule, created_timestamp=rules[existing].created_timestamp)
            rules[existing] = rule
            changed.append((ChangeKind.RULE_CHANGED, rule))
    new = replace(policy, rules=tuple(rules))
    details: list[tuple[ChangeKind, str]] = []
    if patch.baseline is not None:
        baseline = parse_baseline(patch.baseline)
        if policy.kind is GroupKind.NODES and baseline is not Baseline.BASIC:
            raise PolicyError("the nodes group only accepts the basic baseline", field="baseline")
        if baseline is not policy.baseline:
            if policy.crd_managed:
                raise PolicyError("the baseline of this group is managed by a CRD",
                                  field="baseline")
            new = replace(new, baseline=baseline)
            details.append((ChangeKind.BASELINE_CHANGED, baseline.value))
    flags = []
    if patch.alert_disabled is not None and patch.alert_disabled != policy.alert_disabled:
        new = replace(new, alert_disabled=patch.alert_disabled)
        flags.append(f"alert_disabled={str(patch.alert_disabled).lower()}")
    if patch.hash_enabled is not None and patch.hash_enabled != policy.hash_enabled:
        # Turning hash pinning off forgets every pin; turning it on starts afresh.
        new = replace(new, hash_enabled=patch.hash_enabled, hash_pins={})
        flags.append(f"hash_enabled={str(patch.hash_enabled).lower()}")
    if patch.fail_mode is not None:
        fail_mode = parse_fail_mode(patch.fail_mode)
        if fail_mode is not policy.fail_mode:
            new = replace(new, fail_mode=fail_mode)
            flags.append(f"fail_mode={fail_mode.value if fail_mode else 'default'}")
    if flags:
        details.append((ChangeKind.FLAGS_CHANGED, ", ".join(flags)))
    if new.learn_capped and (deleted or patch.hash_enabled is not None):
        new = replace(new, learn_capped="")  # room made, or pins started afresh: learn again
    if new == policy:
        return edit.result()
    if len(encode(new)) > len(encode(policy)):
        check_record_size(new, limits)
    edit.put_many(new, [(ChangeKind.RULE_DELETED, r, "") for r in deleted]
                  + [(k, r, "") for k, r in changed] + [(k, None, d) for k, d in details])
    return edit.result()


def _learned_name(service: str) -> str:
    return NODES_GROUP if service == NODES_GROUP else "nv." + service


def apply_service_config(policies: Mapping[str, GroupPolicy], cfg: ServiceConfig,
                         ts: float) -> EditResult:
    """`PATCH /v1/service/config`: mode and baseline of learned groups (or `nodes`)."""
    edit = _Edit(policies, ts, cfg.actor)
    mode = parse_mode(cfg.profile_mode) if cfg.profile_mode is not None else None
    baseline = parse_baseline(cfg.baseline_profile) if cfg.baseline_profile is not None else None
    if not cfg.services:
        raise PolicyError("name at least one service", field="services")
    for i, service in enumerate(cfg.services):
        name = _learned_name(trim_space(service))
        policy = edit.get(name)
        if policy is None or policy.kind is GroupKind.CUSTOM:
            raise PolicyError(f"service {service!r} does not exist", status=404,
                              field=f"services[{i}]")
        if policy.crd_managed and (mode is not None or baseline is not None):
            raise PolicyError(f"group {name} is managed by a CRD", field=f"services[{i}]")
        new = policy
        if mode is not None and mode is not policy.mode:
            # A new mode starts learning afresh (a capped group learns again in Discover).
            new = replace(new, mode=mode, learn_capped="")
        if baseline is not None and policy.kind is not GroupKind.NODES \
                and baseline is not policy.baseline:
            new = replace(new, baseline=baseline)
        if new != policy:
            kind = ChangeKind.MODE_CHANGED if new.mode is not policy.mode \
                else ChangeKind.BASELINE_CHANGED
            detail = ", ".join(f"{k}={getattr(new, k)}" for k in ("mode", "baseline")
                               if getattr(new, k) is not getattr(policy, k))
            edit.put(new, kind, detail=detail)
    return edit.result()


def apply_group_config(policies: Mapping[str, GroupPolicy], cfg: GroupConfig,
                       ts: float) -> EditResult:
    """Create a custom group, or change its criteria."""
    edit = _Edit(policies, ts, cfg.actor)
    name = validate_custom_group_name(trim_space(cfg.name))
    criteria = validate_criteria(cfg.criteria)
    policy = edit.get(name)
    if policy is None:
        edit.put(GroupPolicy(name=name, kind=GroupKind.CUSTOM, criteria=criteria),
                 ChangeKind.GROUP_CREATED)
    elif policy.kind is not GroupKind.CUSTOM:
        raise PolicyError(f"{name} is not a custom group", status=409, field="name")
    elif policy.criteria != criteria:
        edit.put(replace(policy, criteria=criteria), ChangeKind.CRITERIA_CHANGED)
    return edit.result()


def apply_group_delete(policies: Mapping[str, GroupPolicy], req: GroupDelete,
                       ts: float) -> EditResult:
    edit = _Edit(policies, ts, req.actor)
    policy = edit.require(req.name)
    if policy.kind is not GroupKind.CUSTOM:
        raise PolicyError(f"{req.name} is not a custom group; only custom groups can be deleted",
                          field="name")
    edit.deleted.append(req.name)
    edit.changes.append(ProfileChange(group=req.name, change=ChangeKind.GROUP_DELETED,
                                      version=policy.version + 1, ts=ts, actor=req.actor))
    return edit.result()


def merge(policies: Mapping[str, GroupPolicy],
          results: Iterable[EditResult]) -> dict[str, GroupPolicy]:
    """The policies after some edit results (a convenience for callers and tests)."""
    out = dict(policies)
    for result in results:
        out.update(result.updated)
        for name in result.deleted:
            out.pop(name, None)
    return out

