"""Verdicts back on the node: kill what was blocked after exec, answer held execs before it.

The verdict thread reads only this node's partition of the verdicts topic: a `block` for an exec,
a reverse shell or an escalation kills the process (through a pidfd, after checking its start
time, so a reused pid is never hit); an `exec_check` answer releases the held exec it names. A
`HoldSettings` record on the same partition says whether the workload's execs are held before
they run, and its stamp invalidates the answers cached under the previous policies; in a
zero-drift workload held before exec, writes that would be drift are denied before they happen
too (`write_guard`, run by the exec answerer). Every decision carries the same settings, taken
for a workload this collector holds none for yet.

Held execs are answered by a process of their own (`exec_answerer`, through `answerer_link`):
from its cache at once, else after the verdict of the `exec_check` this enforcer publishes for
it, or by the fail mode after a bounded timeout. Which workloads are held survives a restart
(`holds.json` in the state folder).

Nothing on the verdicts topic is believed for being there (issue 22): a verdict must be signed
by the stream app for this node and unexpired (transport/signing.py), and whatever its
signature it must answer an event this collector published, for that process and workload
(`verdict_checks.py` says each check). What fails is refused and counted, never raised.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Protocol, cast

from confluent_kafka import OFFSET_STORED, Consumer, KafkaError, KafkaException, TopicPartition
from prometheus_client import Counter

from collectors.enforcement.answerer_link import AnswererLink
from collectors.enforcement.answerer_protocol import Ask, Drift, Forget, ToAnswerer, VerdictMessage
from collectors.enforcement.exec_answerer import Hold
from collectors.enforcement.verdict_checks import (
    ActedOn,
    HoldState,
    RecentEvents,
    RefusalLog,
    check_kill,
    check_release,
    only_tightens,
    protected_pids,
    workload_of_pid,
)
from collectors.kernel.procfs import read_proc, read_stat
from collectors.publishing.state_files import private_folder, write_private
from collectors.sensing.workloads import WorkloadResolver, host_workload_id
from collectors.settings import CollectorSettings
from schemas import (
    Decision,
    DlqEntry,
    EventKind,
    ExecCheck,
    ExecEvent,
    HoldSettings,
    Payload,
    StdioEvent,
    UidChangeEvent,
    Verdict,
    decode_envelope,
)
from schemas.connections import KafkaConnection
from schemas.topics import EXEC, FILE, VERDICTS, verdict_partition
from transport import Health, MessageGuard, Refused
from transport.keyfile import KeyFile, keys_now
from transport.signing import BadSignature, Headers, NodeKeys, Verifier, claimed

__all__ = ["Enforcer", "kill_if_same", "node_keys"]

log = logging.getLogger("procwarden.collector.enforcer")

ENFORCED = Counter("procwarden_collector_enforced_total",
                   "Block verdicts acted on after exec, by outcome", ["outcome"])

_KILLED_KINDS = frozenset({EventKind.EXEC, EventKind.STDIO, EventKind.UID_CHANGE})
# Linux's PID_MAX_LIMIT: a verdict naming a pid outside [2, it] names no process of ours.
_PID_MAX = 2**22
_SOURCE_BYTES = 80
_VERDICT_READER, _ANSWERER = "verdict reader", "exec answerer"
# What a verdict may answer: the kinds of the events the collector remembers publishing.
_ANSWERED = {ExecEvent: EventKind.EXEC, StdioEvent: EventKind.STDIO,
             UidChangeEvent: EventKind.UID_CHANGE, ExecCheck: EventKind.EXEC_CHECK}


def node_keys(settings: CollectorSettings) -> NodeKeys:
    """This node's signing keys, from COLLECTOR_SIGNING_KEYS_FILE (the composition root gives
    the local keyring's when it is unset: procwarden/keys.py)."""
    if settings.signing_keys_file is None:
        raise ValueError("COLLECTOR_SIGNING_KEYS_FILE: not set, and no keys were given")
    keys = NodeKeys.load(settings.signing_keys_file)
    if keys.node != settings.node:
        raise ValueError(f"{settings.signing_keys_file} holds the keys of node {keys.node!r}, "
                         f"not of {settings.node!r}")
    return keys


class Publish(Protocol):
    def __call__(self, topic: str, key: str, payload: Payload, event_id: str | None = None
                 ) -> str: ...


