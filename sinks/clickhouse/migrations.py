"""The ClickHouse schema as ordered migrations, applied idempotently.

Each migration is a version, a name and DDL statements with `{db}` for the database. Applied
versions are recorded in `{db}.schema_migrations`; applying twice changes nothing. Every statement
must run on ClickHouse 18.16 (Debian) and on current releases (see notes on portable DDL).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from clickhouse_driver import Client

from schemas.connections import ClickHouseConnection

__all__ = ["MIGRATIONS", "Migration", "applied_versions", "apply_migrations", "connect"]


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "stack smoke table", (
        """CREATE TABLE IF NOT EXISTS {db}.stack_smoke (
            ts DateTime('UTC'),
            note String
        ) ENGINE = MergeTree PARTITION BY toYYYYMMDD(ts) ORDER BY ts""",
    )),
)

_BOOKKEEPING = """CREATE TABLE IF NOT EXISTS {db}.schema_migrations (
    version UInt32,
    name String,
    applied_at DateTime('UTC')
) ENGINE = MergeTree ORDER BY version"""


def connect(conn: ClickHouseConnection, database: str | None = None, **kw: Any) -> Client:
    return Client(host=conn.host, port=conn.port, user=conn.user, password=conn.password,
                  database=database or "default", secure=conn.secure, **kw)


def applied_versions(client: Client, db: str) -> set[int]:
    rows = client.execute(f"SELECT version FROM {db}.schema_migrations")
    return {int(r[0]) for r in rows}


def apply_migrations(client: Client, db: str,
                     migrations: tuple[Migration, ...] = MIGRATIONS) -> list[Migration]:
    """Create the database and apply what is missing, in order; returns what was applied."""
    client.execute(f"CREATE DATABASE IF NOT EXISTS {db}")
    client.execute(_BOOKKEEPING.format(db=db))
    done = applied_versions(client, db)
    applied = []
    for migration in sorted(migrations, key=lambda m: m.version):
        if migration.version in done:
            continue
        for statement in migration.statements:
            client.execute(statement.format(db=db))
        client.execute(f"INSERT INTO {db}.schema_migrations (version, name, applied_at) VALUES",
                       [(migration.version, migration.name,
                         datetime.now(UTC).replace(microsecond=0, tzinfo=None))])
        applied.append(migration)
    return applied
