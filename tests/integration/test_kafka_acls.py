"""The local Kafka's identities and ACLs, attacked on the real stack: what a collector's
credentials cannot do, what no or wrong credentials get, and that no plaintext door is left."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
)

from procwarden.stack import Stack
from procwarden.stack.acls import (
    Groups,
    acl_set,
    add_node,
    apply_acls,
    collector_acls,
    ensure_users,
    remove_node,
    retire_users,
)
from procwarden.stack.credentials import SIEM, SINK_CLICKHOUSE, STREAMS, node_principal
from procwarden.stack.topics import ensure_topics
from procwarden.testbed.containers import run_container
from schemas.connections import KafkaConnection
from schemas.topics import ALL_TOPICS, EXEC, POLICY, PROCESS_STATE, VERDICTS, WORKLOADS
from tests.integration.streamkit import PREFIXES, ROOT, WORKDIR, Pipeline, running_collector


@dataclass
class Deployment:
    """A private prefix with the roles' ACLs on it, and two collector nodes of its own."""

    stack: Stack
    prefix: str
    nodes: dict[str, KafkaConnection]  # node name -> its connection (on the prefix)
    app_id: str

    def node_env(self, node: str) -> dict[str, str]:
        conn = self.nodes[node]
        return {"PROCWARDEN_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                "PROCWARDEN_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
                "PROCWARDEN_KAFKA_SASL_USERNAME": conn.sasl_username,
                "PROCWARDEN_KAFKA_SASL_PASSWORD": conn.sasl_password,
                "PROCWARDEN_KAFKA_SASL_PASSWORD_FILE": "",
                "PROCWARDEN_KAFKA_SSL_CA_LOCATION": conn.ssl_ca_location}


@pytest.fixture(scope="module")
def deployment(stack: Stack) -> Iterator[Deployment]:
    if not stack.kafka.secure:
        pytest.fail("the stack runs PROCWARDEN_STACK_INSECURE_PLAINTEXT: these tests need its "
                    "default, authenticated Kafka")
    admin = stack.kafka_connection
    prefix = f"t{uuid.uuid4().hex[:8]}."
    PREFIXES.append(prefix)
    ensure_topics(replace(admin, topic_prefix=prefix), ALL_TOPICS)
    tag = uuid.uuid4().hex[:6]
    names = [f"acl-a-{tag}", f"acl-b-{tag}"]
    passwords = {node_principal(n): secrets.token_urlsafe(24) for n in names}
    ensure_users(admin, passwords)
    app_id = f"streams-{prefix.rstrip('.')}"
    acls = acl_set(prefix, names, Groups(streams_app_id=app_id))
    apply_acls(admin, acls)
    nodes = {n: replace(admin, sasl_username=node_principal(n), sasl_password_file="",
                        sasl_password=passwords[node_principal(n)], topic_prefix=prefix)
             for n in names}
    yield Deployment(stack, prefix, nodes, app_id)
    client = AdminClient(dict(admin.confluent_config()))
    for future in client.delete_acls([AclBindingFilter(
            ResourceType.ANY, None, ResourcePatternType.ANY,  # type: ignore[arg-type]
            f"User:{user}", None, AclOperation.ANY,  # type: ignore[arg-type]
            AclPermissionType.ANY) for user in passwords]).values():
        future.result(15)
    retire_users(admin, passwords)


def produce(conn: KafkaConnection, topic: str, partition: int = -1,
            **extra: Any) -> tuple[KafkaError | None, list[KafkaError]]:
    """One record; the delivery error (None once delivered) and what the client reported."""
    errors: list[KafkaError] = []
    results: list[KafkaError | None] = []
    producer = Producer({**conn.confluent_config(), "message.timeout.ms": 8000,
                         "error_cb": errors.append, **extra})
    producer.produce(conn.topic(topic), key=b"k", value=b"{}", partition=partition,
                     on_delivery=lambda err, msg: results.append(err))
    producer.flush(15)
    assert results, "no delivery report within the timeout"
    return results[0], errors


def test_a_collector_cannot_produce_what_collectors_obey(deployment: Deployment) -> None:
    node = next(iter(deployment.nodes.values()))
    err, _ = produce(node, EXEC.name, **{"enable.idempotence": True})
    assert err is None  # its own events go out
    for topic in (VERDICTS.name, POLICY.name, PROCESS_STATE.name):
        err, _ = produce(node, topic, **{"enable.idempotence": True})
        assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, topic


