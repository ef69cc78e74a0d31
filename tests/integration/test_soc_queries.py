"""The ClickHouse schema and every SOC query, on the Debian server (18.16) and on a current
engine (chdb), with rows the sink itself builds."""

from __future__ import annotations

from typing import Any

from chdb import session as chdb_session

from schemas import ChangeKind, CollectorReport, Envelope, ProfileChange, Verdict
from schemas.connections import ClickHouseConnection
from schemas.records import replace
from sinks.clickhouse.migrations import MIGRATIONS, apply_migrations, connect
from sinks.clickhouse.queries import QUERIES
from sinks.clickhouse.rows import TABLES, table_for
from tests.integration.streamkit import NODE
from tests.integration.test_sink_clickhouse import decision, incident
from tests.integration.test_streams import WORKLOAD


def sample() -> list[Envelope]:
    now = __import__("time").time()
    envs = []
    for i in range(30):
        verdict = Verdict.BLOCK if i % 3 == 0 else Verdict.ALERT if i % 3 == 1 else Verdict.LEARN
        d = replace(decision(i, verdict), ts=now - i,
                                reason="learn" if verdict is Verdict.LEARN else "violation:R0")
        envs.append(Envelope.wrap(d, event_id=f"v{i}", node=NODE, ts=d.ts))
    envs.append(Envelope.wrap(incident(1), event_id="i1", node=NODE, ts=now))
    envs.append(Envelope.wrap(ProfileChange(group="nv.web.demo", change=ChangeKind.RULE_LEARNED,
                                            version=2, ts=now, actor="learning"),
                              event_id="c1", node=NODE, ts=now))
    envs.append(Envelope.wrap(WORKLOAD, event_id="w1", node=NODE, ts=now))
    for i, lost in enumerate((3, 7)):  # two reports of one collector run: totals grow
        envs.append(Envelope.wrap(CollectorReport(
            node=NODE, started_at=now - 60, execs=100 * (i + 1), reported=90 * (i + 1),
            lost={"process_gone": lost, "applet_unknown": 1}), event_id=f"r{i}", node=NODE,
            ts=now - 10 + i))
    return envs


def test_queries_on_the_debian_server(clickhouse_db: tuple[ClickHouseConnection, str]) -> None:
    _, db = clickhouse_db
    client = connect(ClickHouseConnection())
    apply_migrations(client, db)
    by_table: dict[str, list[Any]] = {}
    for env in sample():
        table = table_for(env)
        assert table is not None
        by_table.setdefault(table.name, []).append(table.row(env))
    for table in TABLES.values():
        rows = by_table[table.name]
        client.execute(f"INSERT INTO {db}.{table.name} ({', '.join(table.columns)}) VALUES",
                       rows)
    results = {name: client.execute(sql.format(db=db)) for name, sql in QUERIES.items()}
    client.disconnect()
    per_hour = results["violations_per_group_per_hour"]
    assert sum(r[2] for r in per_hour) == 10 and sum(r[3] for r in per_hour) == 10
    assert results["top_blocked"][0][:4] == ("nv.web.demo", "/bin/ls", "ls", 10)
    assert results["new_processes_per_image"][0][:2] == ("busybox:1.36", 30)
    assert results["learning_convergence"][0][1:] == ("nv.web.demo", 1)
    assert results["latest_incidents"][0][1] == "Process.Profile.Violation"
    assert results["rule_changes_by_actor"][0][:4] == ("nv.web.demo", "rule_learned",
                                                       "learning", 1)
    losses = [(r[0], r[2], r[3], r[4]) for r in results["collector_losses"]]
    assert losses == [(NODE, "process_gone", 7, 200), (NODE, "applet_unknown", 1, 200)]


def _literal(value: Any) -> str:
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, list):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    if hasattr(value, "strftime"):
        return f"toDateTime('{value:%Y-%m-%d %H:%M:%S}', 'UTC')"
    return str(value)


def test_schema_and_queries_on_a_current_engine() -> None:
    session = chdb_session.Session()
    db = "pw_current"
    session.query(f"CREATE DATABASE IF NOT EXISTS {db}")
    session.query(f"CREATE TABLE IF NOT EXISTS {db}.schema_migrations (version UInt32) "
                  "ENGINE = MergeTree ORDER BY version")
    for migration in MIGRATIONS:
        for statement in migration.statements:
            session.query(statement.format(db=db))
    for env in sample():
        table = table_for(env)
        assert table is not None
        values = ", ".join(_literal(v) for v in table.row(env))
        session.query(f"INSERT INTO {db}.{table.name} ({', '.join(table.columns)}) "
                      f"VALUES ({values})")
    for name, sql in QUERIES.items():
        out = session.query(sql.format(db=db), "JSONCompact")
        assert out is not None, name
    losses = str(session.query(QUERIES["collector_losses"].format(db=db), "CSV"))
    assert f'"{NODE}",' in losses and '"process_gone",7,200' in losses
    top = str(session.query(QUERIES["top_blocked"].format(db=db), "CSV"))
    assert '"nv.web.demo","/bin/ls","ls",10' in top
    session.close()
