"""The ClickHouse sink's writer, built from its own settings (`SINKS_*`) and its connections."""

from __future__ import annotations

from schemas.connections import ClickHouseConnection, KafkaConnection
from sinks.clickhouse.writer import ClickHouseWriter
from sinks.settings import SinkSettings
from transport.health import Health

__all__ = ["writer"]


def writer(settings: SinkSettings, kafka: KafkaConnection, clickhouse: ClickHouseConnection,
           health: Health) -> ClickHouseWriter:
    return ClickHouseWriter(kafka, clickhouse, group_id=settings.group_id,
                            batch_size=settings.batch_size,
                            batch_seconds=settings.batch_seconds,
                            max_backoff=settings.max_backoff_seconds,
                            retention_days=settings.retention_days, health=health)
