"""The exec answerer's compiled wait (collectors/enforcement/fast_answer.c) builds the same cache keys as the
Python answerer: an answer cached by either is found by both, for any path, workload, stamp,
family or netcat. The compiled module is the one `pip install -e .` builds (./pw and CI do): if it
is missing these tests fail, they never skip."""

from __future__ import annotations

import importlib
import logging
import os
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import pytest

from collectors.enforcement.cache_key import (
    HOLD_FIELDS,
    KEY_FIELDS,
    KEY_LAYOUT_VERSION,
    PLACEMENT_FIELDS,
    CacheKey,
    FastHold,
    cache_key,
    fast_hold,
)
from collectors.enforcement.exec_answerer import CACHED_BUCKETS
from collectors.enforcement.fast_answer import FastAnswerLike, fast_answer
from collectors.enforcement.lineage import Lineage, Placement
from collectors.sensing.sensor import exe_origin
from collectors.sensing.workloads import ContainerInfo
from schemas import Origin

PID = 4242  # any: the lineage is the test's own


@pytest.fixture
def compiled() -> ModuleType:
    return importlib.import_module("collectors.enforcement._fast_answer")  # ImportError: a failure


class Tables:
    """The answerer's tables and its compiled wait over them, made as ExecAnswerer makes them."""

    def __init__(self) -> None:
        self.lineage = Lineage()
        self.holds: dict[str, FastHold] = {}
        self.cache: OrderedDict[CacheKey, bool] = OrderedDict()
        fast = fast_answer(-1, self.lineage, self.holds, self.cache, CACHED_BUCKETS, True)
        assert fast is not None, "the compiled wait did not load"
        self.fast: FastAnswerLike = fast

    def hold(self, info: ContainerInfo, stamp: str, netcats: frozenset[str]) -> None:
        self.holds[info.id] = fast_hold(stamp, info.upperdir, netcats)

    def python_key(self, info: ContainerInfo, fd: int, stamp: str, family: bool,
                   netcats: frozenset[str]) -> CacheKey:
        """As ExecAnswerer._key_of builds it (the path as Permission.path reads it)."""
        path = os.readlink(f"/proc/self/fd/{fd}")
        return cache_key(info.id, stamp, path, family, exe_origin(info, path), netcats)


@pytest.fixture
def tables(compiled: ModuleType) -> Tables:
    return Tables()


@contextmanager
def opened(path: Path | bytes) -> Iterator[int]:
    fd = os.open(path, os.O_RDONLY)
    try:
        yield fd
    finally:
        os.close(fd)


def _info(workload: str = "c" * 64, upper: Path | None = None) -> ContainerInfo:
    return ContainerInfo(id=workload, init_pid=1, annotations={}, upperdir=upper, lowerdirs=())


def _long_file(root: Path, length: int) -> Path:
    """A file whose absolute path is `length` bytes long (folders of at most 200 bytes)."""
    path = root
    while len(str(path)) + 1 + 200 < length - 1:
        path = path / ("d" * 199)
    path.mkdir(parents=True, exist_ok=True)
    target = path / ("f" * (length - len(str(path)) - 1))
    assert len(str(target)) == length
    target.write_bytes(b"")
    return target


def _files(root: Path) -> list[Path | bytes]:
    plain = root / "bin" / "sh"
    plain.parent.mkdir()
    plain.write_bytes(b"")
    names: list[Path | bytes] = [plain]
    for name in ("with space", "new\nline", "tab\tand\x1b[31m", "ünïcødé ✓", "nc (deleted)",
                 "-", "a" * 255):
        (root / name).write_bytes(b"")
        names.append(root / name)
    raw = os.fsencode(root) + b"/bad-\xff\xfe-utf8"  # not UTF-8: surrogateescape on both sides
    with open(raw, "wb"):
        pass
    names.append(raw)
    names.extend(_long_file(root / "long", n) for n in (1024, 4000, 4094))
    return names


def test_the_build_is_of_this_code_s_layout(compiled: ModuleType) -> None:
    assert compiled.LAYOUT_VERSION == KEY_LAYOUT_VERSION
    assert KEY_FIELDS == ("workload", "stamp", "path", "injected", "origin", "netcat")
    assert HOLD_FIELDS == ("stamp", "upper", "netcats")
    assert PLACEMENT_FIELDS == ("container", "family")


@pytest.mark.parametrize("family", [True, False])
@pytest.mark.parametrize("netcat", [True, False])
def test_every_path_gets_the_python_key(tables: Tables, tmp_path: Path, family: bool,
                                        netcat: bool) -> None:
    info = _info()
    tables.lineage.place(PID, Placement(info.id, family))
    for file in _files(tmp_path):
        with opened(file) as fd:
            path = os.readlink(f"/proc/self/fd/{fd}")
            netcats = frozenset({path} if netcat else {"/bin/nc"})
            tables.hold(info, "stamp-1", netcats)
            expected = tables.python_key(info, fd, "stamp-1", family, netcats)
            built = tables.fast.key_for(fd, PID)
            assert built is not None, path
            assert built == expected and hash(built) == hash(expected), (path, built)
            assert [type(v) for v in built] == [type(v) for v in expected]
            assert expected.injected is not family and expected.netcat is netcat
            # an answer Python cached is found under the compiled key, and the other way round
            tables.cache.clear()
            tables.cache[expected] = True
            assert tables.cache.get(built) is True


