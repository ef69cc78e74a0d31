"""A decision session: policies, workloads and process state, fed one message at a time.

It routes each message to the engine (events to `decide`, edits to the policy functions) and
keeps what the next decision needs. It does no I/O: the offline replay drives it from files, and
dry-runs drive it with one event. Learning is applied at once here, as the single writer would.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from schemas import (
    WORKLOAD_EVENT_TYPES,
    CrdImport,
    Decision,
    Envelope,
    GroupConfig,
    GroupDelete,
    GroupPolicy,
    LearnRequest,
    ProcessSnapshot,
    ProfileChange,
    ProfilePatch,
    ServiceConfig,
    Verdict,
    Workload,
    WorkloadState,
)
from streams.engine import (
    DECIDED_KINDS,
    EditResult,
    EngineSettings,
    PolicyError,
    PolicyView,
    ProcessState,
    apply_crd,
    apply_group_config,
    apply_group_delete,
    apply_learn,
    apply_profile_patch,
    apply_service_config,
    build_view,
    decide,
    ensure_workload_groups,
    nodes_group,
)

__all__ = ["DecisionSession", "EditOutcome", "UnknownWorkload", "edit_result"]


class UnknownWorkload(LookupError):
    """An event names a workload that was never announced."""


@dataclass(frozen=True, slots=True)
class EditOutcome:
    """The answer to a policy edit or workload announcement."""

    event_id: str
    verdict: Verdict  # accept or reject
    reason: str
    groups: tuple[str, ...] = ()
    changes: tuple[ProfileChange, ...] = ()
    status: int = 200


# A learn the topic's copies still lack after this long (by the copies' own time) is given up,
# and at most this many are kept per group.
_UNPUBLISHED_FOR_S = 60.0
_UNPUBLISHED_MAX = 256  # each copy re-applies what is still pending: bounded work per copy


@dataclass
class DecisionSession:
    settings: EngineSettings = field(default_factory=EngineSettings)
    policies: dict[str, GroupPolicy] = field(default_factory=dict)
    workloads: dict[str, Workload] = field(default_factory=dict)
    states: dict[str, ProcessState] = field(default_factory=dict)
    # Workloads whose process state changed since the caller last took them (to persist).
    changed_states: set[str] = field(default_factory=set)
    _views: dict[str, tuple[int, PolicyView]] = field(default_factory=dict)
    _epoch: int = 0
    # What this session learned and applied at once, and the policy topic does not show yet
    # (the group's writer adds it a moment later), by group: kept on top of every copy the topic
    # brings until one shows it, so a learned rule never vanishes from view in between.
    _unpublished: dict[str, list[LearnRequest]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.policies.setdefault("nodes", nodes_group(self.settings))

    # -- state ----------------------------------------------------------------------------------

    def load_policies(self, policies: Iterable[GroupPolicy]) -> None:
        for policy in policies:
            self.policies[policy.name] = policy
        self._epoch += 1

    def load_published(self, policy: GroupPolicy) -> None:
        """A group's copy from the policy topic, with what this session learned and the copy
        does not show yet applied on top (a learn the writer has not included a minute after
        the copy's last change is given up)."""
        self.policies[policy.name] = policy
        pending = self._unpublished.pop(policy.name, [])
        still = []
        for req in pending:
            if policy.updated_at > req.ts + _UNPUBLISHED_FOR_S:
                continue
            result = apply_learn(self.policies, req)
            if result.changed:  # not in the copy yet
                self.apply(result)
                still.append(req)
        if still:
            self._unpublished[policy.name] = still
        self._epoch += 1

    def forget_policy(self, name: str) -> None:
        self._unpublished.pop(name, None)
        if self.policies.pop(name, None) is not None:
            self._epoch += 1

    def forget_workload(self, workload_id: str) -> None:
        self.workloads.pop(workload_id, None)
        self.states.pop(workload_id, None)
        self._views.pop(workload_id, None)
        self.changed_states.discard(workload_id)

    def restore_state(self, snapshot: ProcessSnapshot) -> bool:
        """Take a persisted process state unless this session's is as new (its own echo)."""
        current = self.states.get(snapshot.workload_id)
        if current is not None and current.seq >= snapshot.seq:
            return False
        self.states[snapshot.workload_id] = ProcessState.restore(snapshot)
        return True

    def apply(self, result: EditResult) -> None:
        if result.changed:
            self.policies.update(result.updated)
            for name in result.deleted:
                self.policies.pop(name, None)
            self._epoch += 1

    def view(self, workload_id: str) -> PolicyView:
        cached = self._views.get(workload_id)
        if cached is not None and cached[0] == self._epoch:
            return cached[1]
        workload = self.workloads.get(workload_id)
        if workload is None:
            raise UnknownWorkload(workload_id)
        view = build_view(self.policies, workload, self.settings)
        self._views[workload_id] = (self._epoch, view)
        return view

    # -- messages -------------------------------------------------------------------------------

    def handle(self, env: Envelope) -> Decision | EditOutcome:
        """Decide an event or apply an edit. Raises UnknownWorkload for an unannounced workload;
        refused edits come back as `reject` outcomes."""
        if env.kind in DECIDED_KINDS:
            return self.decide(env)
        try:
            return self._edit(env)
        except PolicyError as exc:
            return EditOutcome(env.event_id, Verdict.REJECT, str(exc), status=exc.status)

    def decide(self, env: Envelope) -> Decision:
        payload = env.payload
        if not isinstance(payload, WORKLOAD_EVENT_TYPES):
            raise TypeError(f"{env.kind.value} is not an event of a workload")
        workload_id = payload.workload_id
        view = self.view(workload_id)
        state = self.states.setdefault(workload_id, ProcessState())
        decision, effect = decide(view, state, env)
        if state.apply(effect):
            self.changed_states.add(workload_id)
        if decision.learn is not None:
            result = apply_learn(self.policies, decision.learn)
            self.apply(result)
            if result.changed:
                pending = self._unpublished.setdefault(decision.learn.group, [])
                if len(pending) < _UNPUBLISHED_MAX:
                    pending.append(decision.learn)
        return decision

    def _edit(self, env: Envelope) -> EditOutcome:
        if isinstance(env.payload, Workload):
            return self._workload(env, env.payload)
        result = edit_result(self.policies, env, self.settings)
        self.apply(result)
        return EditOutcome(env.event_id, Verdict.ACCEPT,
                           "changed" if result.changed else "unchanged",
                           tuple(sorted({*result.updated, *result.deleted})), result.changes)

    def _workload(self, env: Envelope, workload: Workload) -> EditOutcome:
        if workload.state is WorkloadState.STOPPED:
            self.forget_workload(workload.id)
            return EditOutcome(env.event_id, Verdict.ACCEPT, "workload stopped")
        self.workloads[workload.id] = workload
        self._views.pop(workload.id, None)
        result = ensure_workload_groups(self.policies, workload, self.settings, env.ts)
        self.apply(result)
        return EditOutcome(env.event_id, Verdict.ACCEPT, "workload running",
                           tuple(sorted(result.updated)), result.changes)


def edit_result(policies: Mapping[str, GroupPolicy], env: Envelope,
                settings: EngineSettings) -> EditResult:
    """What an edit message does to the policies (raises PolicyError when it is refused)."""
    p = env.payload
    ts = env.ts
    if isinstance(p, Workload):
        return ensure_workload_groups(policies, p, settings, ts)
    if isinstance(p, ProfilePatch):
        return apply_profile_patch(policies, p, ts, settings)
    if isinstance(p, ServiceConfig):
        return apply_service_config(policies, p, ts)
    if isinstance(p, GroupConfig):
        return apply_group_config(policies, p, ts)
    if isinstance(p, GroupDelete):
        return apply_group_delete(policies, p, ts)
    if isinstance(p, CrdImport):
        return apply_crd(policies, p.text, settings, ts, p.actor)
    if isinstance(p, LearnRequest):
        return apply_learn(policies, p, settings)
    if isinstance(p, GroupPolicy):
        return EditResult(updated={p.name: p})
    raise PolicyError(f"{env.kind.value} messages are outputs, not edits", field="kind")
