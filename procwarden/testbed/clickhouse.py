"""A ClickHouse stand-in for tests and benches of the sink without a server: each INSERT's
columns are written with the real driver (a value it cannot write fails as it would for real),
more than `max_partitions` days in one INSERT are refused as the server refuses them, and
`down` fails like a network error. The column types come from the migrations."""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar

from clickhouse_driver.columns.service import write_column
from clickhouse_driver.errors import ErrorCodes, NetworkError, ServerException

from sinks.clickhouse.migrations import MIGRATIONS

__all__ = ["FakeClickHouse", "column_types"]


def column_types() -> dict[str, dict[str, str]]:
    """Each table's column types, from the migrations."""
    out: dict[str, dict[str, str]] = {}
    for migration in MIGRATIONS:
        for ddl in migration.statements:
            m = re.search(r"TABLE IF NOT EXISTS \{db\}\.(\w+) \((.*?)\) ENGINE", ddl, re.S)
            if m:
                out[m.group(1)] = dict(re.findall(
                    r"(\w+) (Enum8\([^)]*\)|Array\(\w+\)|DateTime\('UTC'\)|\w+)",
                    m.group(2)))
    return out


class _Buffer(io.BytesIO):
    def write_strings(self, items: Sequence[Any], **_: Any) -> None: ...


class _Context:
    client_settings: ClassVar[dict[str, Any]] = {"use_numpy": False, "strings_as_bytes": False,
                                                 "strings_encoding": "utf-8"}
    server_info = None


class FakeClickHouse:
    def __init__(self, max_partitions: int = 100) -> None:
        self.types = column_types()
        self.rows: dict[str, list[tuple[Any, ...]]] = {}
        self.inserts = 0
        self.max_partitions = max_partitions
        self.down = False

    def execute(self, query: str, values: Any = None, columnar: bool = False) -> Any:
        if self.down:
            raise NetworkError("Connection refused")
        if query.startswith("DESCRIBE TABLE"):
            return list(self.types[query.rsplit(".", maxsplit=1)[-1]].items())
        m = re.match(r"INSERT INTO \w+\.(\w+) \((.*)\) VALUES", query)
        assert m, query
        table, names = m.group(1), m.group(2).split(", ")
        self.inserts += 1
        for name, column in zip(names, values, strict=True):
            write_column(_Context(), name, self.types[table][name], column, _Buffer())
        days = {datetime.fromtimestamp(t, UTC).date() for t in values[0]}
        if len(days) > self.max_partitions:
            raise ServerException(f"Too many partitions for single INSERT block (more than "
                                  f"{self.max_partitions}).", code=ErrorCodes.TOO_MANY_PARTS)
        self.rows.setdefault(table, []).extend(zip(*values, strict=True))

    def disconnect(self) -> None: ...
