"""The tree is the data flow: collectors, streams and sinks share only schemas."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STAGES = ("collectors", "streams", "sinks")
ENGINE_FORBIDDEN = ("faust", "confluent_kafka", "aiokafka", "clickhouse_driver", "pyroute2",
                    "logging", "time", "random", "socket", "os", "subprocess", "asyncio")


def imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def offenders(package: str, forbidden: tuple[str, ...]) -> list[str]:
    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        bad = imported_roots(path) & set(forbidden)
        if bad:
            found.append(f"{path.relative_to(ROOT)} imports {', '.join(sorted(bad))}")
    return found


@pytest.mark.parametrize("stage", STAGES)
def test_stages_do_not_import_each_other(stage: str) -> None:
    others = tuple(s for s in STAGES if s != stage)
    assert offenders(stage, others) == []


def test_schemas_import_no_stage() -> None:
    assert offenders("schemas", (*STAGES, "procwarden")) == []


def test_engine_is_pure() -> None:
    assert offenders("streams/engine", ENGINE_FORBIDDEN) == []


def test_the_check_catches_a_violation(tmp_path: Path) -> None:
    bad = tmp_path / "x.py"
    bad.write_text("import os\nfrom sinks.clickhouse import writer\nfrom . import local\n")
    assert imported_roots(bad) == {"os", "sinks"}


def test_transport_imports_no_stage() -> None:
    assert offenders("transport", (*STAGES, "procwarden")) == []
