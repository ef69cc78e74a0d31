"""The SIEM forwarder: security events from Kafka to syslog and webhooks, nothing dropped.

A batch is filtered (minimum level, groups), formatted per destination, sent to every
destination, and only then are its offsets committed. A destination that fails is retried with
backoff while the partitions are paused: a slow or absent SIEM makes the forwarder lag (visible
in `procwarden_siem_lag_messages`), never lose incidents.

No message can stop it: each one is decoded, and each incident rendered, inside the shared
`MessageGuard` (stage `siem`); what fails becomes a bounded dead letter on `procwarden.dlq`.
Every rendered incident is at most its destination's `max_bytes` (long fields cut first, with a
marker, counted in `procwarden_siem_truncated_total`), so a receiver never cuts one in the
middle and misreads the ones after it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

from confluent_kafka import Consumer, Message
from prometheus_client import Counter, Gauge

from schemas import Incident, Level, decode_envelope
from schemas.connections import KafkaConnection
from schemas.topics import SECURITY_EVENTS
from sinks.dead_letters import DeadLetters
from sinks.siem.aggregation import aggregate
from sinks.siem.formats import MIN_MAX_BYTES, bounded, cef, incident_json, syslog_5424
from sinks.siem.transports import Transport
from transport.batch_loop import BatchLoop
from transport.guard import DlqLimits, MessageGuard, Refused
from transport.health import Health

__all__ = ["Destination", "SiemForwarder"]

log = logging.getLogger("procwarden.sinks.siem")

SENT = Counter("procwarden_siem_sent_total", "Incidents sent", ["destination"])
FAILED = Counter("procwarden_siem_failures_total", "Failed sends (retried)", ["destination"])
SKIPPED = Counter("procwarden_siem_filtered_total", "Incidents left out by the filters")
LAG = Gauge("procwarden_siem_lag_messages", "Security events not forwarded yet")
FOLDED = Counter("procwarden_siem_aggregated_total", "Incidents folded into an earlier one")
TRUNCATED = Counter("procwarden_siem_truncated_total",
                    "Incidents cut to their destination's max_bytes", ["destination"])

STAGE = "siem"

_RANK = {Level.INFO: 0, Level.WARNING: 1, Level.CRITICAL: 2}


@dataclass
class Destination:
    name: str
    transport: Transport
    format: str = "json"  # json | cef
    syslog: bool = True  # wrap in RFC 5424 (webhooks send the bare JSON)
    hostname: str = "procwarden"
    # The largest incident sent (RFC 5424 MSG and framing excluded): rsyslog's maxMessageSize
    # for TCP/TLS; a UDP destination wants less (a datagram is cut, not refused).
    max_bytes: int = 64 * 1024

    def __post_init__(self) -> None:
        if self.max_bytes < MIN_MAX_BYTES:
            raise ValueError(f"{self.name}: max_bytes must be at least {MIN_MAX_BYTES}")

    def render(self, incident: Incident) -> bytes:
        line = self._render(incident)
        if len(line) <= self.max_bytes:
            return line
        TRUNCATED.labels(self.name).inc()
        return bounded(self._render, incident, self.max_bytes)

    def _render(self, incident: Incident) -> bytes:
        body: bytes | str = incident_json(incident) if self.format == "json" else cef(incident)
        if self.syslog:
            return syslog_5424(incident, body, hostname=self.hostname)
        return body if isinstance(body, bytes) else body.encode()


@dataclass
class SiemForwarder:
    kafka: KafkaConnection
    destinations: Sequence[Destination]
    group_id: str = "procwarden-siem"
    min_level: Level = Level.WARNING
    groups: frozenset[str] = frozenset()  # empty: every group
    batch_size: int = 1000
    batch_seconds: float = 0.5
    max_backoff: float = 30.0
    aggregate_seconds: float = 0.0  # > 0: fold repeats arriving within this window
    dlq_limits: DlqLimits = field(default_factory=DlqLimits)
    # ready while incidents are read and every destination takes them
    health: Health = field(default_factory=lambda: Health(STAGE))
    forwarded: int = 0
    _consumer: Consumer = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._consumer = Consumer({
            **self.kafka.confluent_config(), "group.id": self.group_id,
            "enable.auto.commit": False, "auto.offset.reset": "earliest",
            "max.poll.interval.ms": 600_000})
        self._consumer.subscribe([self.kafka.topic(SECURITY_EVENTS.name)])
        self.dead_letters = DeadLetters(self.kafka, STAGE)
        self.guard = MessageGuard(STAGE, self.dead_letters, limits=self.dlq_limits)
        # With aggregation on, a batch is everything that arrives within the window after its
        # first message, so repeats fold together (the offsets are committed after sending).
        self.loop = BatchLoop(self._consumer, self.guard, LAG, batch_size=self.batch_size,
                              batch_seconds=self.batch_seconds, max_backoff=self.max_backoff,
                              linger_s=self.aggregate_seconds)

    def wanted(self, incident: Incident) -> bool:
        return (_RANK[incident.level] >= _RANK[self.min_level]
                and (not self.groups or incident.group in self.groups))

    def run(self, should_stop: Callable[[], bool] = lambda: False) -> None:
        self.health.needs(*(d.name for d in self.destinations))
        for destination in self.destinations:
            self.health.part(destination.name)
        self.health.start_heartbeat()
        self.loop.run(self._forward, should_stop)

    def close(self) -> None:
        self.health.stop()
        self._consumer.close()
        self.dead_letters.flush(10)
        for destination in self.destinations:
            destination.transport.close()

    def _forward(self, batch: Sequence[Message], should_stop: Callable[[], bool]) -> bool:
        kept: list[tuple[Incident, Message]] = []
        for msg in batch:
            incident = self.loop.guarded(msg, partial(self._incident, msg))
            if incident is None:
                continue
            if self.wanted(incident):
                kept.append((incident, msg))
            else:
                SKIPPED.inc()
        if self.aggregate_seconds > 0:
            # A folded incident keeps the first one's id: its message stands for the fold.
            first: dict[str, Message] = {}
            for incident, msg in kept:
                first.setdefault(incident.id, msg)
            folded = aggregate(i for i, _ in kept)
            FOLDED.inc(len(kept) - len(folded))
            kept = [(i, first[i.id]) for i in folded]
        for destination in self.destinations:
            lines = [line for incident, msg in kept
                     if (line := self.loop.guarded(msg, partial(destination.render, incident)))
                     is not None]
            if lines and not self._send(destination, lines, should_stop):
                return False
        self.dead_letters.flush(10)
        self.forwarded += len(kept)
        return True

    def _incident(self, msg: Message) -> Incident:
        env = decode_envelope(msg.value() or b"")
        if not isinstance(env.payload, Incident):
            raise Refused(f"{env.kind.value} does not belong on {msg.topic()}")
        return env.payload

    def _send(self, destination: Destination, lines: list[bytes],
              should_stop: Callable[[], bool]) -> bool:
        def failed(exc: BaseException, delay: float) -> None:
            FAILED.labels(destination.name).inc()
            self.health.part(destination.name, f"sending failed ({exc}), retrying"[:300])
            log.warning("%s: sending %d incidents failed (%s); retrying in %.1f s",
                        destination.name, len(lines), exc, delay)

        def send() -> None:
            destination.transport.send(lines)
            SENT.labels(destination.name).inc(len(lines))
        return self.loop.retry(send, (OSError,), should_stop, failed,
                               on_recovery=lambda: self.health.part(destination.name))