@pytest.mark.parametrize(("workload", "stamp"), [
    ("c" * 64, ""), ("c" * 64, "s" * 300), ("ns/pod:container", "stamp with space"),
    ("host:node-1", "ü-stamp"), ("", "s"),
])
def test_each_workload_and_stamp_is_keyed_as_python_keys_it(
        tables: Tables, tmp_path: Path, workload: str, stamp: str) -> None:
    info = _info(workload)
    (tmp_path / "app").write_bytes(b"")
    tables.lineage.place(PID, Placement(workload, True))
    tables.hold(info, stamp, frozenset())
    with opened(tmp_path / "app") as fd:
        expected = tables.python_key(info, fd, stamp, True, frozenset())
        assert tables.fast.key_for(fd, PID) == expected
        # another stamp (the policies changed) is another key, on both sides
        tables.hold(info, stamp + "+", frozenset())
        assert tables.fast.key_for(fd, PID) != expected


def test_a_creator_s_placement_keys_its_child(tables: Tables, tmp_path: Path) -> None:
    info = _info()
    (tmp_path / "app").write_bytes(b"")
    creators, _ = tables.lineage.tables()
    creators[PID] = PID - 1
    tables.lineage.place(PID - 1, Placement(info.id, False))
    tables.hold(info, "s", frozenset())
    with opened(tmp_path / "app") as fd:
        assert tables.fast.key_for(fd, PID) == tables.python_key(info, fd, "s", False,
                                                                 frozenset())
    assert tables.lineage.placement(PID) == Placement(info.id, False)


def test_a_file_of_the_upper_layer_is_left_to_python(tables: Tables, tmp_path: Path) -> None:
    upper, root = tmp_path / "upper", tmp_path / "root"
    info = _info(upper=upper)
    tables.lineage.place(PID, Placement(info.id, True))
    tables.hold(info, "s", frozenset())
    (root / "bin").mkdir(parents=True)
    for name in ("image-file", "new-file"):
        (root / "bin" / name).write_bytes(b"")
    with opened(root / "bin" / "image-file") as fd:  # not in the upper layer: the image's
        path = os.readlink(f"/proc/self/fd/{fd}")
        expected = tables.python_key(info, fd, "s", True, frozenset())
        assert expected.origin is Origin.IMAGE
        assert tables.fast.key_for(fd, PID) == expected
    with opened(root / "bin" / "new-file") as fd:
        path = os.readlink(f"/proc/self/fd/{fd}")
        (upper / path.lstrip("/")).parent.mkdir(parents=True)
        (upper / path.lstrip("/")).write_bytes(b"new")
        assert tables.python_key(info, fd, "s", True, frozenset()).origin is Origin.NEW
        assert tables.fast.key_for(fd, PID) is None


def test_what_is_not_held_or_placed_is_left_to_python(tables: Tables, tmp_path: Path) -> None:
    info = _info()
    (tmp_path / "app").write_bytes(b"")
    with opened(tmp_path / "app") as fd:
        assert tables.fast.key_for(fd, PID) is None  # not placed
        tables.lineage.place(PID, Placement(info.id, True))
        assert tables.fast.key_for(fd, PID) is None  # placed, its workload not held
        tables.hold(info, "s", frozenset())
        assert tables.fast.key_for(fd, PID) is not None


def test_the_key_follows_the_python_layout(compiled: ModuleType, tmp_path: Path) -> None:
    """The C code takes its key's order from cache_key.py, not from a copy of its own."""
    lineage, holds = Lineage(), {"w": FastHold("s", None, frozenset())}
    creators, placed = lineage.tables()
    lineage.place(PID, Placement("w", True))
    fast = compiled.FastAnswer(
        group_fd=-1, creators=creators, placed=placed, holds=holds, cache=OrderedDict(),
        image=Origin.IMAGE, buckets=CACHED_BUCKETS, kernel_cache=True, lineage_limit=10,
        key_fields=KEY_FIELDS[::-1], hold_fields=HOLD_FIELDS, placement_fields=PLACEMENT_FIELDS)
    (tmp_path / "app").write_bytes(b"")
    with opened(tmp_path / "app") as fd:
        assert fast.key_for(fd, PID) == (False, Origin.IMAGE, False, str(tmp_path / "app"), "s",
                                         "w")


@pytest.mark.parametrize(("key_fields", "hold_fields", "placement_fields"), [
    ((*KEY_FIELDS, "euid"), HOLD_FIELDS, PLACEMENT_FIELDS),  # a field this build cannot fill
    (KEY_FIELDS[:-1], HOLD_FIELDS, PLACEMENT_FIELDS),
    (("workload", "workload", *KEY_FIELDS[2:]), HOLD_FIELDS, PLACEMENT_FIELDS),
    (KEY_FIELDS, ("stamp", "upper", "netcat_paths"), PLACEMENT_FIELDS),
    (KEY_FIELDS, HOLD_FIELDS, ("container",)),
])
def test_a_layout_the_build_does_not_know_is_refused(
        compiled: ModuleType, key_fields: tuple[str, ...], hold_fields: tuple[str, ...],
        placement_fields: tuple[str, ...]) -> None:
    with pytest.raises(ValueError, match="rebuild"):
        compiled.FastAnswer(
            group_fd=-1, creators={}, placed={}, holds={}, cache=OrderedDict(),
            image=Origin.IMAGE, buckets=CACHED_BUCKETS, kernel_cache=True, lineage_limit=10,
            key_fields=key_fields, hold_fields=hold_fields, placement_fields=placement_fields)


def test_a_build_of_another_layout_version_is_not_used(
        compiled: ModuleType, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(compiled, "LAYOUT_VERSION", KEY_LAYOUT_VERSION + 1)
    with caplog.at_level(logging.ERROR, "procwarden.collector.fast_answer"):
        assert fast_answer(-1, Lineage(), {}, OrderedDict(), CACHED_BUCKETS, True) is None
    assert "answered in Python" in caplog.text
