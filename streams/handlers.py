"""What the stream worker does with each message, behind one small publishing interface.

The event decider and the Faust agents only hand raw messages here. Nothing raises out of a
handler for a bad message: one that cannot be decoded, names no announced workload, or is
refused goes to the DLQ with its topic, partition, offset and the error, and the worker carries
on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

from prometheus_client import Counter as Counter_
from prometheus_client import Histogram

from schemas import (
    Decision,
    DecodeError,
    DlqEntry,
    Envelope,
    GroupKind,
    GroupPolicy,
    Incident,
    LearnRequest,
    ProcessSnapshot,
    ProfileChange,
    Workload,
    WorkloadState,
    decode_envelope,
    encode,
)
from schemas.connections import KafkaConnection
from schemas.records import fast_init
from schemas.topics import (
    DLQ,
    POLICY,
    POLICY_UPDATES,
    PROCESS_STATE,
    PROFILE_CHANGES,
    SECURITY_EVENTS,
    VERDICTS,
)
from streams.engine import (
    DECIDED_KINDS,
    EditResult,
    MissingGroup,
    PolicyError,
    learned_group_name,
    policy_state,
)
from streams.session import DecisionSession, UnknownWorkload, edit_result

__all__ = ["Handlers", "Publisher", "RawMessage"]

log = logging.getLogger("procwarden.streams")

DECIDED = Counter_("procwarden_streams_decided_total", "Events decided", ["verdict", "mode"])
DEAD_LETTERS = Counter_("procwarden_streams_dlq_total", "Messages sent to the DLQ", ["topic"])
EVENT_AGE = Histogram("procwarden_streams_event_age_seconds",
                      "Age of the oldest event of each decided batch (its ts) when the batch's "
                      "verdicts are handed to the producer: the lag",
                      buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1, 5, 30, 120))
POLICY_WRITES = Counter_("procwarden_streams_policy_versions_total", "Policy versions written")


class Publisher(Protocol):
    async def send(self, topic: str, key: bytes, value: bytes | None) -> None: ...


@fast_init  # one per consumed message
@dataclass(frozen=True, slots=True)
class RawMessage:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass
class Handlers:
    session: DecisionSession
    publisher: Publisher  # the Faust agents' outputs: Faust flushes it before it commits
    # The event decider's outputs: its own producer, which it flushes before it commits.
    decisions: Publisher
    kafka: KafkaConnection
    node: str = "streams"
    unknown_workload_wait_s: float = 3.0
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    counts: Counter[str] = field(default_factory=Counter)
    # The policies as published on the policy topic (what the writer edits). The decision
    # session's copy may be ahead: it applies what it learns at once, before the writer does.
    published: dict[str, GroupPolicy] = field(default_factory=dict)
    # Groups this worker deleted, with their last version: older echoes are ignored.
    _deleted: dict[str, int] = field(default_factory=dict)
    # What this worker last told each workload's collector: (pre_exec, policy stamp).
    _told: dict[str, tuple[bool, str]] = field(default_factory=dict)
    # (verdict, mode) -> its metric child and its key in `counts`, built once
    _decided: dict[tuple[str, str], tuple[Any, str]] = field(default_factory=dict)
    # The batch in hand: events decided per (verdict, mode), and the oldest event's ts. Metrics
    # take them once per batch (end_batch): a Prometheus update per event cost a tenth of the
    # worker's time.
    _batch: Counter[tuple[str, str]] = field(default_factory=Counter)
    _oldest: float = float("inf")

    # -- mirror callbacks -----------------------------------------------------------------------

    def on_policy(self, name: str, policy: GroupPolicy | None) -> None:
        if policy is None:
            self.published.pop(name, None)
            self.session.forget_policy(name)
            return
        if policy.version <= self._deleted.get(name, -1):
            return
        known = self.published.get(name)
        if known is None or policy.version > known.version:
            self.published[name] = policy
        current = self.session.policies.get(name)
        if current is None or policy.version >= current.version:
            self.session.load_published(policy)

    def on_workload(self, env: Envelope | None, workload_id: str) -> None:
        if env is None or (isinstance(env.payload, Workload)
                           and env.payload.state is WorkloadState.STOPPED):
            self._told.pop(workload_id, None)
        if env is None:
            self.session.forget_workload(workload_id)
        else:
            self.session.handle(env)

    # -- agents ---------------------------------------------------------------------------------

    async def on_event(self, msg: RawMessage) -> None:
        """An exec/file/... event: decide it and publish the verdict and what follows."""
        try:
            env = decode_envelope(msg.value or b"")
            if env.kind not in DECIDED_KINDS:
                raise DecodeError("kind", f"{env.kind.value} is not an event of a workload")
        except DecodeError as exc:
            await self.dead_letter(msg, f"invalid message: {exc}", self.decisions)
            return
        if not self.ready.is_set():
            await self.ready.wait()
        try:
            try:
                decision = self.session.decide(env)
            except UnknownWorkload:
                decision = await self._decide_when_announced(env)
        except UnknownWorkload as exc:
            await self.dead_letter(msg, f"unknown workload {exc.args[0]!r}", self.decisions)
            return
        except Exception as exc:
            log.exception("deciding %s failed", env.event_id)
            await self.dead_letter(msg, f"decision failed: {exc!r}", self.decisions)
            return
        await self._publish_decision(decision)
        self._batch[(decision.verdict.value, decision.mode.value if decision.mode else "-")] += 1
        self._oldest = min(self._oldest, env.ts)

    async def _decide_when_announced(self, env: Envelope) -> Decision:
        # The announcement travels on another topic and may be a moment behind.
        deadline = time.monotonic() + self.unknown_workload_wait_s
        while True:
            await asyncio.sleep(0.05)
            try:
                return self.session.decide(env)
            except UnknownWorkload:
                if time.monotonic() >= deadline:
                    raise

    async def _publish_decision(self, decision: Decision) -> None:
        out = self.decisions
        await self.send(VERDICTS.name, decision.node, decision, decision.event_id, out)
        incident = decision.incident
        if incident is not None and not decision.suppressed:
            await self.send(SECURITY_EVENTS.name, incident.group, incident, incident.id, out)
        if decision.learn is not None:
            await self.send(POLICY_UPDATES.name, decision.learn.group, decision.learn,
                            f"{decision.event_id}:learn", out)

    async def end_batch(self) -> None:
        """After a batch of events: count them in the metrics, publish what the batch changed
        in the workloads' process state."""
        for counted, n in self._batch.items():
            known = self._decided.get(counted)
            if known is None:
                known = self._decided[counted] = (DECIDED.labels(*counted),
                                                  f"decided:{counted[0]}:{counted[1]}")
            known[0].inc(n)
            self.counts[known[1]] += n
        self._batch.clear()
        if self._oldest != float("inf"):
            EVENT_AGE.observe(max(0.0, time.time() - self._oldest))
            self._oldest = float("inf")
        await self.persist_states()

    async def persist_states(self) -> None:
        """Publish the process state of each workload decisions changed since the last call
        (once per batch, however many of its events changed it), before the batch's offsets
        are committed, so a worker starting after this one decides as it would have."""
        changed = self.session.changed_states
        while changed:
            wid = changed.pop()
            state = self.session.states.get(wid)
            if state is not None:
                snap = state.snapshot(wid)
                env = Envelope.wrap(snap, event_id=f"state:{wid}:{snap.seq}", node=self.node,
                                    ts=time.time())
                await self.send_envelope(PROCESS_STATE.name, wid, env, self.decisions)

    def on_process_state(self, workload_id: str, snapshot: ProcessSnapshot | None) -> None:
        """The mirror read a persisted process state (or its tombstone)."""
        if snapshot is None:
            self.session.states.pop(workload_id, None)
        elif self.session.restore_state(snapshot):
            self.counts["states_restored"] += 1

    async def on_workload_announcement(self, msg: RawMessage) -> None:
        """A workload started: make sure its learned group exists with its probe rules."""
        if msg.value is None:
            return
        try:
            env = decode_envelope(msg.value)
            if not isinstance(env.payload, Workload):
                raise DecodeError("kind", f"{env.kind.value} is not a workload announcement")
        except DecodeError as exc:
            await self.dead_letter(msg, f"invalid message: {exc}")
            return
        workload = env.payload
        if workload.state is WorkloadState.RUNNING:
            await self.send_envelope(POLICY_UPDATES.name, learned_group_name(workload), env)
        else:  # gone: so is its process state
            await self.publisher.send(self.kafka.topic(PROCESS_STATE.name),
                                      workload.id.encode(), None)

    async def on_update(self, msg: RawMessage) -> None:
        """The single writer of a group: apply a learned rule or an edit, publish the policy."""
        try:
            env = decode_envelope(msg.value or b"")
        except DecodeError as exc:
            await self.dead_letter(msg, f"invalid message: {exc}")
            return
        await self.ready.wait()
        try:
            result = edit_result(self.published, env, self.session.settings)
        except PolicyError as exc:
            await self.dead_letter(msg, f"edit rejected ({exc.status}): {exc}")
            return
        await self.publish_result(result, env)

    async def publish_result(self, result: EditResult, cause: Envelope) -> None:
        for name, policy in sorted(result.updated.items()):
            self.published[name] = policy
            await self.send(POLICY.name, name, policy, f"{cause.event_id}:{name}")
        for name in result.deleted:
            gone = self.published.pop(name, None)
            self._deleted[name] = gone.version if gone else 0
            await self.publisher.send(self.kafka.topic(POLICY.name), name.encode(), None)
        for i, change in enumerate(result.changes):
            await self.send(PROFILE_CHANGES.name, change.group, change,
                            f"{cause.event_id}:change:{i}")
        self.session.apply(result)
        self.counts["policy_versions_written"] += len(result.updated)
        POLICY_WRITES.inc(len(result.updated))
        await self._tell_collectors(result, cause)

    async def _tell_collectors(self, result: EditResult, cause: Envelope) -> None:
        """Tell the collectors of the workloads a change touches whether to hold their execs
        before they run, and give held workloads the stamp that invalidates cached answers."""
        if isinstance(cause.payload, Workload):
            self.session.handle(cause)  # the mirror may not have brought it here yet
            affected = [cause.payload.id]
        else:
            changed = {*result.updated, *result.deleted}
            learned_only = all(p.kind is GroupKind.LEARNED for p in result.updated.values()) \
                and not result.deleted
            affected = [wid for wid, wl in self.session.workloads.items()
                        if not learned_only or learned_group_name(wl) in changed]
        for wid in affected:
            try:
                view = self.session.view(wid)
            except (MissingGroup, UnknownWorkload):
                continue
            told = self._told.get(wid, (False, ""))
            now = (view.pre_exec, view.stamp)
            if now == told or (not view.pre_exec and not told[0]):
                continue
            self._told[wid] = now
            state = policy_state(view, f"{cause.event_id}:policy:{wid}", cause.ts or time.time())
            await self.send(VERDICTS.name, state.node, state, state.event_id)

    # -- publishing -----------------------------------------------------------------------------

    async def send(self, topic: str, key: str,
                   payload: Decision | Incident | LearnRequest | GroupPolicy | ProfileChange
                   | DlqEntry, event_id: str, out: Publisher | None = None) -> None:
        env = Envelope.wrap(payload, event_id=event_id, node=self.node,
                            ts=getattr(payload, "ts", 0.0) or time.time())
        await self.send_envelope(topic, key, env, out)

    async def send_envelope(self, topic: str, key: str, env: Envelope,
                            out: Publisher | None = None) -> None:
        await (out or self.publisher).send(self.kafka.topic(topic), key.encode(), encode(env))

    async def dead_letter(self, msg: RawMessage, error: str,
                          out: Publisher | None = None) -> None:
        self.counts["dlq"] += 1
        DEAD_LETTERS.labels(msg.topic).inc()
        log.warning("to the DLQ: %s[%d]@%d: %s", msg.topic, msg.partition, msg.offset, error)
        entry = DlqEntry(topic=msg.topic, partition=msg.partition, offset=msg.offset, error=error,
                         key=(msg.key or b"").decode(errors="replace"),
                         value=(msg.value or b"").decode(errors="replace"), ts=time.time())
        await self.send(DLQ.name, msg.topic, entry,
                        f"dlq:{msg.topic}:{msg.partition}:{msg.offset}", out)