def test_a_node_reads_only_the_verdicts(deployment: Deployment) -> None:
    name, node = next(iter(deployment.nodes.items()))
    admin = replace(deployment.stack.kafka_connection, topic_prefix=deployment.prefix)
    for topic in (VERDICTS.name, EXEC.name, WORKLOADS.name, POLICY.name):
        assert produce(admin, topic, partition=0)[0] is None  # something there to read

    def read(topic: str, group: str) -> tuple[int, KafkaError | None]:
        """Records read and the first error, from the start of partition 0."""
        consumer = Consumer({**node.confluent_config(), "group.id": group,
                             "enable.auto.commit": False, "auto.offset.reset": "earliest"})
        got, first = 0, None
        try:
            consumer.assign([TopicPartition(node.topic(topic), 0, 0)])
            for _ in range(40):
                msg = consumer.poll(0.25)
                error = None if msg is None else msg.error()
                if msg is not None and error is None:
                    got += 1
                elif error is not None and error.code() != KafkaError._PARTITION_EOF:
                    first = first or error
            return got, first
        finally:
            consumer.close()

    own_group = f"procwarden-collector-{name}"
    assert read(VERDICTS.name, own_group) == (1, None)
    for topic in (EXEC.name, WORKLOADS.name):  # other nodes' events: it may write, not read
        got, err = read(topic, own_group)
        assert got == 0 and err is not None
        assert err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, topic
    # A topic it holds no ACL on is not even in its metadata: nothing read, whatever it says.
    assert read(POLICY.name, own_group)[0] == 0
    own = Consumer({**node.confluent_config(), "group.id": own_group})
    try:
        own.committed([TopicPartition(node.topic(VERDICTS.name), 0)], timeout=10)
    finally:
        own.close()
    other = next(n for n in deployment.nodes if n != name)
    consumer = Consumer({**node.confluent_config(), "group.id": f"procwarden-collector-{other}",
                         "enable.auto.commit": False})
    try:  # another node's group (its committed verdict offsets) is not this node's to use:
        # its own group answers at once, this one never (librdkafka retries the denied
        # FindCoordinator until the timeout, or says GROUP_AUTHORIZATION_FAILED)
        with pytest.raises(KafkaException, match=r"GROUP_AUTHORIZATION_FAILED|_TIMED_OUT"):
            consumer.committed([TopicPartition(node.topic(VERDICTS.name), 0)], timeout=10)
    finally:
        consumer.close()


def test_no_or_wrong_credentials_are_refused(deployment: Deployment) -> None:
    node = next(iter(deployment.nodes.values()))
    err, errors = produce(replace(node, sasl_password="wrong" + node.sasl_password), EXEC.name)
    assert err is not None
    assert any(e.code() == KafkaError._AUTHENTICATION for e in errors), errors
    err, errors = produce(replace(node, sasl_username=f"nobody-{uuid.uuid4().hex[:6]}"),
                          EXEC.name)
    assert err is not None
    assert any(e.code() == KafkaError._AUTHENTICATION for e in errors), errors
    # TLS but no SASL, and no TLS at all: nothing is delivered.
    tls_only = KafkaConnection(bootstrap_servers=node.bootstrap_servers, security_protocol="SSL",
                               ssl_ca_location=node.ssl_ca_location, topic_prefix=node.topic_prefix)
    plain = KafkaConnection(bootstrap_servers=node.bootstrap_servers,
                            topic_prefix=node.topic_prefix)
    for conn in (tls_only, plain):
        err, _ = produce(conn, EXEC.name)
        assert err is not None, conn.security_protocol


def test_a_removed_node_is_locked_out_and_can_be_added_back(deployment: Deployment) -> None:
    admin = deployment.stack.kafka_connection
    prefix = deployment.prefix
    name = f"acl-r-{uuid.uuid4().hex[:6]}"
    first, second = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    conn = replace(admin, sasl_username=node_principal(name), sasl_password_file="",
                   sasl_password=first, topic_prefix=prefix)
    try:
        add_node(admin, name, first, prefix)
        assert produce(conn, EXEC.name)[0] is None
        assert remove_node(admin, name) == len(collector_acls(name, prefix))
        err, errors = produce(conn, EXEC.name)
        assert err is not None
        assert any(e.code() == KafkaError._AUTHENTICATION for e in errors), errors
        add_node(admin, name, second, prefix)
        assert produce(replace(conn, sasl_password=second), EXEC.name)[0] is None
    finally:
        remove_node(admin, name)


def _kafka_answers_plaintext(port: int) -> bool:
    """Whether a plaintext ApiVersions request (v0, correlation id 7) gets a Kafka answer."""
    client = b"probe"
    body = (18).to_bytes(2, "big") + (0).to_bytes(2, "big") + (7).to_bytes(4, "big") + \
        len(client).to_bytes(2, "big") + client
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(len(body).to_bytes(4, "big") + body)
            sock.settimeout(5)
            answer = sock.recv(64)
    except OSError:
        return False
    return len(answer) >= 8 and answer[4:8] == (7).to_bytes(4, "big")


