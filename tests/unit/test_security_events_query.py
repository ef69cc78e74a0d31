"""The console's security-events query: filters become parameters, never SQL text."""

from __future__ import annotations

import pytest

from schemas.connections import ClickHouseConnection
from streams.web.security_events import SecurityEvents, SecurityEventsError

EVENTS = SecurityEvents(ClickHouseConnection(database="procwarden"))


def test_filters_are_parameters() -> None:
    sql, args = EVENTS.sql({"group": "nv.web.demo'; DROP TABLE x", "action": "deny",
                            "since": "1700000000", "limit": "5"})
    assert "DROP" not in sql
    assert "group_name = %(group)s" in sql and "action = %(action)s" in sql
    assert "ts >= toDateTime(%(since)s)" in sql and sql.endswith("LIMIT 5")
    assert args == {"group": "nv.web.demo'; DROP TABLE x", "action": "deny",
                    "since": 1700000000}
    assert "FROM procwarden.security_events FINAL" in sql


@pytest.mark.parametrize("params, message", [
    ({"colour": "red"}, "unknown filter 'colour'"),
    ({"since": "yesterday"}, "since: expected epoch seconds"),
    ({"limit": "many"}, "limit: expected a number"),
])
def test_bad_filters_are_400s(params: dict[str, str], message: str) -> None:
    with pytest.raises(SecurityEventsError) as err:
        EVENTS.sql(params)
    assert err.value.status == 400 and message in str(err.value)


def test_limit_is_bounded() -> None:
    assert EVENTS.sql({"limit": "100000"})[0].endswith("LIMIT 1000")
    assert EVENTS.sql({})[0].endswith("LIMIT 100")
