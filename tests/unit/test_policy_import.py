"""CRD import through the policy API's handler, against a worker whose policy-updates loop back
to its own group writer: a large or hostile document never runs attacker-sized work on the event
loop, and never answers 500 (issue 21)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from schemas import CriteriaKey, CriteriaOp, Criterion, GroupKind, GroupPolicy
from schemas.connections import KafkaConnection
from schemas.topics import POLICY_UPDATES
from streams.web.api import ApiError, PolicyApi
from streams.worker.handlers import Handlers, RawMessage
from streams.worker.session import DecisionSession

ROOT = Path(__file__).resolve().parents[2]
CRD = (ROOT / "examples" / "policies" / "custom-lockdown.yaml").read_text()


class Loopback:
    """The Kafka producer, for one worker: what it sends to policy-updates its writer applies."""

    def __init__(self) -> None:
        self.handlers: Handlers | None = None
        self.sent: list[tuple[str, bytes, bytes | None]] = []

    async def send(self, topic: str, key: bytes, value: bytes | None) -> None:
        self.sent.append((topic, key, value))
        if topic == POLICY_UPDATES.name and self.handlers is not None:
            await self.handlers.on_update(RawMessage(topic, 0, len(self.sent), key, value))


def _api() -> tuple[PolicyApi, Loopback]:
    out = Loopback()
    handlers = Handlers(session=DecisionSession(), publisher=out, decisions=out,
                        kafka=KafkaConnection())
    out.handlers = handlers
    handlers.ready.set()
    handlers.published.update(handlers.session.policies)
    return PolicyApi(handlers, write_timeout=5), out


def _import(text: str) -> Any:
    api, _ = _api()
    return asyncio.run(api.import_policy(text, "test"))


@pytest.fixture
def yaml_loads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[Any, int]]]:
    """Every YAML parse: (the loader class, the thread it ran on)."""
    calls: list[tuple[Any, int]] = []
    real = yaml.load_all

    def counted(stream: Any, Loader: Any = None) -> Any:
        calls.append((Loader, threading.get_ident()))
        return real(stream, Loader=Loader)

    monkeypatch.setattr(yaml, "load_all", counted)
    yield calls


def test_an_import_is_parsed_once_with_the_c_loader_off_the_event_loop(
        yaml_loads: list[tuple[Any, int]]) -> None:
    api, _ = _api()
    loop_threads: list[int] = []

    async def run() -> tuple[int, Any]:
        loop_threads.append(threading.get_ident())
        return await api.import_policy(CRD, "test")

    status, body = asyncio.run(run())
    assert status == 200 and body["groups"] == ["demo-lockdown"]
    group = api.handlers.published["demo-lockdown"]
    assert isinstance(group, GroupPolicy) and group.kind is GroupKind.CUSTOM
    assert group.criteria == (Criterion(CriteriaKey.NAMESPACE, CriteriaOp.EQ, "demo"),)
    assert [(r.name, r.path) for r in group.rules] == [("wget", "/bin/busybox"),
                                                       ("*", "/usr/bin/*")]
    assert len(yaml_loads) == 1  # validation and the group's writer do not parse YAML again
    loader, thread = yaml_loads[0]
    assert loader is yaml.CSafeLoader
    assert thread != loop_threads[0]


def test_an_import_over_the_size_cap_is_refused_with_413(
        yaml_loads: list[tuple[Any, int]]) -> None:
    text = CRD + "#" + "x" * (1024 * 1024)
    with pytest.raises(ApiError) as err:
        _import(text)
    assert err.value.status == 413
    assert yaml_loads == []  # refused before it is parsed


@pytest.mark.parametrize("text", [
    "[" * 5_000 + "]" * 5_000,
    "a: " + "[" * 900 + "]" * 900,
    "".join(" " * i + "a:\n" for i in range(1_200)),
    "{" * 600 + "}" * 600,  # JSON-looking: orjson's depth limit, then YAML's
], ids=["flow 5000", "flow 900", "block 1200", "json 600"])
def test_nested_yaml_is_a_clear_400(text: str) -> None:
    with pytest.raises(ApiError) as err:
        _import(text)
    assert err.value.status == 400
    assert "nest" in err.value.message or "YAML" in err.value.message


def test_yaml_aliases_cannot_blow_up_the_import() -> None:
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for i in range(1, 9):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    with pytest.raises(ApiError) as err:
        _import("\n".join(lines) + "\n")  # a billion leaves once expanded
    assert err.value.status == 400 and "alias" in err.value.message


def test_the_groups_writer_is_sent_json_not_yaml() -> None:
    """The writer reads what the API publishes: JSON, parsed in C, never YAML again."""
    api, out = _api()
    status, _ = asyncio.run(api.import_policy(CRD, "test"))
    assert status == 200
    published = [v for t, _, v in out.sent if t == POLICY_UPDATES.name]
    assert published and all(v is not None and b'"text":"{' in v for v in published)
