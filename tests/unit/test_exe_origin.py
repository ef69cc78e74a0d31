"""Image, new or modified, from the overlay's layers: the container owns its upper layer, so
what the root collector opens there must stay in it, never block, and never follow a link out
(a link to a host file whose content equals the image's must not read as the image's)."""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from collectors.sensing.sensor import exe_origin
from collectors.sensing.workloads import ContainerInfo
from schemas import Origin

TOOL = b"\x7fELF the image's tool\n" * 100


def _refused(reason: str) -> float:
    return REGISTRY.get_sample_value("procwarden_collector_container_file_refused_total",
                                     {"reason": reason}) or 0.0


@pytest.fixture
def layers(tmp_path: Path) -> tuple[ContainerInfo, Path, Path]:
    upper, lower, host = tmp_path / "upper", tmp_path / "lower", tmp_path / "host"
    for d in (upper / "bin", lower / "bin", lower / "usr" / "bin", host / "bin"):
        d.mkdir(parents=True)
    (lower / "bin" / "tool").write_bytes(TOOL)
    (lower / "usr" / "bin" / "tool").write_bytes(TOOL)
    (host / "shadow").write_bytes(TOOL)  # a host file the container knows the content of
    (host / "bin" / "tool").write_bytes(TOOL)
    return ContainerInfo("c1", 0, {}, upper, (lower,)), upper, host


def _origin_within(info: ContainerInfo, exe: str, timeout_s: float = 5.0,
                   **kw: int) -> Origin | None:
    found: list[Origin] = []
    reader = threading.Thread(target=lambda: found.append(exe_origin(info, exe, **kw)),
                              daemon=True)
    reader.start()
    reader.join(timeout_s)
    return found[0] if found else None


def test_a_symlink_in_the_upper_layer_to_a_host_file_is_not_followed(
        layers: tuple[ContainerInfo, Path, Path]) -> None:
    info, upper, host = layers
    (upper / "bin" / "tool").symlink_to(host / "shadow")
    before = _refused("symlinks")
    assert _origin_within(info, "/bin/tool") is Origin.MODIFIED  # it read the host file: image
    assert _refused("symlinks") == before + 1


def test_a_symlinked_folder_in_the_upper_layer_is_not_followed(
        layers: tuple[ContainerInfo, Path, Path]) -> None:
    info, upper, host = layers
    (upper / "usr").symlink_to(host)  # upper/usr/bin/tool is the host's bin/tool
    assert _origin_within(info, "/usr/bin/tool") is Origin.MODIFIED


def test_a_fifo_in_the_upper_layer_does_not_hang_the_reader(
        layers: tuple[ContainerInfo, Path, Path]) -> None:
    info, upper, _ = layers
    (info.lowerdirs[0] / "bin" / "empty").write_bytes(b"")
    fifo = upper / "bin" / "empty"
    os.mkfifo(fifo)  # the same size as the image's file: compared by content
    try:
        assert _origin_within(info, "/bin/empty") is Origin.MODIFIED
    finally:  # a reader blocked in open() is let go, so a failure does not hang the run
        with contextlib.suppress(OSError):  # (no reader: nothing to let go)
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


def test_copies_up_are_still_told_apart(layers: tuple[ContainerInfo, Path, Path]) -> None:
    info, upper, _ = layers
    (upper / "bin" / "tool").write_bytes(TOOL)  # a chmod's copy-up: the image's content
    assert _origin_within(info, "/bin/tool") is Origin.IMAGE
    (upper / "bin" / "tool").write_bytes(TOOL[:-1] + b"!")
    assert _origin_within(info, "/bin/tool") is Origin.MODIFIED
    (upper / "bin" / "new").write_bytes(TOOL)
    assert _origin_within(info, "/bin/new") is Origin.NEW
    assert _origin_within(info, "/bin/never-there") is Origin.IMAGE


def test_a_copy_up_over_the_digest_cap_counts_as_modified(
        layers: tuple[ContainerInfo, Path, Path]) -> None:
    info, upper, _ = layers
    (upper / "bin" / "tool").write_bytes(TOOL)
    assert _origin_within(info, "/bin/tool", max_digest_bytes=len(TOOL)) is Origin.IMAGE
    assert _origin_within(info, "/bin/tool", max_digest_bytes=len(TOOL) - 1) is Origin.MODIFIED