def test_no_plaintext_listener_is_left(deployment: Deployment) -> None:
    kafka = deployment.stack.kafka
    assert not _kafka_answers_plaintext(kafka.port)
    assert not _kafka_answers_plaintext(kafka.controller_port)
    # The controller port takes only the broker's own certificate (its own CA): a client with
    # the clients' CA and no certificate gets no metadata there.
    admin = AdminClient({"bootstrap.servers": f"127.0.0.1:{kafka.controller_port}",
                         "security.protocol": "SSL",
                         "ssl.ca.location": str(kafka.credentials.truststore(controller=True)),
                         "socket.timeout.ms": 3000})
    with pytest.raises(KafkaException):
        admin.list_topics(timeout=5)
    props = (kafka.home / "server.properties").read_text()
    assert "PLAINTEXT" not in props and "allow.everyone.if.no.acl.found=false" in props


def test_the_pipeline_runs_under_the_roles_own_identities(deployment: Deployment,
                                                          tmp_path: Path) -> None:
    """The real collector as its node and the real stream worker as `streams`, with nothing but
    the ACL set: an exec in a container comes back as its verdict."""
    from schemas import Decision
    from schemas.topics import verdict_partition

    name = next(iter(deployment.nodes))
    admin = replace(deployment.stack.kafka_connection, topic_prefix=deployment.prefix)
    pipe = Pipeline(admin, tmp_path, prefix=deployment.prefix)
    streams_env = deployment.stack.kafka.environment(STREAMS)
    del streams_env["PROCWARDEN_KAFKA_BOOTSTRAP_SERVERS"]
    pipe.start_worker(STREAMS_APP_ID=deployment.app_id, **streams_env)
    try:
        with running_collector(pipe, name, tmp_path, **deployment.node_env(name)) as log, \
                run_container(WORKDIR, "shop", namespace="acl") as shop:
            shop.exec("sleep", "1")
            _, msg = pipe.wait_for(
                VERDICTS.name, lambda e: isinstance(e.payload, Decision)
                and e.payload.workload_id == shop.id and e.payload.name == "sleep"
                and e.payload.pid != shop.init_pid,
                partitions=[verdict_partition(name, VERDICTS.partitions)], timeout=60)
            assert msg.key() == name.encode()
            assert "AUTHORIZATION_FAILED" not in log.read_text(errors="replace")
        assert "AUTHORIZATION_FAILED" not in pipe.logs()
    finally:
        pipe.stop_workers()


def _role(command: str, env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "procwarden.cli", command], cwd=ROOT,
                          env={**os.environ, **env, "STREAMS_DATA_DIR": str(tmp_path),
                               "STREAMS_WEB_PORT": "6999", "SIEM_WEBHOOK_URL": "http://127.0.0.1:9/"},
                          capture_output=True, text=True, timeout=90, check=False)


def test_a_role_missing_an_acl_says_which_and_exits(deployment: Deployment,
                                                    tmp_path: Path) -> None:
    """Before: the stream worker under an app id the ACLs do not name waited forever for a
    group coordinator it may not use, looking alive; the sink and the SIEM forwarder retried
    in a loop. Now each exits 1 at start, naming the group or topic and the principal."""
    kafka = deployment.stack.kafka
    prefix = {"PROCWARDEN_KAFKA_TOPIC_PREFIX": deployment.prefix}
    worker = _role("streams", {**kafka.environment(STREAMS), **prefix,
                               "STREAMS_APP_ID": "not-granted-app"}, tmp_path)
    assert worker.returncode == 1, worker.stderr[-2000:]
    assert "group not-granted-app: User:streams may not use it" in worker.stderr
    sink = _role("sink-clickhouse", {**kafka.environment(SINK_CLICKHOUSE), **prefix,
                                     "SINKS_GROUP_ID": "not-granted-sink"}, tmp_path)
    assert sink.returncode == 1, sink.stderr[-2000:]
    assert "group not-granted-sink: User:sink-clickhouse may not use it" in sink.stderr
    elsewhere = _role("siem", {**kafka.environment(SIEM),
                               "PROCWARDEN_KAFKA_TOPIC_PREFIX": "nothing-here."}, tmp_path)
    assert elsewhere.returncode == 1, elsewhere.stderr[-2000:]
    assert "topic nothing-here.procwarden.security-events: not visible to User:siem" in \
        elsewhere.stderr
