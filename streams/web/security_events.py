"""`GET /v1/security_events`: the latest incidents, read back from ClickHouse for the console.

The stream app publishes incidents to Kafka; the ClickHouse sink stores them in
`security_events` (docs/soc.md). This reads that table, filtered, newest first. ClickHouse
comes from `PROCWARDEN_CLICKHOUSE_*`; when it cannot be reached the answer is a 503 that says so.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from clickhouse_driver import Client
from clickhouse_driver.errors import Error as ClickHouseError

from schemas.connections import ClickHouseConnection

__all__ = ["COLUMNS", "SecurityEvents", "SecurityEventsError"]

COLUMNS = (
    "ts", "id", "name", "level", "reported_at", "cluster_name", "host_name", "workload_id",
    "workload_name", "workload_domain", "workload_image", "workload_service", "proc_name",
    "proc_path", "proc_cmd", "proc_real_uid", "proc_effective_uid", "proc_real_user",
    "proc_effective_user", "proc_parent_name", "proc_parent_path", "file_path", "file_name",
    "conn_ingress", "action", "group_name", "rule_id", "count", "message")
# Query parameter -> (column, comparison).
_FILTERS = {"group": ("group_name", "="), "workload": ("workload_name", "="),
            "workload_id": ("workload_id", "="), "name": ("name", "="),
            "action": ("action", "="), "level": ("level", "=")}


class SecurityEventsError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class SecurityEvents:
    def __init__(self, conn: ClickHouseConnection) -> None:
        self.conn = conn

    def _client(self) -> Client:
        return Client(host=self.conn.host, port=self.conn.port, user=self.conn.user,
                      password=self.conn.password, database=self.conn.database,
                      secure=self.conn.secure, connect_timeout=3, send_receive_timeout=10)

    async def query(self, params: Mapping[str, str]) -> list[dict[str, Any]]:
        sql, args = self.sql(params)
        try:
            rows = await asyncio.to_thread(self._run, sql, args)
        except (ClickHouseError, OSError, EOFError) as exc:
            raise SecurityEventsError(503, f"ClickHouse at {self.conn.describe()} cannot be "
                                           f"read: {exc}") from None
        return [_row(r) for r in rows]

    def _run(self, sql: str, args: dict[str, Any]) -> list[tuple[Any, ...]]:
        client = self._client()
        try:
            rows: list[tuple[Any, ...]] = client.execute(sql, args)
            return rows
        finally:
            client.disconnect()

    def sql(self, params: Mapping[str, str]) -> tuple[str, dict[str, Any]]:
        """The query for the request's filters; unknown filters and bad values are 400s."""
        where: list[str] = []
        args: dict[str, Any] = {}
        for key, value in params.items():
            if key in ("limit", "since", "until"):
                continue
            if key not in _FILTERS:
                raise SecurityEventsError(400, f"unknown filter {key!r} (allowed: "
                                               f"{', '.join(sorted(_FILTERS))}, since, until, "
                                               "limit)")
            column, op = _FILTERS[key]
            where.append(f"{column} {op} %({key})s")
            args[key] = value
        for key, op in (("since", ">="), ("until", "<=")):
            if key in params:
                args[key] = _epoch(key, params[key])
                where.append(f"ts {op} toDateTime(%({key})s)")
        try:
            limit = min(1000, max(1, int(params.get("limit", "100"))))
        except ValueError:
            raise SecurityEventsError(400, "limit: expected a number") from None
        clause = f"WHERE {' AND '.join(where)} " if where else ""
        sql = (f"SELECT {', '.join(COLUMNS)} FROM {self.conn.database}.security_events FINAL "
               f"{clause}ORDER BY ts DESC, id LIMIT {limit}")
        return sql, args


_MAX_EPOCH = 2**32 - 1  # ClickHouse's DateTime ends in 2106


def _epoch(key: str, text: str) -> int:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value <= _MAX_EPOCH:  # NaN too
        raise SecurityEventsError(400, f"{key}: expected epoch seconds from 0 to {_MAX_EPOCH}")
    return int(value)


def _row(row: tuple[Any, ...]) -> dict[str, Any]:
    out = dict(zip(COLUMNS, row, strict=True))
    ts = out.pop("ts")
    out["reported_timestamp"] = int(ts.replace(tzinfo=UTC).timestamp()) \
        if isinstance(ts, datetime) else ts
    out["conn_ingress"] = bool(out["conn_ingress"])
    return out
