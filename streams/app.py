"""The Faust app: topics, thin agents, the policy mirror, the event decider, and the worker
entry point.

Exec and file events are read in batches by `EventDecider` (a service of this app with its own
librdkafka consumer and producer: Faust's per-message stream machinery costs ten times what
deciding does); workload announcements and policy updates go through Faust agents. Both only hand
each raw message to `Handlers`; every message on every topic is plain JSON in the `schemas/`
envelope (raw serializers: no Faust framing on the wire). Faust acknowledges a message when its
agent moves on and flushes the producer before it commits offsets, and the decider checks its
outputs' delivery before it commits, so an output is in Kafka before its input counts as done;
after a crash the uncommitted tail is decided again,
which gives the same decisions with the same ids (sinks deduplicate by id, collectors check pids
against start times, the policy writer is idempotent).

The worker is ready (`GET /ready`, `procwarden_ready{role="streams"}`, the health file that
`procwarden status` reads) only while it decides: the mirror has caught up and its loop runs,
and the decider's loop runs and has turned within `STREAMS_READY_STALL_S`. If either loop stops
with an error, the worker stops with a non-zero status instead of lingering.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

import faust
import mode

from schemas.connections import KafkaConnection
from schemas.topics import EXEC, FILE, POLICY_UPDATES, VERDICTS, WORKLOADS
from streams.kafka.decider import EventDecider
from streams.kafka.event_output import KafkaOutput, Sign
from streams.kafka.kafka_options import ssl_context
from streams.kafka.mirror import PolicyMirror
from streams.settings import StreamSettings
from streams.web.api import PolicyApi
from streams.web.routes import install_routes, web_options
from streams.worker.handlers import Handlers, RawMessage
from streams.worker.provenance import Provenance, RecordSigner
from streams.worker.session import DecisionSession
from transport import HEALTH_FILE_ENV, DlqLimits, Health, describe, exit_unless_stopped
from transport.keyfile import KeyFile
from transport.signing import Keyring

__all__ = ["FaustPublisher", "Readiness", "build_app", "run_worker"]

log = logging.getLogger("procwarden.streams")


class FaustPublisher:
    """Publishes raw bytes with the app's producer, for the Faust agents: Faust flushes it before
    it commits their offsets. (Faust's Topic.send adds ~0.3 ms of bookkeeping per message; this
    path does not.)"""

    def __init__(self, app: faust.App, sign: Sign | None = None) -> None:
        self.app = app
        self._sign = sign

    async def send(self, topic: str, key: bytes, value: bytes | None) -> None:
        headers = None
        if self._sign:  # (Faust's producer types them as bytes; ours are)
            headers = [(n, v if isinstance(v, bytes) else (v or "").encode())
                       for n, v in self._sign(topic, key, value)]
        await self.app.producer.send(topic, key, value, partition=None, timestamp=None,
                                     headers=headers)


class _MirrorService(mode.Service):
    def __init__(self, mirror: PolicyMirror, handlers: Handlers, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.mirror = mirror
        self.handlers = handlers

    async def on_start(self) -> None:
        await self.mirror.start()
        self.add_future(self._announce_ready())
        self.add_future(self._watch())

    async def _announce_ready(self) -> None:
        await self.mirror.caught_up.wait()
        log.info("policies restored (%d groups, %d workloads, %d records skipped): deciding",
                 len(self.handlers.session.policies), len(self.handlers.session.workloads),
                 self.mirror.invalid)
        self.handlers.ready.set()

    async def _watch(self) -> None:
        """The mirror's loop ends only with an error: without it no policy change reaches this
        worker, so the worker stops (the error crashes the service) rather than decide on."""
        task = self.mirror.task
        assert task is not None
        await asyncio.wait([task])
        if self.should_stop or task.cancelled():
            return
        error = task.exception()
        exit_unless_stopped("the policy mirror stopped")
        raise RuntimeError(f"the policy mirror stopped: {describe(error) if error else 'ended'}")

    async def on_stop(self) -> None:
        await self.mirror.stop()


class Readiness:
    """Whether the worker decides, and if not why: what `/ready`, the gauge and the health
    file say."""

    def __init__(self, handlers: Handlers, mirror: PolicyMirror, decider: EventDecider,
                 health: Health, stall_s: float) -> None:
        self.handlers = handlers
        self.mirror = mirror
        self.decider = decider
        self.health = health
        self.stall_s = stall_s

    def check(self) -> tuple[bool, str]:
        decider, mirror = self.decider, self.mirror
        if decider.failure is not None:
            return False, f"the decider's loop stopped: {describe(decider.failure, 300)}"
        task = mirror.task
        if task is not None and task.done():
            return False, "the policy mirror stopped"
        if not self.handlers.ready.is_set():
            return False, "restoring policies: the policy mirror has not caught up"
        if not decider.running:
            return False, "the decider's loop is not running"
        quiet = time.monotonic() - decider.beat
        if quiet > self.stall_s:
            return False, f"the decider's loop has not turned for {quiet:.0f} s"
        return True, ""

    def update(self) -> tuple[bool, str]:
        ready, reason = self.check()
        self.health.set(ready, reason)
        return ready, reason

    def failed(self, exc: BaseException) -> None:
        self.health.set(False, f"the decider's loop stopped: {describe(exc, 300)}")
        exit_unless_stopped("the decider's loop stopped")


class _HealthService(mode.Service):
    def __init__(self, readiness: Readiness, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.readiness = readiness

    async def on_start(self) -> None:
        self.readiness.health.start_heartbeat()
        self.add_future(self._watch())

    async def _watch(self) -> None:
        while not self.should_stop:
            self.readiness.update()
            await self.sleep(0.5)

    async def on_stop(self) -> None:
        if self.readiness.health.is_ready:  # a failure keeps its reason
            self.readiness.health.set(False, "stopped")


def _broker_url(kafka: KafkaConnection) -> str:
    return ";".join(f"kafka://{server.strip()}" for server in kafka.bootstrap_servers.split(","))


def _credentials(kafka: KafkaConnection) -> Any:
    context = ssl_context(kafka)
    if "SASL" in kafka.security_protocol.upper():
        return faust.SASLCredentials(username=kafka.sasl_username, password=kafka.sasl_password,
                                     mechanism=kafka.sasl_mechanism.upper(),
                                     ssl_context=context)
    if context is not None:
        return faust.SSLCredentials(context)
    return None


def build_app(settings: StreamSettings, kafka: KafkaConnection,
              ring: Keyring | KeyFile[Keyring] | None = None) -> tuple[faust.App, Handlers]:
    """The worker; `ring` signs what it writes and checks who wrote what it reads (without
    one, nothing is signed and unsigned records are believed: STREAMS_ACCEPT_UNSIGNED; a
    KeyFile is followed as it is rotated)."""
    (settings.data_dir / settings.app_id).mkdir(parents=True, exist_ok=True)
    app = faust.App(
        settings.app_id,
        broker=_broker_url(kafka),
        broker_credentials=_credentials(kafka),
        store="memory://",
        autodiscover=False,
        datadir=str(settings.data_dir / settings.app_id),
        **web_options(settings),  # 127.0.0.1, TLS when set, none of Faust's own views
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        producer_compression_type="lz4",
        # aiokafka keeps one batch in flight per partition: small batches cap the rate at
        # batch size / round trip. Large batches and a short linger keep it flowing.
        producer_max_batch_size=1 << 20,
        producer_linger=0.002,
        topic_allow_declare=False,  # topics come from schemas.topics via `procwarden stack up`
        topic_disable_leader=True,
        broker_commit_every=1000,
        broker_commit_interval=1.0,
    )
    session = DecisionSession(settings=settings.engine())
    sign = (RecordSigner(ring, kafka.topic(VERDICTS.name), settings.verdict_ttl_s)
            if ring is not None else None)
    provenance = Provenance(ring, accept_unsigned=settings.accept_unsigned)
    publisher = FaustPublisher(app, sign)
    node = f"streams@{socket.gethostname()}"
    limits = DlqLimits(value_bytes=settings.dlq_value_bytes)
    output = KafkaOutput(kafka, node=node, limits=limits, sign=sign)
    handlers = Handlers(session=session, publisher=publisher, decisions=output, kafka=kafka,
                        node=node, unknown_workload_wait_s=settings.unknown_workload_wait_s,
                        unknown_workload_max_events=settings.unknown_workload_max_events,
                        unknown_workload_max_per_workload=(
                            settings.unknown_workload_max_per_workload),
                        dlq_limits=limits, provenance=provenance)
    # `nodes` exists from the start, published or not; the mirror brings newer versions.
    handlers.published["nodes"] = session.policies["nodes"]
    mirror = PolicyMirror(kafka, on_policy=handlers.on_policy, on_workload=handlers.on_workload,
                          on_process_state=handlers.on_process_state,
                          dead_letter=handlers.dead_letter_entry, limits=limits,
                          provenance=provenance, known_workload=session.workloads.get)
    app.add_dependency(_MirrorService(mirror, handlers, loop=app.loop))
    health_file = os.environ.get(HEALTH_FILE_ENV)
    health = Health("streams", Path(health_file) if health_file else None)

    def topic(name: str) -> Any:
        return app.topic(kafka.topic(name), key_type=bytes, value_type=bytes,
                         key_serializer="raw", value_serializer="raw", internal=False)

    def agent(channel: Any, handler: Any, name: str) -> None:
        async def process(stream: faust.StreamT[Any]) -> None:
            async for event in stream.events():
                m = event.message
                await handler(RawMessage(m.topic, m.partition, m.offset, m.key, m.value,
                                         m.headers))
        process.__name__ = process.__qualname__ = name
        app.agent(channel, name=f"procwarden.{name}")(process)

    decider = EventDecider(
        kafka, [kafka.topic(EXEC.name), kafka.topic(FILE.name)], f"{settings.app_id}-events",
        handlers.on_event, handlers.end_batch, output, handlers.ready, tick=handlers.tick,
        floors=handlers.waiting_floors, revoked=handlers.drop_partitions, loop=app.loop)
    readiness = Readiness(handlers, mirror, decider, health, settings.ready_stall_s)
    decider.on_failure = readiness.failed
    install_routes(app, PolicyApi(handlers), settings, readiness=readiness.update)
    app.add_dependency(decider)
    app.add_dependency(_HealthService(readiness, loop=app.loop))
    agent(topic(WORKLOADS.name), handlers.on_workload_announcement, "announce_workloads")
    agent(topic(POLICY_UPDATES.name), handlers.on_update, "write_policies")
    return app, handlers


def wait_for_topics(kafka: KafkaConnection, timeout: float = 60.0) -> None:
    """Faust subscribes only to the input topics the broker lists when it starts, and a broker
    that has just created them may not list them yet: wait until it does."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(dict(kafka.confluent_config()))
    wanted = {kafka.topic(t.name) for t in (EXEC, FILE, POLICY_UPDATES, WORKLOADS)}
    deadline = time.monotonic() + timeout
    while True:
        try:
            listed = admin.list_topics(timeout=5).topics
        except Exception:  # the broker is not answering yet
            listed = {}
        missing = sorted(t for t in wanted if not listed.get(t) or not listed[t].partitions)
        if not missing:
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"procwarden streams: the topics {', '.join(missing)} do not exist "
                             "(run `procwarden stack up`, or create them)")
        log.info("waiting for the topics %s", ", ".join(missing))
        time.sleep(0.5)


def run_worker(settings: StreamSettings, kafka: KafkaConnection,
               ring: Keyring | KeyFile[Keyring] | None = None) -> None:
    """Run one stream worker until SIGTERM/SIGINT (a clean stop commits what was decided)."""
    wait_for_topics(kafka)
    app, _ = build_app(settings, kafka, ring)
    worker = faust.Worker(app, loglevel=settings.log_level.upper())
    # At WARNING and above Faust shows a terminal spinner fed by every log record, and sets the
    # root logger to DEBUG for it: each aiokafka debug call then builds a record (a fifth of the
    # worker's time). A worker logs to a file or journal; no spinner.
    worker.spinner = None
    worker.execute_from_commandline()
