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


_VERDICT = ("Enum8('allow' = 1, 'learn' = 2, 'alert' = 3, 'block' = 4, 'accept' = 5, "
            "'reject' = 6, 'none' = 7)")

# Replaying a batch after a crash inserts the same rows again; ReplacingMergeTree keeps one row
# per sorting key (which every duplicate shares) and queries read with FINAL.
MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "stack smoke table", (
        """CREATE TABLE IF NOT EXISTS {db}.stack_smoke (
            ts DateTime('UTC'),
            note String
        ) ENGINE = MergeTree PARTITION BY toYYYYMMDD(ts) ORDER BY ts""",
    )),
    Migration(2, "events, security events, profile changes, workloads", (
        f"""CREATE TABLE IF NOT EXISTS {{db}}.events (
            ts DateTime('UTC'), ts_ms UInt16, event_id String, event_kind String,
            workload_id String, node String, group_name String, verdict {_VERDICT},
            reason String, rule_uuid String, rule_group String, mode String, baseline String,
            would_block UInt8, suppressed UInt8, pid UInt32, start_time UInt64, name String,
            path String, user String, policy_version UInt32, incident_name String,
            incident_level String, incident_id String, message String
        ) ENGINE = ReplacingMergeTree PARTITION BY toYYYYMMDD(ts)
          ORDER BY (group_name, ts, event_id)""",
        """CREATE TABLE IF NOT EXISTS {db}.security_events (
            ts DateTime('UTC'), id String, name String, level String, reported_at String,
            cluster_name String, host_id String, host_name String, enforcer_id String,
            enforcer_name String, workload_id String, workload_name String,
            workload_domain String, workload_image String, workload_service String,
            proc_name String, proc_path String, proc_cmd String, proc_real_uid UInt32,
            proc_effective_uid UInt32, proc_real_user String, proc_effective_user String,
            proc_parent_name String, proc_parent_path String, file_path String,
            file_name String, conn_ingress UInt8, action String, group_name String,
            rule_id String, aggregation_from UInt32, count UInt32, message String
        ) ENGINE = ReplacingMergeTree PARTITION BY toYYYYMMDD(ts) ORDER BY (group_name, ts, id)""",
        """CREATE TABLE IF NOT EXISTS {db}.profile_changes (
            ts DateTime('UTC'), ts_ms UInt16, group_name String, change String,
            version UInt32, actor String, rule_name String, rule_path String,
            rule_action String, rule_source String, rule_uuid String,
            rule_users Array(String), detail String, cause_event_id String, change_id String
        ) ENGINE = ReplacingMergeTree PARTITION BY toYYYYMM(ts)
          ORDER BY (group_name, version, change_id)""",
        """CREATE TABLE IF NOT EXISTS {db}.workloads (
            ts DateTime('UTC'), id String, kind String, node String, name String,
            image String, namespace String, service String, pod String,
            label_keys Array(String), label_values Array(String), system UInt8, state String
        ) ENGINE = ReplacingMergeTree(ts) ORDER BY id""",
    )),
    Migration(3, "collector reports (loss counts)", (
        """CREATE TABLE IF NOT EXISTS {db}.collector_reports (
            ts DateTime('UTC'), node String, started_at DateTime('UTC'), execs UInt64,
            reported UInt64, loss_reasons Array(String), loss_counts Array(UInt64),
            spool_bytes UInt64, report_id String
        ) ENGINE = ReplacingMergeTree PARTITION BY toYYYYMMDD(ts)
          ORDER BY (node, ts, report_id)""",
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
