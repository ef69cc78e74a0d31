"""`procwarden stack up | down | status | reset`: the local stack as one thing."""

from __future__ import annotations

import shutil
from dataclasses import dataclass

from procwarden.stack.acls import Groups, acl_set, add_node, apply_acls, ensure_users, remove_node
from procwarden.stack.clickhouse import ClickHouseServer
from procwarden.stack.credentials import ADMIN, ROLE_PRINCIPALS, node_principal
from procwarden.stack.kafka import KafkaServer
from procwarden.stack.layout import ProgressFn, StackLayout, StackSettings
from procwarden.stack.processes import StackError
from procwarden.stack.topics import ensure_topics
from schemas.connections import ClickHouseConnection, KafkaConnection
from sinks.clickhouse.migrations import apply_migrations, connect

__all__ = ["Stack", "StackStatus"]


@dataclass(frozen=True)
class StackStatus:
    kafka_pid: int | None
    kafka_ready: bool
    clickhouse_pid: int | None
    clickhouse_ready: bool
    clickhouse_version: str

    @property
    def up(self) -> bool:
        return self.kafka_ready and self.clickhouse_ready

    def lines(self, stack: Stack) -> list[str]:
        def row(name: str, pid: int | None, ready: bool, where: str) -> str:
            state = "ready" if ready else ("starting or unhealthy" if pid else "stopped")
            return f"{name:11} {state:22} {('pid ' + str(pid)) if pid else '':10} {where}"
        return [
            row("kafka", self.kafka_pid, self.kafka_ready,
                stack.kafka.bootstrap + (" (SASL_SSL, SCRAM-SHA-512, ACLs)" if stack.kafka.secure
                                         else " (PLAINTEXT: insecure, development only)")),
            row("clickhouse", self.clickhouse_pid, self.clickhouse_ready,
                f"127.0.0.1:{stack.clickhouse.tcp_port} (http {stack.clickhouse.http_port}, "
                f"server {self.clickhouse_version})" if self.clickhouse_ready else
                f"127.0.0.1:{stack.clickhouse.tcp_port}"),
            f"{'state':11} {stack.layout.var}",
        ]


