"""The collector's state folder says which workloads are held and spools command lines: only
root may read it, whatever the umask the collector was started with."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from collectors.agent import Collector
from collectors.enforcement.enforcer import Enforcer
from collectors.enforcement.exec_answerer import Hold
from collectors.sensing.workloads import WorkloadResolver
from collectors.settings import CollectorSettings
from schemas.connections import KafkaConnection
from transport import Health
from transport.signing import Keyring


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def _enforcer(state_dir: Path) -> Enforcer:
    settings = CollectorSettings(node="node-unit", state_dir=state_dir, dry_run=True)
    return Enforcer(settings, KafkaConnection(), WorkloadResolver(node="node-unit"),
                    lambda *a, **k: "", health=Health("unit-collector"),
                    cannot_go_on=lambda why: None,
                    keys=Keyring.generate().node_keys("node-unit"))


@pytest.mark.usefixtures("permissive_umask")
def test_holds_are_saved_private_with_no_readable_window(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = tmp_path / "var" / "collector"
    enforcer = _enforcer(state)
    seen: list[tuple[str, int]] = []
    replace = os.replace

    def checked_replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        # what is about to appear as holds.json, and the folder it is in, at that moment
        seen.append((os.fspath(src), _mode(Path(src))))
        seen.append((os.fspath(state), _mode(state)))
        replace(src, dst)

    monkeypatch.setattr(os, "replace", checked_replace)
    enforcer._set_hold("w1", Hold(True, "stamp-1"))
    enforcer._set_hold("w2", Hold(False, "stamp-2"))
    enforcer.forget("w1")
    assert seen, "holds.json is written by a rename"
    assert all(mode & 0o077 == 0 for _, mode in seen), seen
    assert _mode(state) == 0o700
    assert _mode(state / "holds.json") == 0o600
    assert sorted(p.name for p in state.iterdir()) == ["holds.json"]  # no temporary left


@pytest.mark.usefixtures("permissive_umask")
def test_a_state_folder_and_holds_left_readable_are_made_private(tmp_path: Path) -> None:
    state = tmp_path / "collector"
    state.mkdir(mode=0o755)
    (state / "holds.json").write_text("{}")
    os.chmod(state / "holds.json", 0o644)
    (state / "holds.tmp").write_text("old")  # an earlier crash mid-save, world-readable
    os.chmod(state / "holds.tmp", 0o666)
    _enforcer(state)._set_hold("w1", Hold(True, "stamp-1"))
    assert _mode(state) == 0o700
    assert _mode(state / "holds.json") == 0o600
    assert all(_mode(p) & 0o077 == 0 for p in state.iterdir())


@pytest.mark.usefixtures("permissive_umask")
def test_the_collector_makes_its_state_folder_private_at_start(tmp_path: Path) -> None:
    state = tmp_path / "var" / "collector"
    settings = CollectorSettings(state_dir=state, dry_run=True)
    collector = Collector(KafkaConnection(bootstrap_servers="127.0.0.1:9"), settings,
                          keys=Keyring.generate().node_keys(settings.node))
    try:
        assert _mode(state) == 0o700 and _mode(state / "spool") == 0o700
    finally:
        collector.publisher.close()