def kill_if_same(pid: int, start_time: int,
                 belongs: Callable[[int], bool] | None = None) -> str:
    """SIGKILL the process `pid` only while it is the one that started at `start_time` (and,
    given `belongs`, only if that says it is in the verdict's workload)."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return "gone"
    try:
        # The pidfd pins this very process: a check through it cannot race a pid reuse (its
        # workload read before its start time: a pid reused between them fails the latter).
        if belongs is not None and not belongs(pid):
            return "foreign-workload"
        stat = read_stat(pid)
        if stat is None:
            return "gone"
        if start_time and stat.start_time != start_time:
            return "pid-reused"
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        return "killed"
    except ProcessLookupError:
        return "gone"
    finally:
        os.close(pidfd)


class Enforcer:
    """`health` is told whether verdicts are read and execs held; `cannot_go_on` is called
    (from any thread) when one of them stopped for good: the collector then exits non-zero
    rather than run on while enforcing nothing."""

    def __init__(self, settings: CollectorSettings, kafka: KafkaConnection,
                 resolver: WorkloadResolver, publish: Publish, *, health: Health,
                 cannot_go_on: Callable[[str], None],
                 keys: NodeKeys | KeyFile[NodeKeys] | None = None) -> None:
        self.settings = settings
        self.kafka = kafka
        self.resolver = resolver
        self.publish = publish
        self.health = health
        self.cannot_go_on = cannot_go_on
        self.node = settings.node
        # A collector may not write the DLQ (its principal reads verdicts only): what it
        # cannot handle is counted, logged and reported (CollectorReport.dead_letters).
        self.guard = MessageGuard("collector", self._dead_letter)
        self._holds: dict[str, Hold] = {}
        self._lock = threading.Lock()  # the holds, and their order on the way to the answerer
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.answerer: AnswererLink | None = None
        self.assigned = threading.Event()
        # A reloaded node key file swaps in a whole new verifier (transport/keyfile.py).
        self.verifier = Verifier.for_node(keys_now(keys if keys is not None
                                                   else node_keys(settings), self._new_keys))
        self.recent = RecentEvents(settings.verdict_events_max,
                                   settings.verdict_events_max_age_s)
        self.acted = ActedOn(settings.verdicts_acted_max)
        self.refusals = RefusalLog()

    def _new_keys(self, keys: NodeKeys) -> None:
        self.verifier = Verifier.for_node(keys)

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Called by the sensing thread."""
        self._restore_holds()
        self.health.needs(_VERDICT_READER)
        if not self.settings.dry_run:
            self.health.needs(_ANSWERER)
            self.answerer = AnswererLink(self.settings, self._tell_answerer, self._heard,
                                         on_gone=self._answerer_gone,
                                         cannot_go_on=self.cannot_go_on)
            self.answerer.start()
        self._spawn(self._read_verdicts, "verdicts")

    @property
    def dead_letters(self) -> int:
        return self.guard.refused

    def _dead_letter(self, entry: DlqEntry) -> None:
        """Counted and logged by the guard already; nothing to publish it to."""

    def _answerer_gone(self) -> None:
        self.health.part(_ANSWERER, "gone: execs go ahead unheld until it is started again")

    @property
    def _holds_file(self) -> Path:
        return self.settings.state_dir / "holds.json"

    def _restore_holds(self) -> None:
        """Held workloads stay held across a restart: no window opens while the verdicts
        that said so are behind the committed offset."""
        try:
            saved = json.loads(self._holds_file.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("ignoring %s: %s", self._holds_file, exc)
            return
        for workload_id, fields in saved.items():
            if self.resolver.container(workload_id) is not None:
                self._holds[workload_id] = Hold.of_fields(fields)

    def _save_holds(self) -> None:
        state = {wid: h.fields() for wid, h in self._holds.items()}
        private_folder(self.settings.state_dir)
        write_private(self._holds_file, json.dumps(state).encode())

    def _tell_answerer(self) -> None:
        """Every held workload, to an answerer just started."""
        with self._lock:
            for workload_id, hold in self._holds.items():
                self._send(hold.message(workload_id))
        self.health.part(_ANSWERER)

    def _send(self, message: ToAnswerer) -> None:
        if self.answerer is not None:
            self.answerer.send(message)

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)
        if self.answerer is not None:
            self.answerer.stop()  # it answers what it holds by the fail mode first

    # -- verdicts -------------------------------------------------------------------------------

    def _read_verdicts(self) -> None:
        try:
            self._verdict_loop()
        except Exception as exc:
            log.exception("the verdict reader stopped")
            self.health.part(_VERDICT_READER, f"stopped: {exc!r}"[:300])
            self.cannot_go_on(f"the verdict reader stopped ({exc!r})"[:500])
        else:
            if not self._stop.is_set():
                self.cannot_go_on("the verdict reader stopped")

    def _verdict_loop(self) -> None:
        consumer = Consumer({
            **self.kafka.confluent_config(), "group.id": f"procwarden-collector-{self.node}",
            "enable.auto.commit": True, "enable.auto.offset.store": False,
            "auto.offset.reset": "latest", "fetch.wait.max.ms": 10})
        topic = self.kafka.topic(VERDICTS.name)
        try:
            partitions = self._partition_count(consumer, topic)
            if partitions == 0:
                return  # stopping
            partition = verdict_partition(self.node, partitions)
            consumer.assign([TopicPartition(topic, partition, OFFSET_STORED)])
            self.assigned.set()
            self.health.part(_VERDICT_READER)
            log.info("reading verdicts from %s[%d]", topic, partition)
            while not self._stop.is_set():
                msg = consumer.poll(0.1)
                if msg is None:
                    continue
                error = msg.error()
                if error is not None:
                    if error.code() != KafkaError._PARTITION_EOF:
                        log.warning("verdicts: %s", error)
                    continue
                value = msg.value()
                # Whatever this message is, the next one is read (MessageGuard).
                self.guard.run(partial(self.on_message, value,
                                               cast(Headers, msg.headers()), msg.key()),
                               topic=topic,
                               partition=msg.partition() or 0, offset=msg.offset() or 0,
                               key=msg.key(), value=value)
                try:
                    consumer.store_offsets(msg)
                except KafkaException as exc:  # the partition was taken away meanwhile
                    log.warning("verdicts: storing the offset failed: %s", exc)
        finally:
            consumer.close()

    def on_message(self, value: bytes | None, headers: Headers = None,
                   key: bytes | None = None) -> None:
        """One message of this node's verdict partition (raises for one it cannot read)."""
        env = decode_envelope(value or b"")
        record = env.payload
        if isinstance(record, HoldSettings):
            if record.node == self.node:
                signed = self._signature(value, headers, key, _brief_hold(record))
                if signed is not None:
                    self.on_hold_settings(record, signed)
            return
        if not isinstance(record, Decision):
            raise Refused(f"a {env.kind.value} record, not a verdict")
        d = record
        if d.node != self.node:
            return  # another node's, on a partition it shares with us
        if d.event_kind in _KILLED_KINDS and d.verdict is Verdict.BLOCK \
                and not 2 <= d.pid <= _PID_MAX:
            raise Refused(f"a block verdict for pid {d.pid}, which no process can have")
        signed = self._signature(value, headers, key, _brief(d))
        if signed:
            self.on_verdict(d)
        elif signed is not None:
            self.on_verdict(d, signed=False)

    def _signature(self, value: bytes | None, headers: Headers, key: bytes | None,
                   what: str) -> bool | None:
        """Whether the record is signed for this node (True), unsigned and accepted as such
        (False), or refused (None, counted and logged)."""
        try:
            self.verifier.verify(self.kafka.topic(VERDICTS.name), key, value, headers,
                                 now=time.time())
        except BadSignature as bad:
            if bad.reason != "unsigned" or not self.settings.accept_unsigned_verdicts:
                self.refusals.refuse(bad.reason, f"{what}: {bad}", _signer(headers))
                return None
            return False
        return True

    def _partition_count(self, consumer: Consumer, topic: str) -> int:
        """The verdict topic's partitions; a topic created a moment ago may list none yet."""
        warned = False
        while not self._stop.is_set():
            try:
                meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
            except KafkaException as exc:
                meta = None
                log.warning("verdicts: %s", exc)
            if meta is not None and meta.error is None and meta.partitions:
                return len(meta.partitions)
            if not warned:
                log.warning("waiting for the topic %s", topic)
                warned = True
            self._stop.wait(1.0)
        return 0

    def on_verdict(self, d: Decision, signed: bool = True) -> None:
        """A verdict for this node, signed (or unsigned, accepted as such): acted on only if
        it passes the local checks."""
        kind = d.event_kind
        if d.workload_id not in self._holds and d.policy_stamp:
            # Settings sent before this collector started (or lost with its holds.json) come
            # again with any verdict, not only with the next policy change. Refused silently:
            # the verdict they ride on is checked, and refused if need be, on its own below.
            hold = Hold(d.pre_exec, d.policy_stamp, d.pre_write, d.fail_mode)
            if self._hold_refused(d.workload_id, hold, signed) is None:
                self._set_hold(d.workload_id, hold)
        if kind is EventKind.EXEC_CHECK:
            why = check_release(d, self.recent, self.acted)
            if why is not None:
                self.refusals.refuse(why, _brief(d))
                return
            self.recent.pop(d.event_id)
            self.acted.add(d.event_id, kind)
            self._released(d)
        elif d.verdict is Verdict.BLOCK and kind in _KILLED_KINDS:
            why = check_kill(d, self.recent, self.acted, self._protected)
            if why is not None:
                self.refusals.refuse(why, _brief(d))
                return
            self.acted.add(d.event_id, kind)
            self._kill(d)

    def on_hold_settings(self, h: HoldSettings, signed: bool = True) -> None:
        """How a workload of this node is held from now on, if the local checks allow it."""
        hold = Hold(h.pre_exec, h.policy_stamp, h.pre_write, h.fail_mode)
        why = self._hold_refused(h.workload_id, hold, signed)
        if why is not None:
            self.refusals.refuse(why, _brief_hold(h))
            return
        self._set_hold(h.workload_id, hold)

    def _hold_refused(self, wid: str, hold: Hold, signed: bool) -> str | None:
        """Why `hold` may not become how workload `wid` is held (None: it may)."""
        if wid != host_workload_id(self.node) and self.resolver.container(wid) is None:
            return "foreign_workload"
        if signed:
            return None
        old = self._holds.get(wid)
        mode = self.settings.fail_mode
        before = HoldState(old.pre_exec, old.writes, old.fail_mode or mode) if old is not None \
            else HoldState(False, False, mode)
        if only_tightens(before, HoldState(hold.pre_exec, hold.writes, hold.fail_mode or mode)):
            return None
        return "hold_unsigned"

    def _protected(self) -> set[int]:
        answerer = self.answerer.process if self.answerer is not None else None
        return protected_pids((os.getpid(), answerer.pid if answerer is not None else None))

    def published(self, event_id: str, payload: Payload) -> None:
        """The collector published `payload` as `event_id`: a verdict may answer it."""
        kind = _ANSWERED.get(type(payload))
        if kind is not None:
            self.recent.remember(event_id, kind, payload.workload_id,  # type: ignore[union-attr]
                                 payload.pid, payload.start_time)  # type: ignore[union-attr]

    def _in_workload(self, workload_id: str, pid: int) -> bool:
        return workload_of_pid(pid, self.resolver) == workload_id

    def _kill(self, d: Decision) -> None:
        if self.settings.dry_run:
            outcome = "dry-run"
        else:
            outcome = kill_if_same(d.pid, d.start_time, partial(self._in_workload, d.workload_id))
            if outcome == "foreign-workload":
                self.refusals.refuse("foreign_workload", _brief(d))
        ENFORCED.labels(outcome).inc()
        log.warning("block %s: pid %d (%s, %s) in %s: %s", d.reason, d.pid, d.name, d.path,
                    d.workload_id, outcome)

    def _set_hold(self, workload_id: str, hold: Hold) -> None:
        with self._lock:
            if self._holds.get(workload_id) == hold:
                return
            self._holds[workload_id] = hold
            self._save_holds()
            self._send(hold.message(workload_id))

    def forget(self, workload_id: str) -> None:
        with self._lock:
            hold = self._holds.pop(workload_id, None)
            self._send(Forget(workload_id))
            if hold is not None:
                self._save_holds()

    def _released(self, d: Decision) -> None:
        allow = d.verdict is not Verdict.BLOCK or self.settings.dry_run
        self._send(VerdictMessage(d.event_id, allow, d.policy_stamp, d.any_caller))
        if not allow:
            log.warning("denied before exec: %s in %s (%s)", d.path, d.workload_id, d.reason)

    def _heard(self, message: Ask | Drift) -> None:
        """Publish what the exec answerer says: a question for a held exec, or a write it
        denied."""
        if isinstance(message, Drift):  # built and judged by the answerer's write guard
            self.publish(FILE.name, message.write.workload_id, message.write)
            return
        # A question: the exec is held meanwhile, so its process is still there to read.
        event_id, pid, workload_id, path = (message.event_id, message.pid, message.workload,
                                            message.path)
        info = self.resolver.container(workload_id)
        proc = read_proc(pid)
        euid = proc.euid if proc is not None else 0
        self.publish(EXEC.name, workload_id, ExecCheck(
            workload_id=workload_id, pid=pid, path=path,
            start_time=proc.start_time if proc is not None else 0, euid=euid,
            user=self.resolver.user_name(info, euid),
            name=proc.comm if proc is not None else path.rsplit("/", 1)[-1][:15],
            runtime_injected=message.injected, origin=message.origin, netcat=message.netcat),
            event_id=event_id)


def _brief(d: Decision) -> str:
    return (f"{d.event_kind.value} {d.verdict.value} for pid {d.pid} in "
            f"{d.workload_id[:80]!r} (event {d.event_id[:80]!r})")


def _brief_hold(h: HoldSettings) -> str:
    return (f"hold settings (pre_exec={h.pre_exec}, pre_write={h.pre_write}) for "
            f"{h.workload_id[:80]!r}")


def _signer(headers: Headers) -> str:
    """Who a verdict says signed it (for the log only: it is not believed)."""
    said = claimed(headers)
    return said.signer[:_SOURCE_BYTES] if said is not None else "-"
