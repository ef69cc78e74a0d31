"""The sinks' settings: `SINKS_*` variables (Kafka and ClickHouse come from `PROCWARDEN_*`)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["SinkSettings"]


class SinkSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SINKS_", extra="forbid")

    group_id: str = "procwarden-sink-clickhouse"
    batch_size: int = Field(50_000, ge=1)
    batch_seconds: float = Field(0.5, gt=0)
    max_backoff_seconds: float = Field(10.0, gt=0)
    metrics_port: int = Field(9464, ge=0, le=65535, description="0 disables /metrics")
    log_level: str = "info"
