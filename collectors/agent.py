"""The node agent: the Linux process connector in, exec events out to Kafka, verdicts enforced.

Each exec the kernel reports is enriched from /proc (a process gone before we look is counted,
never hidden), tagged with its workload, and published keyed by workload id so per-workload order
holds. A workload is announced on `procwarden.workloads` the first time one of its processes is
seen. Exits are published for processes whose exec was. New processes' stdio is inspected for
reverse shells. The enforcer (collectors/enforcer.py) acts on this node's verdicts.
"""

from __future__ import annotations

import dataclasses
import errno
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Producer
from prometheus_client import Counter
from pyroute2 import ProcEventSocket

from collectors.enforcer import Enforcer
from collectors.sensing import Sensor
from collectors.settings import CollectorSettings
from collectors.stdio import StdioInspector
from collectors.workloads import WorkloadResolver
from schemas import Envelope, ExitEvent, Payload, Workload, WorkloadState, encode
from schemas.connections import KafkaConnection
from schemas.topics import EXEC, WORKLOADS

__all__ = ["Collector"]

log = logging.getLogger("procwarden.collector")

EVENTS = Counter("procwarden_collector_events_total", "Process events seen", ["kind"])
LOST = Counter("procwarden_collector_lost_total", "Events that could not be reported",
               ["reason"])
PUBLISHED = Counter("procwarden_collector_published_total", "Messages published", ["topic"])


@dataclass
class Collector:
    kafka: KafkaConnection
    settings: CollectorSettings = field(default_factory=CollectorSettings)
    resolver: WorkloadResolver = field(init=False)
    sensor: Sensor = field(init=False)
    enforcer: Enforcer | None = field(init=False, default=None)
    _announced: dict[str, Workload] = field(default_factory=dict)
    _reported: dict[int, str] = field(default_factory=dict)  # pid -> workload id
    _roots: dict[int, Workload] = field(default_factory=dict)  # container root pid -> workload
    _last_exec: dict[int, tuple[int, str, tuple[str, ...]]] = field(default_factory=dict)
    _seq: itertools.count[int] = field(default_factory=itertools.count)
    _closing: bool = False

    def __post_init__(self) -> None:
        self.node = self.settings.node
        self.resolver = WorkloadResolver(node=self.node)
        self.sensor = Sensor(self.resolver)
        self.stdio = StdioInspector(self.settings.stdio_inspections,
                                    self.settings.stdio_interval_s)
        if self.settings.enforce:
            self.enforcer = Enforcer(self.settings, self.kafka, self.resolver, self.sensor,
                                     self.publish)
        self.producer = Producer({
            **self.kafka.confluent_config(), "enable.idempotence": True, "acks": "all",
            "compression.type": "lz4", "linger.ms": 5, "partitioner": "murmur2_random",
            "queue.buffering.max.messages": 200_000})

    def run(self, should_stop: Callable[[], bool] = lambda: False) -> None:
        # pyroute2 drains the netlink socket into a queue of its own event loop, so select()
        # on the socket misses events: a reader thread owns the socket (pyroute2's loop is bound
        # to the thread that made it) and hands messages over.
        inbox: queue.Queue[Any] = queue.Queue(maxsize=100_000)
        listening = threading.Event()
        reader = threading.Thread(target=self._read, args=(inbox, listening), daemon=True,
                                  name="proc-connector")
        reader.start()
        if not listening.wait(10):
            raise RuntimeError("the process connector did not start (is this root?)")
        if self.enforcer is not None:
            self.enforcer.start()
        try:
            while not should_stop():
                due = self.stdio.next_due()
                wait = 0.2 if due is None else min(0.2, max(0.0, due - time.monotonic()))
                try:
                    message = inbox.get(timeout=wait)
                except queue.Empty:
                    message = None
                if message is not None:
                    self.handle(message.get("event"), message)
                for found in self.stdio.run_due():
                    self.publish(EXEC.name, found.workload_id, found)
                self.producer.poll(0)
        finally:
            self._closing = True
            if self.enforcer is not None:
                self.enforcer.stop()
            self.producer.flush(30)

    def _read(self, inbox: queue.Queue[Any], listening: threading.Event) -> None:
        sock = ProcEventSocket()
        sock.bind()
        sock.control(listen=True)
        listening.set()
        try:
            while not self._closing:
                try:
                    messages = sock.get()
                except OSError as exc:
                    if exc.errno == errno.ENOBUFS:  # the kernel dropped events: say so
                        LOST.labels("connector_overrun").inc()
                        log.warning("process connector overrun: events were lost")
                        continue
                    raise
                for message in messages:
                    try:
                        inbox.put_nowait(message)
                    except queue.Full:
                        LOST.labels("backlog_full").inc()
        finally:
            sock.close()

    def handle(self, kind: str | None, message: dict[str, object]) -> None:
        if kind == "PROC_EVENT_EXEC":
            EVENTS.labels("exec").inc()
            self._on_exec(int(message["process_tgid"]))  # type: ignore[call-overload]
        elif kind == "PROC_EVENT_EXIT":
            pid = int(message["process_tgid"])  # type: ignore[call-overload]
            if message.get("process_pid") != message.get("process_tgid"):
                return  # a thread, not the process
            EVENTS.labels("exit").inc()
            self._last_exec.pop(pid, None)
            workload_id = self._reported.pop(pid, None)
            if workload_id is not None:
                self.publish(EXEC.name, workload_id, ExitEvent(workload_id, pid))
            stopped = self._roots.pop(pid, None)
            if stopped is not None:
                self._stopped(stopped)

    def _stopped(self, workload: Workload) -> None:
        """A container's root process exited: the container is gone."""
        self._announced.pop(workload.id, None)
        self.resolver.forget(workload.id)
        if self.enforcer is not None:
            self.enforcer.forget(workload.id)
        self.publish(WORKLOADS.name, workload.id,
                     dataclasses.replace(workload, state=WorkloadState.STOPPED))

    def _on_exec(self, pid: int) -> None:
        sensed = self.sensor.sense_exec(pid, with_hash=self.settings.with_hash)
        if sensed is None:
            LOST.labels("process_gone").inc()
            return
        seen = (sensed.proc.start_time, sensed.event.path, sensed.event.argv)
        if self._last_exec.get(pid) == seen:
            return  # a quick second exec read /proc after it: it was reported already
        self._last_exec[pid] = seen
        workload = sensed.workload
        if self._announced.get(workload.id) != workload:
            self._announced[workload.id] = workload
            if workload.root_pid:
                self._roots[workload.root_pid] = workload
            self.publish(WORKLOADS.name, workload.id, workload)
        self._reported[pid] = workload.id
        self.publish(EXEC.name, workload.id, sensed.event)
        self.stdio.watch(sensed.event)

    def publish(self, topic: str, key: str, payload: Payload) -> str:
        """Publish one record (from any thread); returns its event id."""
        event_id = f"{self.node}:{time.time_ns()}:{next(self._seq)}"
        env = Envelope.wrap(payload, event_id=event_id, node=self.node, ts=time.time(),
                            cluster=self.settings.cluster)
        while True:
            try:
                self.producer.produce(self.kafka.topic(topic), key=key.encode(),
                                      value=encode(env))
                break
            except BufferError:  # the local queue is full: wait for deliveries
                self.producer.poll(0.1)
        PUBLISHED.labels(topic).inc()
        return event_id
