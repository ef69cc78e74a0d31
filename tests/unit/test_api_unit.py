"""The policy API's handler (streams/web/api.py `PolicyApi`) over the worker's real handlers and a
fake Kafka edge: a loopback producer whose policy-updates reach the group's writer, or a silent
one whose writer never answers. A write answers once its change is published, and reads it
back; a write nobody publishes is a 504, not a hang; If-Match refuses a stale version; a dry run
decides and changes nothing. (HTTP, roles and the documented answers are
tests/unit/test_api_web.py and test_openapi.py.)"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest

from schemas import Envelope, ExecEvent, Workload, WorkloadKind, encode
from schemas.codec import to_plain
from schemas.connections import KafkaConnection
from schemas.topics import POLICY_UPDATES
from streams.web.api import ApiError, PolicyApi
from streams.worker.handlers import Handlers
from streams.worker.session import DecisionSession
from tests.unit.test_policy_import import Loopback

RULE = {"process_profile_config": {"process_change_list": [
    {"name": "ls", "path": "/bin/ls", "action": "allow"}]}}
WL = Workload(id="c-web-1", kind=WorkloadKind.CONTAINER, node="node-1", name="web",
              namespace="demo", service="web", image="busybox")


class Silent:
    """A producer whose records reach no writer (the group's writer is down)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes | None]] = []

    async def send(self, topic: str, key: bytes, value: bytes | None) -> None:
        self.sent.append((topic, key, value))


def make(out: Any, write_timeout: float = 5.0) -> PolicyApi:
    handlers = Handlers(session=DecisionSession(), publisher=out, decisions=out,
                        kafka=KafkaConnection())
    if isinstance(out, Loopback):
        out.handlers = handlers
    handlers.ready.set()
    handlers.published.update(handlers.session.policies)
    return PolicyApi(handlers, write_timeout=write_timeout)


def test_a_write_answers_with_the_published_change_and_a_read_shows_it() -> None:
    out = Loopback()
    api = make(out)
    before = api.handlers.published["nodes"].version
    status, body = asyncio.run(api.patch_profile("nodes", RULE, "alice"))
    assert status == 200
    assert body["process_profile"]["version"] == api.handlers.published["nodes"].version > before
    assert "/bin/ls" in {r["path"] for r in body["process_profile"]["process_list"]}
    assert api.get_profile("nodes")[1] == body
    updates = [k for t, k, _ in out.sent if t == POLICY_UPDATES.name]
    assert updates == [b"nodes"]  # sent once, to the group's writer, keyed by the group


def test_a_write_the_groups_writer_never_publishes_is_a_504_not_a_hang() -> None:
    out = Silent()
    api = make(out, write_timeout=0.3)
    started = time.monotonic()
    with pytest.raises(ApiError) as caught:
        asyncio.run(api.patch_profile("nodes", RULE, "alice"))
    assert caught.value.status == 504 and "not published yet" in str(caught.value)
    assert 0.3 <= time.monotonic() - started < 3
    assert [(t, k) for t, k, _ in out.sent] == [(POLICY_UPDATES.name, b"nodes")]


def test_deleting_a_group_that_does_not_exist_sends_nothing() -> None:
    out = Loopback()
    api = make(out)
    with pytest.raises(ApiError) as caught:
        asyncio.run(api.delete_group("nv.nope", "alice"))
    assert caught.value.status == 404 and out.sent == []


def test_if_match_refuses_a_version_the_client_did_not_read() -> None:
    api = make(Loopback())
    version = api.handlers.session.policies["nodes"].version
    for ok in (f'"{version}"', f'W/"{version}"', "*", f'"0", "{version}"', None):
        api.check_version("nodes", ok)
    with pytest.raises(ApiError) as stale:
        api.check_version("nodes", f'"{version - 1}"')
    assert stale.value.status == 412 and stale.value.field == "If-Match"
    with pytest.raises(ApiError) as missing:
        api.check_version("nv.nope", "*")
    assert missing.value.status == 404


def test_a_profile_patch_for_another_group_than_its_path_is_refused() -> None:
    out = Loopback()
    api = make(out)
    body = {"process_profile_config": {"group": "nv.other", **RULE["process_profile_config"]}}
    with pytest.raises(ApiError) as caught:
        asyncio.run(api.patch_profile("nodes", body, "alice"))
    assert caught.value.status == 400 and out.sent == []


def test_a_dry_run_decides_and_learns_nothing() -> None:
    out = Loopback()
    api = make(out)
    policies = dict(api.session.policies)
    event = Envelope.wrap(ExecEvent(workload_id=WL.id, pid=5, path="/bin/ls", name="ls"),
                          event_id="dry-1", node="node-1", ts=1_700_000_000.0)
    status, body = api.dry_run({"workload": to_plain(WL),
                                "event": orjson.loads(encode(event))})
    assert status == 200
    decision = body["decision"]
    assert (decision["event_id"], decision["workload_id"], decision["mode"]) == (
        "dry-1", WL.id, "Discover")
    assert decision["verdict"] == "learn"  # what Discover would do: but nothing is learned
    assert api.session.policies == policies and WL.id not in api.session.workloads
    assert out.sent == [] and api.session.states == {}
    with pytest.raises(ApiError) as unknown:  # a workload not sent along must be known
        api.dry_run({"event": orjson.loads(encode(event))})
    assert unknown.value.status == 404
