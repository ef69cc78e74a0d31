"""The collector's publisher: a message Kafka refuses is dropped and counted, never raised into
the sensing loop, and a spooled one it refuses at replay never stops a start."""

from __future__ import annotations

import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException
from prometheus_client import REGISTRY

from collectors.publishing.publisher import Publisher
from collectors.publishing.spool import Spool
from schemas.connections import KafkaConnection
from transport.signing import Keyring, Signer, Verifier

TOPIC = "t.procwarden.exec"
OURS = KafkaConnection(bootstrap_servers="127.0.0.1:9", topic_prefix="unit.")
EXEC_OURS = OURS.topic("procwarden.exec")  # a topic this collector publishes to


@dataclass
class FakeProducer:
    """What the publisher asks of confluent-kafka's Producer; `refuse` says how produce fails."""

    refuse: BaseException | None = None
    sent: list[tuple[str, bytes, bytes]] = field(default_factory=list)
    headers: list[Any] = field(default_factory=list)  # of each record sent

    def produce(self, topic: str, value: bytes, key: bytes, headers: Any = None) -> None:
        if self.refuse is not None:
            raise self.refuse
        self.sent.append((topic, key, value))
        self.headers.append(headers)

    def poll(self, timeout: float = 0) -> int:
        return 0

    def flush(self, timeout: float = 0) -> int:
        return 0

    def __len__(self) -> int:
        return 0

    def list_topics(self, timeout: float = 0) -> Any:
        meta = type("Meta", (), {"error": None})()
        return type("Topics", (), {"topics": {TOPIC: meta}})()

    def purge(self, **kw: bool) -> None:
        pass


def _publisher(tmp_path: Path, fake: FakeProducer, *, kafka: KafkaConnection | None = None,
               **kw: Any) -> tuple[Publisher, list[str]]:
    lost: list[str] = []
    pub = Publisher(kafka or KafkaConnection(bootstrap_servers="127.0.0.1:9"),
                    tmp_path / "spool", 2**20, check_every_s=0, lose=lost.append, **kw)
    pub.producer = fake  # type: ignore[assignment]
    return pub, lost


def _dropped(reason: str) -> float:
    return REGISTRY.get_sample_value("procwarden_collector_unpublishable_total",
                                     {"topic": "exec", "reason": reason}) or 0.0


REFUSALS = {
    "too large": KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE)),
    "invalid arg": KafkaException(KafkaError(KafkaError._INVALID_ARG)),
    "value error": ValueError("bad"),
    "type error": TypeError("bad"),
}


@pytest.mark.parametrize("refusal", REFUSALS.values(), ids=REFUSALS.keys())
def test_a_refused_message_is_dropped_and_counted_not_raised(
        tmp_path: Path, refusal: BaseException) -> None:
    fake = FakeProducer(refuse=refusal)
    pub, lost = _publisher(tmp_path, fake)
    reason = (refusal.args[0].name() if isinstance(refusal, KafkaException)
              else type(refusal).__name__)
    before = _dropped(reason)
    assert pub.send(TOPIC, b"w", b"v") is True  # not the caller's spool_full
    assert _dropped(reason) == before + 1
    assert lost == [f"unpublishable:{reason}"] and pub.lost[f"unpublishable:{reason}"] == 1
    fake.refuse = None
    assert pub.send(TOPIC, b"w", b"next")  # the next one goes out
    assert fake.sent == [(TOPIC, b"w", b"next")]
    pub.close()


def test_a_message_over_the_limit_is_never_produced_nor_spooled(tmp_path: Path) -> None:
    fake = FakeProducer()
    pub, lost = _publisher(tmp_path, fake, max_message_bytes=10_000)
    before = _dropped("too_large")
    assert pub.send(TOPIC, b"w", b"x" * 20_000)
    pub.spooling = True  # Kafka away: not spooled either
    assert pub.send(TOPIC, b"w", b"x" * 20_000)
    assert _dropped("too_large") == before + 2 and lost == ["unpublishable:too_large"] * 2
    assert fake.sent == [] and not pub.spool
    pub.close()


def test_a_queue_that_stays_full_spools_in_order(tmp_path: Path) -> None:
    fake = FakeProducer(refuse=BufferError())
    pub, lost = _publisher(tmp_path, fake)
    assert pub.send(TOPIC, b"w", b"1") and pub.spooling
    assert pub.send(TOPIC, b"w", b"2")
    fake.refuse = None
    pub.poll()  # Kafka takes messages again: the spool goes out first
    assert [v for _, _, v in fake.sent] == [b"1", b"2"] and not lost
    pub.close()


def test_a_spooled_record_refused_at_replay_is_dropped_and_the_rest_goes(
        tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.append(TOPIC, b"w", b"x" * (2 * 2**20))  # spooled whole by an older collector
    spool.append(TOPIC, b"w", b"refused by the client")
    spool.append(TOPIC, b"w", b"after")
    spool.close()
    fake = FakeProducer()
    pub, lost = _publisher(tmp_path, fake)
    assert pub.spooling
    produce = fake.produce

    def refuse_one(topic: str, value: bytes, key: bytes, headers: Any = None) -> None:
        if value == b"refused by the client":
            raise KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))
        produce(topic, value, key, headers)

    fake.produce = refuse_one  # type: ignore[method-assign]
    pub.poll()
    assert [v for _, _, v in fake.sent] == [b"after"]
    assert sorted(lost) == ["unpublishable:MSG_SIZE_TOO_LARGE", "unpublishable:too_large"]
    assert not pub.spool and not pub.spool.segments()
    pub.poll()
    assert not pub.spooling
    pub.close()


