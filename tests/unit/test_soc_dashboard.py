"""The Grafana dashboard shows exactly the SOC queries the tests run on both engines."""

from __future__ import annotations


def test_grafana_dashboard_uses_the_tested_queries() -> None:
    import json
    import textwrap
    from pathlib import Path

    from sinks.clickhouse.queries import QUERIES

    dashboard = json.loads((Path(__file__).resolve().parents[2] / "deploy" / "grafana" /
                            "procwarden-soc.json").read_text())
    seen = set()
    for panel in dashboard["panels"]:
        (target,) = panel["targets"]
        name = target["procwarden_query"]
        assert target["rawSql"] == textwrap.dedent(QUERIES[name]).strip().format(db="procwarden")
        seen.add(name)
    assert seen == set(QUERIES)
