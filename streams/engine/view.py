"""What one workload's decisions need to know, assembled from the group policies (§5, §7)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from schemas import (
    Baseline,
    FailMode,
    GroupKind,
    GroupPolicy,
    HoldSettings,
    Mode,
    Workload,
    WorkloadKind,
)
from streams.engine.compiled import CompiledRules, compile_rules
from streams.engine.membership import custom_groups_of, learned_group_name
from streams.engine.ordering import effective_rules
from streams.engine.probes import probe_commands

__all__ = ["EngineSettings", "MissingGroup", "PolicyView", "build_view", "hold_settings"]


@dataclass(frozen=True, slots=True)
class EngineSettings:
    """Deployment settings that change decisions."""

    full_cmdline: bool = False  # §11: keep secret-looking arguments unmasked in incidents
    new_group_mode: Mode = Mode.DISCOVER
    new_group_baseline: Baseline = Baseline.ZERO_DRIFT
    # Caps on what a workload can grow in the state and policies the worker republishes whole:
    # with them, a workload's process-state record and a group's policy record stay under the
    # producer's 1 MB limit (the worst cases are computed in tests/unit/test_engine_bounds.py).
    # What each overflow changes is said in streams/engine/state.py and policies.py.
    max_drift_paths: int = 1000  # drift files remembered per workload
    max_drift_path_bytes: int = 256  # a longer path (JSON-encoded) is kept by its digest
    max_tracked_pids: int = 2048  # per workload: risky pids, probe shells, admitted process
    #                               groups, reverse-shell sightings (each)
    max_learned_rules: int = 1000  # learned rules per group
    max_rule_name_bytes: int = 64  # a learned rule's process name, and each of its users
    max_rule_path_bytes: int = 256  # a learned rule's path (and a hash pin's)
    max_rule_users: int = 4  # users a learned rule records
    max_hash_pins: int = 1000  # hash pins per group
    max_policy_bytes: int = 900_000  # a group's policy record (JSON) after any learn or edit
    max_crd_bytes: int = 1024 * 1024  # the text of one CRD import (413 over it)

    def __post_init__(self) -> None:
        for name in ("max_drift_paths", "max_tracked_pids", "max_learned_rules",
                     "max_rule_users", "max_hash_pins"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        # A path over the cap is kept by its digest, which must itself fit.
        if self.max_drift_path_bytes < 80:
            raise ValueError("max_drift_path_bytes must be at least 80")
        if self.max_rule_name_bytes < 16 or self.max_rule_path_bytes < 16:
            raise ValueError("max_rule_name_bytes and max_rule_path_bytes must be at least 16")
        if self.max_policy_bytes < 10_000:
            raise ValueError("max_policy_bytes must be at least 10000")


class MissingGroup(LookupError):
    """The workload's learned group does not exist (yet)."""


@dataclass(frozen=True, slots=True)
class PolicyView:
    workload: Workload
    learned: GroupPolicy  # the learned group, or `nodes` for a host
    custom_groups: tuple[str, ...]
    rules: CompiledRules
    mode: Mode  # M
    effective_mode: Mode  # M': Monitor for a system container in Protect (D14)
    baseline: Baseline  # B (hosts: basic)
    is_host: bool
    probe_argvs: frozenset[tuple[str, ...]]
    settings: EngineSettings
    zero_drift: bool  # a container whose baseline is zero-drift
    pre_exec: bool  # §14: a non-system container in Protect has its execs held before they run
    pre_write: bool  # §6: ...and when zero-drift, its drift writes are denied before they happen
    fail_mode: FailMode | None  # the learned group's answer to a held exec without a verdict
    stamp: str  # changes whenever a policy this view reads changes (the collector's cache key)

    @property
    def group(self) -> str:
        return self.learned.name


def build_view(policies: Mapping[str, GroupPolicy], workload: Workload,
               settings: EngineSettings = EngineSettings()) -> PolicyView:
    name = learned_group_name(workload)
    learned = policies.get(name)
    if learned is None:
        raise MissingGroup(name)
    is_host = workload.kind is WorkloadKind.HOST
    customs = () if is_host else custom_groups_of(workload, policies.values())
    custom_rules = [r for g in customs for r in policies[g].rules]
    ordered = effective_rules(custom_rules, learned.rules)
    assert learned.mode is not None and learned.baseline is not None
    mode = learned.mode
    effective_mode = Mode.MONITOR if (workload.system and mode is Mode.PROTECT) else mode
    baseline = Baseline.BASIC if (is_host or learned.kind is GroupKind.NODES) else learned.baseline
    return PolicyView(
        workload=workload,
        learned=learned,
        custom_groups=customs,
        rules=compile_rules(ordered, len(custom_rules)),
        mode=mode,
        effective_mode=effective_mode,
        baseline=baseline,
        is_host=is_host,
        probe_argvs=probe_commands(workload.probe_cmds) if not is_host else frozenset(),
        settings=settings,
        zero_drift=not is_host and baseline is Baseline.ZERO_DRIFT,
        pre_exec=not is_host and effective_mode is Mode.PROTECT,
        pre_write=(not is_host and effective_mode is Mode.PROTECT
                   and baseline is Baseline.ZERO_DRIFT),
        fail_mode=learned.fail_mode,
        stamp=_stamp(learned, [policies[g] for g in customs]),
    )


def hold_settings(view: PolicyView) -> HoldSettings:
    """What the workload's collector must know after a policy change (§14): whether to hold its
    execs and writes before they happen, what a held exec gets when no verdict comes, and the
    stamp that invalidates its cached answers."""
    return HoldSettings(
        workload_id=view.workload.id, node=view.workload.node, group=view.learned.name,
        policy_version=view.learned.version, pre_exec=view.pre_exec, pre_write=view.pre_write,
        policy_stamp=view.stamp, fail_mode=view.fail_mode)


def _stamp(learned: GroupPolicy, customs: list[GroupPolicy]) -> str:
    # Versions only grow, and membership is part of the text, so any change to the policies a
    # view reads (or to which custom groups it reads) gives a new stamp.
    text = "\n".join(f"{p.name}@{p.version}" for p in (learned, *customs))
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()
