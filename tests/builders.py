"""Small builders for engine tests: workloads, rules, groups and events, driven through the real
`DecisionSession` (the same path `procwarden decide` and the stream app use)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from schemas import (
    Action,
    Baseline,
    CriteriaKey,
    CriteriaOp,
    Criterion,
    Decision,
    Envelope,
    ExecEvent,
    GroupKind,
    GroupPolicy,
    Mode,
    Rule,
    RuleSource,
    Workload,
    WorkloadKind,
)
from streams.engine import EngineSettings
from streams.worker.session import DecisionSession, EditOutcome

NODE = "node-1"
WEB = "nv.web.demo"
_ids = itertools.count(1)


def container(id: str = "c1", name: str = "web", namespace: str = "demo", service: str = "web",
              **kw: Any) -> Workload:
    return Workload(id=id, kind=WorkloadKind.CONTAINER, node=kw.pop("node", NODE), name=name,
                    namespace=namespace, service=service, **kw)


def host(id: str = "host-1", node: str = NODE) -> Workload:
    return Workload(id=id, kind=WorkloadKind.HOST, node=node, name=node)


def rule(name: str, path: str, action: str = "allow", *, group: str = WEB,
         source: RuleSource = RuleSource.USER_CREATED, uuid: str = "", **kw: Any) -> Rule:
    return Rule(name=name, path=path, action=Action(action), cfg_type=source,
                uuid=uuid or f"uuid-{group}-{name}-{path}-{action}-{source.value}", group=group,
                **kw)


def learned_rule(name: str, path: str, users: tuple[str, ...] = ("root",), **kw: Any) -> Rule:
    return rule(name, path, source=RuleSource.LEARNED, users=users, **kw)


def group(name: str = WEB, mode: Mode = Mode.PROTECT, baseline: Baseline = Baseline.BASIC,
          rules: tuple[Rule, ...] = (), **kw: Any) -> GroupPolicy:
    kind = GroupKind.NODES if name == "nodes" else GroupKind.LEARNED
    return GroupPolicy(name=name, kind=kind, mode=mode, baseline=baseline, rules=rules,
                       version=1, **kw)


def custom(name: str, rules: tuple[Rule, ...], namespace: str = "demo") -> GroupPolicy:
    return GroupPolicy(name=name, kind=GroupKind.CUSTOM,
                       criteria=(Criterion(CriteriaKey.NAMESPACE, CriteriaOp.EQ, namespace),),
                       rules=rules, version=1)


def envelope(payload: Any, ts: float = 1_700_000_000.0) -> Envelope:
    return Envelope.wrap(payload, event_id=f"ev-{next(_ids)}", node=NODE, ts=ts,
                         cluster="test")


@dataclass
class World:
    """A session with some groups and workloads, deciding events one by one."""

    groups: list[GroupPolicy] = field(default_factory=list)
    workloads: list[Workload] = field(default_factory=lambda: [container()])
    settings: EngineSettings = field(default_factory=EngineSettings)

    def __post_init__(self) -> None:
        self.session = DecisionSession(settings=self.settings)
        self.session.load_policies(self.groups)
        for wl in self.workloads:
            self.session.handle(envelope(wl))

    def send(self, payload: Any) -> Decision | EditOutcome:
        return self.session.handle(envelope(payload))

    def decide(self, payload: Any) -> Decision:
        answer = self.send(payload)
        assert isinstance(answer, Decision)
        return answer

    def exec(self, path: str, name: str | None = None, *, workload: str = "c1",
             pid: int | None = None, **kw: Any) -> Decision:
        name = path.rsplit("/", 1)[-1] if name is None else name
        kw.setdefault("argv", (name,))
        kw.setdefault("user", "root")
        return self.decide(ExecEvent(workload_id=workload, pid=pid or next(_ids), path=path,
                                     name=name, **kw))

    def policy(self, name: str = WEB) -> GroupPolicy:
        return self.session.policies[name]