def test_a_delivery_refused_for_good_is_counted(tmp_path: Path) -> None:
    pub, lost = _publisher(tmp_path, FakeProducer())
    msg = type("Msg", (), {"topic": lambda self: TOPIC, "key": lambda self: b"w",
                           "value": lambda self: b"v"})()
    pub._delivered(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE), msg)
    assert lost == ["unpublishable:MSG_SIZE_TOO_LARGE"]
    pub.close()


def test_the_spool_it_writes_is_private(tmp_path: Path) -> None:
    pub, _ = _publisher(tmp_path, FakeProducer())
    pub.spooling = True
    assert pub.send(TOPIC, b"w", b"--password=x")
    pub.close()
    (segment,) = pub.spool.segments()
    assert stat.S_IMODE(segment.stat().st_mode) == 0o600


def _topics(*names: str) -> Any:
    meta = type("Meta", (), {"error": None})()
    return type("Topics", (), {"topics": dict.fromkeys(names, meta)})()


def _spooled(tmp_path: Path, *records: tuple[str, bytes]) -> None:
    spool = Spool(tmp_path / "spool")
    for topic, value in records:
        spool.append(topic, b"w", value)
    spool.close()


def test_a_spooled_record_for_a_topic_that_will_never_exist_is_dropped_and_the_rest_goes(
        tmp_path: Path) -> None:
    damaged = "procwarden.ex\ufffdc"  # a name damaged on disk; no collector publishes to it
    _spooled(tmp_path, (damaged, b"damaged"), (EXEC_OURS, b"after"))
    fake = FakeProducer()
    fake.list_topics = lambda timeout=0: _topics(EXEC_OURS)  # type: ignore[method-assign]
    pub, lost = _publisher(tmp_path, fake, kafka=OURS)
    before = REGISTRY.get_sample_value("procwarden_collector_unpublishable_total",
                                       {"topic": "other", "reason": "unknown_topic"}) or 0.0
    pub.poll()
    assert [v for _, _, v in fake.sent] == [b"after"]  # it stalled here, for good
    assert lost == ["unpublishable:unknown_topic"]
    assert REGISTRY.get_sample_value("procwarden_collector_unpublishable_total", {
        "topic": "other", "reason": "unknown_topic"}) == before + 1  # one label, any name
    assert not pub.spool
    pub.poll()
    assert not pub.spooling
    pub.close()


def test_a_spooled_record_for_a_missing_topic_of_ours_waits_until_it_exists(
        tmp_path: Path) -> None:
    _spooled(tmp_path, (EXEC_OURS, b"1"), (EXEC_OURS, b"2"))
    fake = FakeProducer()
    exists: list[str] = []
    fake.list_topics = lambda timeout=0: _topics(*exists)  # type: ignore[method-assign]
    pub, lost = _publisher(tmp_path, fake, kafka=OURS)
    pub.poll()
    pub.poll()
    assert fake.sent == [] and pub.spool and not lost  # not created yet: kept, not dropped
    exists.append(EXEC_OURS)
    pub.poll()
    assert [v for _, _, v in fake.sent] == [b"1", b"2"] and not lost and not pub.spool
    pub.close()


def test_a_topic_of_ours_gone_during_replay_is_retried_not_dropped(tmp_path: Path) -> None:
    _spooled(tmp_path, (EXEC_OURS, b"1"), (EXEC_OURS, b"2"))
    fake = FakeProducer()
    fake.list_topics = lambda timeout=0: _topics(EXEC_OURS)  # type: ignore[method-assign]
    pub, lost = _publisher(tmp_path, fake, kafka=OURS)
    produce = fake.produce
    refusals = [KafkaException(KafkaError(KafkaError._UNKNOWN_TOPIC))]

    def gone_once(topic: str, value: bytes, key: bytes, headers: Any = None) -> None:
        if value == b"2" and refusals:
            raise refusals.pop()
        produce(topic, value, key, headers)

    fake.produce = gone_once  # type: ignore[method-assign]
    pub.poll()  # deleted (or re-created) between the metadata and the produce: transient
    assert not lost and pub.spool
    pub.poll()
    # the segment goes again whole (a repeat is harmless: idempotent ids), nothing lost
    assert [v for _, _, v in fake.sent] == [b"1", b"1", b"2"] and not lost and not pub.spool
    pub.close()


def test_every_record_is_signed_as_this_node_spooled_ones_at_replay(tmp_path: Path) -> None:
    """The stream app believes only what a node signed (issue 22): a record produced at once
    and one spooled during an outage (the spool keeps no headers) both go out signed."""
    ring = Keyring.generate()
    keys = ring.node_keys("node-a")
    _spooled(tmp_path, (TOPIC, b"spooled"))
    fake = FakeProducer()
    pub, _ = _publisher(tmp_path, fake, signer=Signer.for_node(keys))
    pub.poll()  # the replay
    pub.poll()  # the spool is empty: straight to Kafka again
    assert not pub.spooling
    assert pub.send(TOPIC, b"w", b"direct")
    verifier = Verifier.for_streams(ring)
    for (topic, key, value), headers in zip(fake.sent, fake.headers, strict=True):
        assert verifier.verify(topic, key, value, headers, now=0).node == "node-a"
    assert [v for _, _, v in fake.sent] == [b"spooled", b"direct"]
