"""Fixtures on the real local stack: Kafka (KRaft) and ClickHouse started by procwarden itself.

The stack is brought up once per test session (or reused when it already runs) and stopped at
the end if this session started it. Each test gets its own topics and its own ClickHouse
database. A service that cannot be started is a test error, never a skip.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from procwarden.stack import Stack
from procwarden.stack.topics import delete_prefixed_topics
from procwarden.testbed.containers import remove_leftovers
from schemas.connections import ClickHouseConnection, KafkaConnection
from sinks.clickhouse.migrations import connect

ROOT = Path(__file__).resolve().parents[2]
TESTBED = ROOT / "var" / "testbed"  # the runc containers' image and bundles


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session", autouse=True)
def _no_leftover_containers() -> None:
    """A run killed mid-test (a CI timeout, a ^C) leaves stopped containers with mounted roots;
    they go before this run starts its own."""
    if shutil.which("runc") is not None:
        for gone in remove_leftovers(TESTBED):
            print(f"removed {gone}, left behind by an interrupted run")


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    stack = Stack()
    was_up = stack.status().up
    stack.up(say=lambda message: None)
    # Every role process a test starts inherits the stack's admin identity (topics under a
    # test's own prefix have no role ACLs); test_kafka_acls.py runs the roles' own identities.
    saved = {k: os.environ.get(k) for k in _KAFKA_ENV}
    os.environ.update(stack.kafka.environment())
    try:
        yield stack
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    _delete_test_topics(stack.kafka_connection)
    if not was_up:
        stack.down(say=lambda message: None)


_KAFKA_ENV = ("PROCWARDEN_KAFKA_BOOTSTRAP_SERVERS", "PROCWARDEN_KAFKA_SECURITY_PROTOCOL",
              "PROCWARDEN_KAFKA_SASL_MECHANISM", "PROCWARDEN_KAFKA_SASL_USERNAME",
              "PROCWARDEN_KAFKA_SASL_PASSWORD", "PROCWARDEN_KAFKA_SASL_PASSWORD_FILE",
              "PROCWARDEN_KAFKA_SSL_CA_LOCATION")


def _delete_test_topics(kafka: KafkaConnection) -> None:
    from tests.integration.streamkit import PREFIXES

    delete_prefixed_topics(kafka, PREFIXES)


@pytest.fixture
def host_decoy() -> Iterator[Path]:
    """A host file whose path a hostile workload points its own files at (a symlink followed
    from the host would read it): a passwd line and a UID_MIN no workload file has."""
    path = Path(f"/tmp/pw-decoy-{uuid.uuid4().hex[:10]}")
    path.write_text("hostonly:x:4242:4242:host:/:/bin/sh\nUID_MIN 7777\n")
    yield path
    path.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def kafka(stack: Stack) -> KafkaConnection:
    return stack.kafka_connection


@pytest.fixture
def topic_factory(kafka: KafkaConnection) -> Iterator[Callable[..., str]]:
    """Creates uniquely named topics for one test and deletes them afterwards."""
    admin = AdminClient(dict(kafka.confluent_config()))
    made: list[str] = []

    def make(partitions: int = 1, **config: str) -> str:
        name = f"test.{uuid.uuid4().hex[:12]}"
        admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1,
                                      config=config)])[name].result(30)
        made.append(name)
        return name

    yield make
    if made:
        for future in admin.delete_topics(made).values():
            future.result(30)


@pytest.fixture
def clickhouse_db(stack: Stack) -> Iterator[tuple[ClickHouseConnection, str]]:
    """A fresh ClickHouse database for one test, dropped afterwards."""
    conn = stack.clickhouse_connection
    db = f"test_{uuid.uuid4().hex[:12]}"
    client = connect(conn)
    client.execute(f"CREATE DATABASE {db}")
    yield conn, db
    client.execute(f"DROP DATABASE IF EXISTS {db}")
    client.disconnect()
