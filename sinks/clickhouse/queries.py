"""The SOC's questions, as SQL that runs on ClickHouse 18.16 (Debian) and on current releases.

`{db}` is the database. Every query reads with FINAL, so a batch replayed after a crash is
counted once. `docs/soc.md` shows them with what each answers; the Grafana dashboard under
`deploy/grafana/` uses the same SQL.
"""

from __future__ import annotations

__all__ = ["QUERIES"]

QUERIES: dict[str, str] = {
    "violations_per_group_per_hour": """
        SELECT toStartOfHour(ts) AS hour, group_name,
               countIf(verdict = 'alert') AS alerts, countIf(verdict = 'block') AS blocks
        FROM {db}.events FINAL
        WHERE verdict IN ('alert', 'block') AND ts >= now() - INTERVAL 1 DAY
        GROUP BY hour, group_name
        ORDER BY hour, group_name""",
    "new_processes_per_image": """
        SELECT w.image AS image, count() AS new_processes,
               arraySlice(groupUniqArray(e.path), 1, 10) AS examples
        FROM (SELECT workload_id, path FROM {db}.events FINAL
              WHERE verdict IN ('learn', 'alert', 'block')
                AND reason IN ('learn', 'violation:R0', 'violation:R5', 'violation:R7')) AS e
        ANY LEFT JOIN (SELECT id AS workload_id, argMax(image, ts) AS image
                       FROM {db}.workloads GROUP BY id) AS w USING workload_id
        GROUP BY image
        ORDER BY new_processes DESC""",
    "top_blocked": """
        SELECT group_name, path, name, count() AS blocks, max(ts) AS last_seen
        FROM {db}.events FINAL
        WHERE verdict = 'block'
        GROUP BY group_name, path, name
        ORDER BY blocks DESC
        LIMIT 20""",
    "learning_convergence": """
        SELECT toStartOfHour(ts) AS hour, group_name, count() AS new_rules
        FROM {db}.profile_changes FINAL
        WHERE change = 'rule_learned'
        GROUP BY hour, group_name
        ORDER BY hour, group_name""",
    "latest_incidents": """
        SELECT ts, name, level, group_name, workload_name, proc_path, action, message
        FROM {db}.security_events FINAL
        ORDER BY ts DESC
        LIMIT 100""",
    "collector_losses": """
        SELECT node, started_at, reason, max(lost_so_far) AS lost, max(execs) AS execs_seen
        FROM {db}.collector_reports FINAL
        ARRAY JOIN loss_reasons AS reason, loss_counts AS lost_so_far
        WHERE ts >= now() - INTERVAL 1 DAY
        GROUP BY node, started_at, reason
        ORDER BY lost DESC""",
    "rule_changes_by_actor": """
        SELECT group_name, change, actor, count() AS changes, max(ts) AS last
        FROM {db}.profile_changes FINAL
        GROUP BY group_name, change, actor
        ORDER BY last DESC""",
}
