"""The sinks' settings: `SINKS_*` variables (Kafka and ClickHouse come from `PROCWARDEN_*`)."""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.env_settings import LOG_LEVEL, LogLevel

__all__ = ["SiemSettings", "SinkSettings"]


class SinkSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SINKS_", extra="forbid")

    group_id: str = Field("procwarden-sink-clickhouse", description="Kafka consumer group")
    batch_size: int = Field(50_000, ge=1, description="records stored in one insert, at most")
    batch_seconds: float = Field(0.5, gt=0, description="longest wait to fill a batch")
    max_backoff_seconds: float = Field(10.0, gt=0, description="longest pause between retries "
                                       "while ClickHouse refuses a batch")
    retention_days: int = Field(0, ge=0, description="drop partitions older than this; 0 keeps")
    metrics_port: int = Field(9464, ge=0, le=65535, description="0 disables /metrics")
    log_level: LogLevel = Field("info", description=LOG_LEVEL)


class SiemSettings(BaseSettings):
    """`SIEM_*`: where incidents go and which ones."""

    model_config = SettingsConfigDict(env_prefix="SIEM_", extra="forbid")

    syslog_url: str = Field("", description="udp://host:514, tcp://host:514 or tls://host:6514")
    syslog_format: str = Field("json", pattern="^(json|cef)$",
                               description="json (RFC 5424 with a JSON body) or cef")
    ca_file: str = Field("", description="tls://: CA bundle the syslog server is checked "
                         "against (default: the system's)")
    cert_file: str = Field("", description="tls://: client certificate chain, for mutual TLS")
    key_file: str = Field("", description="tls://: private key of cert_file")
    syslog_max_bytes: int = Field(0, ge=0, description=(
        "largest incident sent; 0: 65536 over tcp/tls (rsyslog's maxMessageSize), 8192 over udp"))
    webhook_url: str = Field("", description="address incidents are POSTed to, as a JSON "
                             "array; empty: no webhook")
    webhook_token: SecretStr = Field(SecretStr(""), description="bearer token sent to the webhook")
    webhook_max_bytes: int = Field(64 * 1024, ge=4096, description="largest incident posted")
    min_level: str = Field("WARNING", pattern="^(INFO|WARNING|CRITICAL)$",
                           description="incidents below this level are not forwarded")
    groups: str = Field("", description="comma-separated groups; empty for all")
    aggregate_seconds: float = Field(0.0, ge=0, le=3600,
                                     description="fold repeated incidents within this window")
    hostname: str = Field("procwarden", description="HOSTNAME field of each syslog message")
    group_id: str = Field("procwarden-siem", description="Kafka consumer group")
    metrics_port: int = Field(9465, ge=0, le=65535, description="0 disables /metrics")
    log_level: LogLevel = Field("info", description=LOG_LEVEL)

    @property
    def group_set(self) -> frozenset[str]:
        """`groups` as a set; empty: every group."""
        return frozenset(g.strip() for g in self.groups.split(",") if g.strip())

    @field_validator("syslog_max_bytes")
    @classmethod
    def _at_least_a_few_kib(cls, value: int) -> int:
        if 0 < value < 4096:
            raise ValueError("must be 0 (the transport's default) or at least 4096")
        return value
