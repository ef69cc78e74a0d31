"""What the stream worker does with each message, behind one small publishing interface.

The event decider and the Faust agents only hand raw messages here. Nothing raises out of a
handler for any message: each one's handling runs inside `transport.MessageGuard`, so one that
cannot be decoded, is refused, breaks the engine (a `RecursionError`, a bug) or makes an output
Kafka refuses (`OutputRefused`: over the producer's limit) becomes one bounded dead letter with
its topic, partition, offset and the error, and the worker carries on.

An event of a workload not announced yet waits in a `SideBuffer` (its announcement travels on
another topic and may be a moment behind) while the rest of the batch is decided: bounded in
count and per workload, each waiting event decided once its workload is announced, or
dead-lettered after `unknown_workload_wait_s`. A workload's events keep their order: one that
arrives while earlier ones of its workload wait is parked behind them. How the decider keeps a
waiting event from being lost on a crash is in `streams.kafka.decider`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
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
    HoldSettings,
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
    hold_settings,
    learned_group_name,
)
from streams.worker.provenance import Provenance, RawHeaders
from streams.worker.session import DecisionSession, UnknownWorkload, edit_result
from transport import DlqLimits, MessageGuard, Refused

__all__ = ["Handlers", "Publisher", "RawMessage", "SideBuffer"]

log = logging.getLogger("procwarden.streams")

DECIDED = Counter_("procwarden_streams_decided_total", "Events decided", ["verdict", "mode"])
DEAD_LETTERS = Counter_("procwarden_streams_dlq_total", "Messages sent to the DLQ", ["topic"])
EVENT_AGE = Histogram("procwarden_streams_event_age_seconds",
                      "Age of the oldest event of each decided batch (its ts) when the batch's "
                      "verdicts are handed to the producer: the lag",
                      buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1, 5, 30, 120))
CAPPED = Counter_("procwarden_streams_capped_total",
                  "Decisions an engine cap changed (a workload's state or a group's learning "
                  "full), by cap; its first per workload also raised an overflow incident",
                  ["cap"])
POLICY_WRITES = Counter_("procwarden_streams_policy_versions_total", "Policy versions written")
PARKED = Counter_("procwarden_streams_unknown_workload_events_total",
                  "Events of workloads not announced yet, by what became of them",
                  ["outcome"])  # parked, decided, expired, full


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
    headers: RawHeaders = None  # the signature (streams/worker/provenance.py)


@dataclass(slots=True)
class _Waiting:
    msg: RawMessage
    env: Envelope
    until: float  # monotonic: dead-lettered once this passes
    done: bool = False


class SideBuffer:
    """Events of workloads not announced yet, waiting aside, in arrival order per workload.

    Bounded: at most `max_events` in all and `max_per_workload` per workload (a full buffer is
    the caller's to dead-letter). `floors()` tells the decider, per partition, the offset of the
    oldest event still waiting there (it commits no further)."""

    def __init__(self, *, wait_s: float, max_events: int, max_per_workload: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.wait_s = wait_s
        self.max_events = max_events
        self.max_per_workload = max_per_workload
        self.clock = clock
        self._by_workload: dict[str, deque[_Waiting]] = {}
        # offsets waiting per partition, oldest first (dicts keep insertion order, which is
        # offset order: a partition is read in order)
        self._by_partition: dict[tuple[str, int], dict[int, None]] = {}
        self._arrivals: deque[_Waiting] = deque()  # deadline order, for expiry
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def holds(self, workload_id: str) -> bool:
        return workload_id in self._by_workload

    def workloads(self) -> Iterable[str]:
        return self._by_workload.keys()

    def park(self, workload_id: str, msg: RawMessage, env: Envelope) -> str:
        """Park one event: "" once parked, else why not (the buffer is full)."""
        queue = self._by_workload.get(workload_id)
        if queue is not None and len(queue) >= self.max_per_workload:
            return f"{len(queue)} events of this workload already wait"
        if self._size >= self.max_events:
            return f"{self._size} events of unannounced workloads already wait"
        item = _Waiting(msg, env, self.clock() + self.wait_s)
        if queue is None:
            queue = self._by_workload[workload_id] = deque()
        queue.append(item)
        self._by_partition.setdefault((msg.topic, msg.partition), {})[msg.offset] = None
        self._arrivals.append(item)
        self._size += 1
        return ""

    def take(self, workload_id: str) -> list[_Waiting]:
        """All of a workload's waiting events, oldest first, out of the buffer."""
        items = list(self._by_workload.pop(workload_id, ()))
        for item in items:
            self._forget(item)
        return items

    def expired(self) -> list[_Waiting]:
        """The events whose wait is over, out of the buffer (each is the oldest of its
        workload: a workload's events wait in arrival order, and all wait as long)."""
        now, out = self.clock(), []
        arrivals = self._arrivals
        while arrivals and (arrivals[0].done or arrivals[0].until <= now):
            item = arrivals.popleft()
            if item.done:
                continue
            wid = item.env.payload.workload_id  # type: ignore[union-attr]
            queue = self._by_workload[wid]
            queue.popleft()
            if not queue:
                del self._by_workload[wid]
            self._forget(item)
            out.append(item)
        return out

    def drop_partitions(self, partitions: set[tuple[str, int]]) -> int:
        """Forget the events of partitions this worker no longer owns (their new owner reads
        them again from the committed offset, which is no later than the oldest of them)."""
        dropped = 0
        for wid in list(self._by_workload):
            queue = self._by_workload[wid]
            kept = deque(i for i in queue if (i.msg.topic, i.msg.partition) not in partitions)
            for item in queue:
                if (item.msg.topic, item.msg.partition) in partitions:
                    self._forget(item)
                    dropped += 1
            if kept:
                self._by_workload[wid] = kept
            else:
                del self._by_workload[wid]
        return dropped

    def floors(self) -> dict[tuple[str, int], int]:
        """Per partition, the offset of the oldest event waiting."""
        return {tp: next(iter(offsets)) for tp, offsets in self._by_partition.items()}

    def _forget(self, item: _Waiting) -> None:
        item.done = True
        self._size -= 1
        tp = (item.msg.topic, item.msg.partition)
        offsets = self._by_partition[tp]
        del offsets[item.msg.offset]
        if not offsets:
            del self._by_partition[tp]


@dataclass
class Handlers:
    session: DecisionSession
    publisher: Publisher  # the Faust agents' outputs: Faust flushes it before it commits
    # The event decider's outputs: its own producer, which it flushes before it commits.
    decisions: Publisher
    kafka: KafkaConnection
    node: str = "streams"
    unknown_workload_wait_s: float = 3.0
    unknown_workload_max_events: int = 10_000
    unknown_workload_max_per_workload: int = 256
    dlq_limits: DlqLimits = field(default_factory=DlqLimits)
    # Who may say what; the default believes unsigned records (unit tests of other concerns).
    provenance: Provenance = field(default_factory=lambda: Provenance(None, accept_unsigned=True))
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
    # Workloads announced while events of theirs wait in the side buffer.
    _announced: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        # Dead letters of the event decider go with its outputs (flushed before it commits);
        # those of the agents with theirs (Faust flushes them before it commits).
        self.guard = MessageGuard("streams", self._dead_letter_to(self.decisions),
                                  limits=self.dlq_limits)
        self.agent_guard = MessageGuard("streams", self._dead_letter_to(self.publisher),
                                        limits=self.dlq_limits)
        self.waiting = SideBuffer(wait_s=self.unknown_workload_wait_s,
                                  max_events=self.unknown_workload_max_events,
                                  max_per_workload=self.unknown_workload_max_per_workload)

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
            self._note_announced(workload_id)

    def _note_announced(self, workload_id: str) -> None:
        if self.waiting.holds(workload_id) and workload_id in self.session.workloads:
            self._announced.add(workload_id)

    # -- agents ---------------------------------------------------------------------------------

    async def on_event(self, msg: RawMessage) -> None:
        """An exec/file/... event: decide it and publish the verdict and what follows (or park
        it until its workload is announced). Never raises."""
        await self.guard.run_async(lambda: self._on_event(msg), topic=msg.topic,
                                   partition=msg.partition, offset=msg.offset, key=msg.key,
                                   value=msg.value)

    async def _on_event(self, msg: RawMessage) -> None:
        node = self.provenance.node_of(msg.topic, msg.key, msg.value, msg.headers)
        env = decode_envelope(msg.value or b"")
        if env.kind not in DECIDED_KINDS:
            raise DecodeError("kind", f"{env.kind.value} is not an event of a workload")
        self.provenance.check_speaker(node, env)  # then env.node is who signed it
        if not self.ready.is_set():
            await self.ready.wait()
        workload_id: str = env.payload.workload_id  # type: ignore[union-attr]
        if self.waiting.holds(workload_id):  # behind its workload's earlier events
            if workload_id in self.session.workloads:
                await self._release(workload_id)
            else:
                self._park(workload_id, msg, env)
                return
        try:
            decision = self._decide(env)
        except UnknownWorkload:
            self._park(workload_id, msg, env)
            return
        await self._publish(decision, env)

    def _decide(self, env: Envelope) -> Decision:
        """Decide an event whose envelope's node signed it: only if its workload runs there."""
        workload = self.session.workloads.get(env.payload.workload_id)  # type: ignore[union-attr]
        if workload is not None:
            self.provenance.check_event(env.node, workload)
        return self.session.decide(env)

    def _park(self, workload_id: str, msg: RawMessage, env: Envelope) -> None:
        full = self.waiting.park(workload_id, msg, env)
        if full:
            PARKED.labels("full").inc()
            self.counts["unknown_workload_full"] += 1
            raise Refused(f"unknown workload {workload_id!r}: no room to wait for its "
                          f"announcement ({full})")
        PARKED.labels("parked").inc()

    async def _publish(self, decision: Decision, env: Envelope) -> None:
        await self._publish_decision(decision)
        self._batch[(decision.verdict.value, decision.mode.value if decision.mode else "-")] += 1
        self._oldest = min(self._oldest, env.ts)

    async def _release(self, workload_id: str) -> None:
        """Decide, in order, the events of a workload that waited for its announcement."""
        self._announced.discard(workload_id)
        for item in self.waiting.take(workload_id):
            PARKED.labels("decided").inc()
            m = item.msg
            await self.guard.run_async(partial(self._decide_waiting, item.env),
                                       topic=m.topic, partition=m.partition, offset=m.offset,
                                       key=m.key, value=m.value)

    async def _decide_waiting(self, env: Envelope) -> None:
        try:
            decision = self._decide(env)
        except UnknownWorkload as exc:  # announced, then stopped before this was decided
            raise Refused(f"unknown workload {exc.args[0]!r}: stopped before its waiting "
                          "events were decided") from None
        await self._publish(decision, env)

    async def tick(self) -> bool:
        """Between batches: decide what waited for workloads announced since, dead-letter
        what waited too long. Whether it did anything (then the decider ends a batch)."""
        acted = False
        if self._announced:
            for wid in list(self._announced):
                await self._release(wid)
            acted = True
        if len(self.waiting):
            for item in self.waiting.expired():
                acted = True
                PARKED.labels("expired").inc()
                wid = item.env.payload.workload_id  # type: ignore[union-attr]
                m = item.msg
                entry = self.guard.refuse(
                    Refused(f"unknown workload {wid!r}: not announced within "
                            f"{self.unknown_workload_wait_s:g} s"),
                    topic=m.topic, partition=m.partition, offset=m.offset, key=m.key,
                    value=m.value, publish=False)
                await self._send_dead_letter(entry, self.decisions)
        return acted

    def waiting_floors(self) -> dict[tuple[str, int], int]:
        return self.waiting.floors()

    def drop_partitions(self, partitions: set[tuple[str, int]]) -> None:
        dropped = self.waiting.drop_partitions(partitions)
        if dropped:
            log.info("%d waiting events of revoked partitions left to their new owner", dropped)

    async def _publish_decision(self, decision: Decision) -> None:
        out = self.decisions
        await self.send(VERDICTS.name, decision.node, decision, decision.event_id, out)
        incident = decision.incident
        if incident is not None and not decision.suppressed:
            await self.send(SECURITY_EVENTS.name, incident.group, incident, incident.id, out)
        if decision.capped:
            CAPPED.labels(decision.capped).inc()
        overflow = decision.overflow  # a cap this event overflowed: said once per workload
        if overflow is not None:
            await self.send(SECURITY_EVENTS.name, overflow.group, overflow, overflow.id, out)
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
                await self._persist_state(wid, state)

    async def _persist_state(self, wid: str, state: Any) -> None:
        # One snapshot Kafka refuses (too large) is dead-lettered; the other workloads' go on.
        value = b""
        try:
            snap = state.snapshot(wid)
            env = Envelope.wrap(snap, event_id=f"state:{wid}:{snap.seq}", node=self.node,
                                ts=time.time())
            value = encode(env)
            await self.decisions.send(self.kafka.topic(PROCESS_STATE.name), wid.encode(), value)
        except Exception as exc:
            self.counts["state_not_persisted"] += 1
            entry = self.guard.refuse(exc, topic=self.kafka.topic(PROCESS_STATE.name),
                                      partition=-1, offset=-1, key=wid.encode(), value=value,
                                      publish=False)
            await self._send_dead_letter(entry, self.decisions)

    def on_process_state(self, workload_id: str, snapshot: ProcessSnapshot | None) -> None:
        """The mirror read a persisted process state (or its tombstone)."""
        if snapshot is None:
            self.session.states.pop(workload_id, None)
            return
        try:
            restored = self.session.restore_state(snapshot)
        except ValueError as exc:  # names a risk or a cap this build does not know
            raise Refused(f"process state of {workload_id[:80]!r}: {exc}") from exc
        if restored:
            self.counts["states_restored"] += 1

    async def on_workload_announcement(self, msg: RawMessage) -> None:
        """A workload started: make sure its learned group exists with its probe rules."""
        if msg.value is None:
            return
        await self.agent_guard.run_async(lambda: self._on_workload_announcement(msg),
                                         topic=msg.topic, partition=msg.partition,
                                         offset=msg.offset, key=msg.key, value=msg.value)

    async def _on_workload_announcement(self, msg: RawMessage) -> None:
        node = self.provenance.node_of(msg.topic, msg.key, msg.value, msg.headers)
        env = decode_envelope(msg.value or b"")
        if not isinstance(env.payload, Workload):
            raise DecodeError("kind", f"{env.kind.value} is not a workload announcement")
        workload = env.payload
        self.provenance.check_speaker(node, env)
        self.provenance.check_workload(node, workload, self.session.workloads.get(workload.id))
        if workload.state is WorkloadState.RUNNING:
            await self.send_envelope(POLICY_UPDATES.name, learned_group_name(workload), env)
        else:  # gone: so is its process state
            await self.publisher.send(self.kafka.topic(PROCESS_STATE.name),
                                      workload.id.encode(), None)

    async def on_update(self, msg: RawMessage) -> None:
        """The single writer of a group: apply a learned rule or an edit, publish the policy."""
        await self.agent_guard.run_async(lambda: self._on_update(msg), topic=msg.topic,
                                         partition=msg.partition, offset=msg.offset,
                                         key=msg.key, value=msg.value)

    async def _on_update(self, msg: RawMessage) -> None:
        self.provenance.from_streams(msg.topic, msg.key, msg.value, msg.headers)
        env = decode_envelope(msg.value or b"")
        await self.ready.wait()
        try:
            result = edit_result(self.published, env, self.session.settings)
        except PolicyError as exc:
            raise Refused(f"edit rejected ({exc.status}): {exc}") from None
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
        """Send the collectors of the workloads a change touches their `HoldSettings`: whether
        to hold their execs before they run, and for held workloads the stamp that invalidates
        cached answers."""
        if isinstance(cause.payload, Workload):
            self.session.handle(cause)  # the mirror may not have brought it here yet
            self._note_announced(cause.payload.id)
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
            hold = hold_settings(view)
            await self.send(VERDICTS.name, hold.node, hold, f"{cause.event_id}:hold:{wid}")

    # -- publishing -----------------------------------------------------------------------------

    async def send(self, topic: str, key: str,
                   payload: Decision | HoldSettings | Incident | LearnRequest | GroupPolicy
                   | ProfileChange | DlqEntry, event_id: str, out: Publisher | None = None) -> None:
        env = Envelope.wrap(payload, event_id=event_id, node=self.node,
                            ts=getattr(payload, "ts", 0.0) or time.time())
        await self.send_envelope(topic, key, env, out)

    async def send_envelope(self, topic: str, key: str, env: Envelope,
                            out: Publisher | None = None) -> None:
        await (out or self.publisher).send(self.kafka.topic(topic), key.encode(), encode(env))

    def _dead_letter_to(self, out: Publisher) -> Callable[[DlqEntry], Any]:
        async def publish(entry: DlqEntry) -> None:
            await self._send_dead_letter(entry, out)
        return publish

    async def _send_dead_letter(self, entry: DlqEntry, out: Publisher | None = None) -> None:
        self.counts["dlq"] += 1
        DEAD_LETTERS.labels(entry.topic).inc()
        if entry.offset >= 0:
            event_id = f"dlq:{entry.topic}:{entry.partition}:{entry.offset}"
        else:  # an output, not a consumed message: named by what it held
            event_id = f"dlq:{entry.topic}:{entry.key}:{entry.value_sha256[:16]}"
        try:
            await self.send(DLQ.name, entry.topic, entry, event_id, out)
        except Exception:  # a dead letter is small: this is Kafka, logged and counted
            self.counts["dlq_lost"] += 1
            log.exception("the dead letter of %s[%d]@%d could not be published", entry.topic,
                          entry.partition, entry.offset)

    async def dead_letter_entry(self, entry: DlqEntry) -> None:
        """Publish a dead letter another part of the worker made (the mirror's)."""
        await self._send_dead_letter(entry, self.decisions)
