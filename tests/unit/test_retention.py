"""Which partitions the retention drops: only those whose every possible row is too old."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from sinks.clickhouse.retention import expired

CUTOFF = datetime(2026, 11, 10, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize("partition, gone", [
    ("20261108", True), ("20261109", True), ("20261110", False), ("20261111", False),
    ("'20261101'", True), ("202610", True), ("202611", False), ("202612", False),
    ("201912", True), ("tuple()", False), ("abc", False),
])
def test_expired(partition: str, gone: bool) -> None:
    assert expired(partition, CUTOFF) is gone