class Stack:
    def __init__(self, settings: StackSettings | None = None) -> None:
        self.settings = settings or StackSettings()
        self.layout = StackLayout.from_settings(self.settings)
        s = self.settings
        self.kafka = KafkaServer(self.layout, s.kafka_port, s.kafka_controller_port,
                                 s.kafka_heap_mb, secure=not s.insecure_plaintext)
        self.clickhouse = ClickHouseServer(self.layout, s.clickhouse_tcp_port,
                                           s.clickhouse_http_port, s.clickhouse_interserver_port)

    @property
    def kafka_connection(self) -> KafkaConnection:
        """The stack's own (admin, super user) connection."""
        return self.kafka.connection(ADMIN)

    def nodes(self) -> list[str]:
        """The collector nodes with credentials: the local one and every one added."""
        return sorted({self.settings.node, *self.kafka.credentials.nodes()})

    def ensure_identities(self, say: ProgressFn = print, prefix: str = "") -> None:
        """Every role's and node's SCRAM user and the ACL set (idempotent). Secure mode only."""
        if not self.kafka.secure:
            return
        c = self.kafka.credentials
        users = {p: c.password(p) for p in ROLE_PRINCIPALS if p != ADMIN}
        users |= {node_principal(n): c.password(node_principal(n)) for n in self.nodes()}
        made = ensure_users(self.kafka_connection, users)
        plan = apply_acls(self.kafka_connection, acl_set(prefix, self.nodes(), self.groups()))
        say(f"kafka identities: {len(made)} SCRAM user(s) made, {len(users) - len(made)} there; "
            f"ACLs: {len(plan.created)} created, {len(plan.present)} there"
            + (f", {len(plan.extra)} others on the cluster left alone" if plan.extra else ""))

    @staticmethod
    def groups() -> Groups:
        """The roles' consumer groups from their settings (what the ACLs must name)."""
        from sinks.settings import SiemSettings, SinkSettings
        from streams.settings import StreamSettings
        return Groups(streams_app_id=StreamSettings().app_id,
                      sink_clickhouse=SinkSettings().group_id, siem=SiemSettings().group_id)

    def add_node(self, node: str, say: ProgressFn = print) -> KafkaConnection:
        """A collector node's SCRAM user and ACLs on the running stack; its connection."""
        if not self.kafka.secure:
            raise StackError("the stack runs Kafka in plaintext (PROCWARDEN_STACK_INSECURE_"
                             "PLAINTEXT): it has no users or ACLs to add")
        principal = node_principal(node)
        plan = add_node(self.kafka_connection, node, self.kafka.credentials.password(principal),
                        self.kafka_connection.topic_prefix, )
        say(f"node {node}: user {principal}, {len(plan.created)} ACL(s) created, "
            f"{len(plan.present)} there; password in "
            f"{self.kafka.credentials.password_file(principal)}")
        return self.kafka.connection(principal)

    def remove_node(self, node: str, say: ProgressFn = print) -> None:
        """Revoke a collector node on the running stack: its ACLs deleted, its password
        replaced by one nobody knows, its password file removed (so no later `stack up`
        gives it ACLs again)."""
        if not self.kafka.secure:
            raise StackError("the stack runs Kafka in plaintext (PROCWARDEN_STACK_INSECURE_"
                             "PLAINTEXT): it has no users or ACLs to remove")
        principal = node_principal(node)
        deleted = remove_node(self.kafka_connection, node)
        self.kafka.credentials.password_file(principal).unlink(missing_ok=True)
        say(f"node {node}: {deleted} ACL(s) deleted, user {principal} locked out")

    @property
    def clickhouse_connection(self) -> ClickHouseConnection:
        return ClickHouseConnection(port=self.clickhouse.tcp_port)

    def up(self, say: ProgressFn = print) -> None:
        """Start what is not running, then create topics and apply the ClickHouse schema."""
        self.layout.var.mkdir(parents=True, exist_ok=True)
        started_kafka = self.kafka.start(say)
        if not started_kafka:
            say(f"kafka already running on {self.kafka.bootstrap}")
        if not self.clickhouse.start(say):
            say(f"clickhouse already running on 127.0.0.1:{self.clickhouse.tcp_port}")
        self.ensure_identities(say)
        report = ensure_topics(self.kafka_connection)
        say(f"topics: {len(report.created)} created, {len(report.existing)} already there"
            + (f", {len(report.grown)} given more partitions" if report.grown else ""))
        conn = self.clickhouse_connection
        client = connect(conn)
        try:
            applied = apply_migrations(client, conn.database)
        finally:
            client.disconnect()
        say(f"clickhouse schema: {len(applied)} migration(s) applied to {conn.database}"
            if applied else f"clickhouse schema up to date in {conn.database}")

    def down(self, say: ProgressFn = print) -> None:
        """Stop both servers (Kafka with a controlled shutdown). Data stays."""
        for name, server in (("kafka", self.kafka), ("clickhouse", self.clickhouse)):
            say(f"{name}: stopped" if server.stop() else f"{name}: was not running")

    def reset(self, say: ProgressFn = print) -> None:
        """Stop everything and delete all data, logs and state (the jar cache stays)."""
        self.down(say)
        shutil.rmtree(self.layout.var, ignore_errors=True)
        say(f"removed {self.layout.var}")

    def status(self) -> StackStatus:
        kafka_pid = self.kafka.process.pid()
        ch_pid = self.clickhouse.process.pid()
        ch_ready = ch_pid is not None and self.clickhouse.ready()
        return StackStatus(kafka_pid, kafka_pid is not None and self.kafka.ready(), ch_pid,
                           ch_ready, self.clickhouse.version() if ch_ready else "")

    def logs(self) -> dict[str, str]:
        return {"kafka": str(self.kafka.process.log_file),
                "clickhouse": str(self.clickhouse.home / "server.log"),
                "clickhouse errors": str(self.clickhouse.home / "server.err.log")}

