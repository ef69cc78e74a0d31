"""Where the local stack keeps its files, and its settings."""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from procwarden.stack.processes import StackError

__all__ = ["ProgressFn", "StackLayout", "StackSettings", "source_root"]

ProgressFn = Callable[[str], None]


def source_root() -> Path:
    """The procwarden source tree (the stack needs its deploy/ folder)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "deploy" / "kafka" / "pom.xml").exists():
        raise StackError(f"the local stack runs from a procwarden source tree; {root} has no "
                         "deploy/kafka/pom.xml")
    return root


class StackSettings(BaseSettings):
    """The local single-node stack. Every field reads `PROCWARDEN_STACK_<NAME>`."""

    model_config = SettingsConfigDict(env_prefix="PROCWARDEN_STACK_", extra="forbid")

    home: Path | None = Field(None, description="state folder (default: <source>/var)")
    kafka_port: int = Field(9092, ge=1, le=65535, description="Kafka's client listener, on "
                            "127.0.0.1")
    kafka_controller_port: int = Field(9093, ge=1, le=65535,
                                       description="Kafka's KRaft controller listener")
    kafka_heap_mb: int = Field(1024, ge=128, description="the broker's heap (Kafka's own default)")
    clickhouse_tcp_port: int = Field(9000, ge=1, le=65535,
                                     description="ClickHouse's native protocol, on 127.0.0.1")
    clickhouse_http_port: int = Field(8123, ge=1, le=65535, description="ClickHouse's HTTP "
                                      "interface (Grafana, curl)")
    clickhouse_interserver_port: int = Field(9009, ge=1, le=65535,
                                             description="ClickHouse's interserver port (replicas; "
                                             "one node still listens)")
    insecure_plaintext: bool = Field(
        False, description="INSECURE, development only: Kafka with no TLS, no SASL and no ACLs "
                           "(anyone on this host can make a collector kill)")
    node: str = Field(default_factory=socket.gethostname,
                      description="the local collector node given Kafka credentials at `up`")


@dataclass(frozen=True)
class StackLayout:
    root: Path  # the source tree
    var: Path  # data, logs and pid files of the running stack (wiped by reset)
    cache: Path  # downloads kept across resets (Kafka's jars)

    @classmethod
    def from_settings(cls, settings: StackSettings) -> StackLayout:
        root = source_root()
        var = settings.home or root / "var"
        return cls(root=root, var=var, cache=root / ".cache")

    @property
    def kafka_pom(self) -> Path:
        return self.root / "deploy" / "kafka" / "pom.xml"
