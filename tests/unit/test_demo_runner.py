"""`procwarden demo` and `procwarden demo --down` over fakes of the demo's steps and of what it
starts (the stack's servers, the roles, the web container): --down stops only what a demo
started and runs nothing; a failed step leaves everything up and says how to look and tear down."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import procwarden.demo as demo_module
from procwarden.cli import app
from procwarden.demo import DemoError, Started, run_demo, tear_down

WEB = {"id": "pw-web-0123456789", "name": "web", "bundle": "/b", "rootfs": "/b/rootfs",
       "upperdir": "/b/upper", "lowerdir": "/img", "init_pid": 77, "annotations": {}}


class FakeParts:
    def __init__(self, servers: set[str] = frozenset(), roles: set[str] = frozenset()) -> None:
        self.servers, self.roles = set(servers), set(roles)
        self.stopped: list[str] = []

    def running(self) -> tuple[set[str], set[str]]:
        return set(self.servers), set(self.roles)

    def stop_servers(self, names: set[str], say: Callable[[str], None]) -> None:
        for name in sorted(names):
            self.stopped.append(f"server {name}")
            self.servers.discard(name)

    def stop_roles(self, names: set[str], say: Callable[[str], None]) -> None:
        for name in sorted(names):
            self.stopped.append(f"role {name}")
            self.roles.discard(name)

    def stop_container(self, saved: dict[str, Any]) -> None:
        self.stopped.append(f"container {saved['id']}")


class FakeStory:
    """The demo's five steps: setup starts ClickHouse and the roles; `fail_at` raises."""

    def __init__(self, parts: FakeParts, fail_at: str | None = None,
                 error: BaseException | None = None) -> None:
        self.parts, self.fail_at = parts, fail_at
        self.error = error or DemoError("learned rules for httpd: not there after 45 s")
        self.ran: list[str] = []
        self.results: dict[str, Any] = {"learned": ["httpd"]}
        self.web: dict[str, Any] | None = None
        self.web_stopped = False

    def steps(self) -> list[Callable[[], None]]:
        return [lambda name=name: self._step(name)  # type: ignore[misc]
                for name in ("setup", "discover", "monitor", "protect", "soc")]

    def _step(self, name: str) -> None:
        self.ran.append(name)
        if name == "setup":
            self.parts.servers |= {"kafka", "clickhouse"}
            self.parts.roles |= {"syslog", "streams", "collector"}
        if name == "discover":
            self.web = WEB
        if name == self.fail_at:
            raise self.error

    def web_saved(self) -> dict[str, Any] | None:
        return self.web

    def stop_web(self) -> None:
        self.web_stopped = True

    def explore(self) -> None:
        self.ran.append("explore")


def test_a_failed_step_leaves_everything_up_and_says_how_to_look_and_tear_down(
        tmp_path: Path) -> None:
    record = tmp_path / "demo-started.json"
    parts = FakeParts(servers={"kafka"})  # Kafka ran before the demo: never the demo's
    story = FakeStory(parts, fail_at="discover")
    with pytest.raises(DemoError) as failed:
        run_demo(story=story, parts=parts, record=record)
    said = str(failed.value)
    assert said.startswith("learned rules for httpd: not there after 45 s")
    for hint in ("procwarden status", "procwarden demo --down", f"runc exec {WEB['id']} sh",
                 str(record)):
        assert hint in said, said
    assert story.ran == ["setup", "discover"] and not story.web_stopped
    assert parts.stopped == []  # nothing torn down
    assert Started.load(record) == Started(servers=["clickhouse"],
                                           roles=["collector", "streams", "syslog"],
                                           container=WEB)


def test_down_stops_only_what_the_demo_started_and_runs_nothing(tmp_path: Path) -> None:
    record = tmp_path / "demo-started.json"
    parts = FakeParts(servers={"kafka"}, roles={"sink-clickhouse"})
    story = FakeStory(parts, fail_at="protect")
    with pytest.raises(DemoError):
        run_demo(story=story, parts=parts, record=record)
    ran = list(story.ran)
    stopped = tear_down(lambda m: None, parts=parts, record=record)
    assert story.ran == ran  # no step ran again
    assert parts.stopped == [f"container {WEB['id']}", "role collector", "role streams",
                             "role syslog", "server clickhouse"]
    assert parts.servers == {"kafka"} and parts.roles == {"sink-clickhouse"}
    assert stopped.servers == ["clickhouse"] and not record.exists()
    # a second --down has nothing left to stop
    parts.stopped.clear()
    said: list[str] = []
    tear_down(said.append, parts=parts, record=record)
    assert parts.stopped == [] and "Nothing the demo started" in said[0]


def test_a_demo_that_succeeds_stops_its_container_and_keeps_the_rest(tmp_path: Path) -> None:
    record = tmp_path / "demo-started.json"
    parts = FakeParts()
    story = FakeStory(parts)
    assert run_demo(story=story, parts=parts, record=record) == {"learned": ["httpd"]}
    assert story.ran == ["setup", "discover", "monitor", "protect", "soc", "explore"]
    assert story.web_stopped and parts.stopped == []
    assert Started.load(record) == Started(servers=["clickhouse", "kafka"],
                                           roles=["collector", "streams", "syslog"])


def test_a_later_demo_keeps_what_an_earlier_one_started(tmp_path: Path) -> None:
    record = tmp_path / "demo-started.json"
    parts = FakeParts()
    with pytest.raises(DemoError):
        run_demo(story=FakeStory(parts, fail_at="monitor"), parts=parts, record=record)
    # everything runs now, started by the first demo; its web container goes first
    run_demo(story=FakeStory(parts), parts=parts, record=record)
    assert parts.stopped == [f"container {WEB['id']}"]
    assert Started.load(record) == Started(servers=["clickhouse", "kafka"],
                                           roles=["collector", "streams", "syslog"])


def test_an_interrupted_demo_is_recorded_too(tmp_path: Path) -> None:
    record = tmp_path / "demo-started.json"
    parts = FakeParts()
    said: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        run_demo(said.append, story=FakeStory(parts, fail_at="soc", error=KeyboardInterrupt()),
                 parts=parts, record=record)
    assert "procwarden demo --down" in said[-1] and parts.stopped == []
    assert Started.load(record).container == WEB


def test_an_unreadable_record_is_said_and_stops_nothing(tmp_path: Path) -> None:
    record = tmp_path / "demo-started.json"
    record.write_text("{not json")
    parts = FakeParts(servers={"kafka"})
    with pytest.raises(DemoError, match="procwarden stack down"):
        tear_down(parts=parts, record=record)
    assert parts.stopped == []


def test_the_command_s_down_does_not_run_the_demo(monkeypatch: pytest.MonkeyPatch) -> None:
    """`procwarden demo --down` ran the whole demo again before it tore down."""
    calls: list[str] = []
    monkeypatch.setattr(demo_module, "run_demo", lambda *a, **k: calls.append("run_demo"))
    monkeypatch.setattr(demo_module, "tear_down", lambda *a, **k: calls.append("tear_down"),
                        raising=False)
    result = CliRunner().invoke(app, ["demo", "--down"])
    assert result.exit_code == 0, result.output
    assert calls == ["tear_down"]
