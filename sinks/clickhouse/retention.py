"""Old data leaves by partition: every table is partitioned by day (or month) of `ts`, and a
partition whose newest possible row is older than the retention is dropped whole. No TTL: the
Debian server (18.16) and current releases both do DROP PARTITION, and it costs nothing."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from clickhouse_driver import Client

from sinks.clickhouse.rows import TABLES as ROW_TABLES

__all__ = ["drop_expired_partitions", "expired"]

log = logging.getLogger("procwarden.sinks.retention")

# Every table the sink writes; partitions read toYYYYMMDD (8 digits) or toYYYYMM (6 digits), and
# an unpartitioned table (workloads: the latest state of each) has none to drop.
TABLES = tuple(table.name for table in ROW_TABLES.values())


def expired(partition: str, cutoff: datetime) -> bool:
    """Whether every row a partition can hold is older than `cutoff` (UTC)."""
    value = partition.strip("'")
    if len(value) == 8 and value.isdigit():
        last_day = datetime.strptime(value, "%Y%m%d").replace(tzinfo=UTC)
        return last_day + timedelta(days=1) <= cutoff
    if len(value) == 6 and value.isdigit():
        year, month = int(value[:4]), int(value[4:])
        first_of_next = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
        return first_of_next <= cutoff
    return False  # not a date partition: never dropped by age


def drop_expired_partitions(client: Client, db: str, days: int,
                            now: datetime | None = None) -> list[tuple[str, str]]:
    """Drop the partitions older than `days`; returns (table, partition) for each dropped."""
    cutoff = (now or datetime.now(UTC)) - timedelta(days=days)
    rows = client.execute(
        "SELECT DISTINCT table, partition FROM system.parts WHERE database = %(db)s "
        "AND active AND table IN %(tables)s", {"db": db, "tables": TABLES})
    dropped = []
    for table, partition in sorted(rows):
        if expired(partition, cutoff):
            client.execute(f"ALTER TABLE {db}.{table} DROP PARTITION {partition}")
            dropped.append((table, partition))
            log.info("retention: dropped %s.%s partition %s", db, table, partition)
    return dropped
