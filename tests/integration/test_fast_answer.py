"""The exec answerer's compiled wait (collectors/enforcement/fast_answer.c) on the real kernel: a held exec
whose caller is placed by the lineage and whose answer is cached is answered there, allowed or
denied; anything else is handed back for the Python code to answer, and nothing is answered
twice or left held. In a real container, the keys the Python code caches are the ones the
compiled wait finds."""

from __future__ import annotations

import gc
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

import pytest

from collectors.enforcement.answerer_protocol import (
    Ask,
    Stop,
    VerdictMessage,
    decode_to_collector,
    encode,
)
from collectors.enforcement.cache_key import CacheKey, FastHold
from collectors.enforcement.exec_answerer import CACHED_BUCKETS, ExecAnswerer, Hold
from collectors.enforcement.fast_answer import FastAnswerLike, fast_answer
from collectors.enforcement.lineage import Lineage, Placement
from collectors.kernel.connector import EXIT, FORK, ProcConnector
from collectors.kernel.fanotify import Permission, PermissionGroup
from collectors.settings import CollectorSettings
from procwarden.testbed.containers import APP_LOOP, run_container
from schemas import Origin
from tests.integration.streamkit import WORKDIR

CONTAINER, STAMP = "c1", "stamp-1"


class Held:
    """A tmpfs whose execs a permission group holds, answered by the compiled wait in a thread;
    what it hands back is allowed (or denied, as `hand_back_allows` says) by this test and
    recorded."""

    def __init__(self, base: Path, kernel_cache: bool) -> None:
        self.mount = base / "held"
        self.mount.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(self.mount)], check=True)
        self.group = PermissionGroup()
        self.group.watch(str(self.mount))
        self.connector = ProcConnector(events=FORK | EXIT)
        self.lineage = Lineage()
        self.holds: dict[str, FastHold] = {}
        self.cache: OrderedDict[CacheKey, bool] = OrderedDict()
        fast = fast_answer(self.group.fd, self.lineage, self.holds, self.cache, CACHED_BUCKETS,
                           kernel_cache)
        assert fast is not None, "the compiled wait is not built (pip install -e .)"
        self.fast: FastAnswerLike = fast
        self.handed_back: list[int] = []  # pids
        self.failures: list[object] = []
        self.hand_back_allows = True
        self.connected = True  # the connector is passed to the wait
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                _, passed, failed = self.fast.wait(
                    self.connector.fileno() if self.connected else -1, [], 0.05)
            except OSError as exc:
                self.failures.append(exc)
                return  # the group's close lets whatever is held go
            if failed:
                self.failures.append(f"the connector failed: errno {failed}")
            for fd, pid in passed:
                self.handed_back.append(pid)
                self.group.answer(Permission(fd, pid), self.hand_back_allows)

    def program(self, name: str) -> str:
        path = self.mount / name
        shutil.copy("/usr/bin/true", path)
        return str(path)

    def key(self, path: str, *, injected: bool = False, netcat: bool = False) -> CacheKey:
        """As the answerer's `_key_of` builds it; the path as the kernel shows it."""
        return CacheKey(CONTAINER, STAMP, path, injected, Origin.IMAGE, netcat)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.group.close()
        self.connector.close()
        subprocess.run(["umount", "-l", str(self.mount)], check=False)
        assert not self.failures


@pytest.fixture
def held(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Held]:
    h = Held(tmp_path, kernel_cache=getattr(request, "param", False))
    # This test process is the container's, and so is every child it makes (the lineage
    # follows its forks from the connector): the caller of each exec below.
    h.lineage.place(os.getpid(), Placement(CONTAINER, True))
    h.holds[CONTAINER] = FastHold(STAMP, None, frozenset())
    try:
        yield h
    finally:
        h.close()


def run(path: str) -> int:
    return subprocess.run([path], check=False, timeout=10).returncode


def test_a_cached_allow_and_a_cached_deny_are_answered_compiled(held: Held) -> None:
    allowed, denied = held.program("allowed"), held.program("denied")
    held.cache[held.key(allowed)] = True
    held.cache[held.key(denied)] = False
    held.hand_back_allows = False  # anything handed back would fail: none may be
    assert run(allowed) == 0
    with pytest.raises(PermissionError):
        run(denied)
    assert held.handed_back == []
    counts = held.fast.counts()
    assert (counts["allowed"], counts["denied"]) == (1, 1)
    assert sum(counts["cached_answer"][:-1]) == 2 and counts["cached_answer"][-1] > 0
    assert counts["remembered"] == 0  # the kernel's cache is off here
    # a hit moves its key to the end, as the Python cache does (least recently used first)
    assert list(held.cache)[-1] == held.key(denied)


def test_what_is_not_cached_exactly_is_handed_back(held: Held, tmp_path: Path) -> None:
    path = held.program("prog")
    held.cache[held.key(path, injected=True)] = False  # another caller's answer
    held.cache[(CONTAINER, "stamp-0", path, False, Origin.IMAGE, False)] = False  # old policies
    assert run(path) == 0  # handed back, and allowed by this test
    assert len(held.handed_back) == 1

    # the file is in the container's upper layer: Python compares the layers
    upper = tmp_path / "upper"
    (upper / path.lstrip("/")).parent.mkdir(parents=True)
    (upper / path.lstrip("/")).write_bytes(b"x")
    held.holds[CONTAINER] = FastHold(STAMP, str(upper).encode(), frozenset())
    held.cache[held.key(path)] = True
    assert run(path) == 0
    assert len(held.handed_back) == 2

    # a workload not held before exec (none in `holds`), and a caller never placed
    held.holds.clear()
    assert run(path) == 0
    held.holds[CONTAINER] = FastHold(STAMP, None, frozenset())
    held.lineage.forget()
    assert run(path) == 0
    assert len(held.handed_back) == 4
    assert held.fast.counts()["allowed"] == 0


def test_without_the_connector_the_lineage_is_not_trusted(held: Held) -> None:
    """As in the Python code: no connector feeding it (failed, or closed), no placement from
    it, since a pid could have been reused unseen."""
    path = held.program("prog")
    held.cache[held.key(path)] = True
    held.connected = False
    time.sleep(0.2)  # the wait under way (0.05 s at most) was given the connector
    assert run(path) == 0
    assert len(held.handed_back) == 1 and held.fast.counts()["allowed"] == 0, held.fast.counts()


def test_a_netcat_path_is_its_own_key(held: Held) -> None:
    path = held.program("nc")
    held.holds[CONTAINER] = FastHold(STAMP, None, frozenset({path}))
    held.cache[held.key(path)] = True  # cached as not netcat: must not answer a netcat
    held.hand_back_allows = False
    with pytest.raises(PermissionError):
        run(path)
    held.cache[held.key(path, netcat=True)] = True
    assert run(path) == 0
    assert len(held.handed_back) == 1 and held.fast.counts()["allowed"] == 1


@pytest.mark.parametrize("held", [True], indirect=True)
def test_an_allowed_file_of_the_containers_own_is_remembered_by_the_kernel(held: Held
                                                                           ) -> None:
    own, linked = held.program("own"), held.program("linked")
    os.link(linked, held.mount / "second-name")
    held.cache[held.key(own)] = True
    held.cache[held.key(linked)] = True
    assert run(own) == 0 and run(linked) == 0
    assert held.fast.counts()["remembered"] == 1  # not the file with two names
    del held.cache[held.key(own)]
    held.hand_back_allows = False
    assert run(own) == 0  # not held at all: the kernel allowed it
    assert held.handed_back == [] and held.fast.counts()["allowed"] == 2

    # a runtime-injected caller's allowed exec is not remembered from the cache
    injected = held.program("injected")
    held.lineage.forget()
    held.lineage.place(os.getpid(), Placement(CONTAINER, False))
    held.cache[held.key(injected, injected=True)] = True
    assert run(injected) == 0 and run(injected) == 0
    assert held.fast.counts()["allowed"] == 4 and held.fast.counts()["remembered"] == 1


def test_the_lineage_is_fed_from_forks_and_exits(held: Held) -> None:
    """Children are placed through their creator, and an exited one is forgotten."""
    path = held.program("child")
    held.cache[held.key(path)] = True
    proc = subprocess.Popen(["sleep", "5"])
    try:
        assert run(path) == 0  # the wait drains the connector: sleep's fork is known
        creators, placed = held.lineage.tables()
        assert creators.get(proc.pid) == os.getpid()
    finally:
        proc.kill()
        proc.wait()
    assert run(path) == 0  # and this wake-up drains sleep's exit
    creators, placed = held.lineage.tables()
    assert proc.pid not in creators and proc.pid not in placed


def test_a_broken_group_is_an_error_not_a_spin() -> None:
    """The wait runs at a real-time priority: a group it cannot read must end the wait (the
    answerer's loop gives up after five), not return to polling at once."""
    group = PermissionGroup()
    fast = fast_answer(group.fd, Lineage(), {}, OrderedDict(), CACHED_BUCKETS, False)
    assert fast is not None
    group.close()
    with pytest.raises(OSError, match="fanotify group failed"):
        fast.wait(-1, [], 1.0)


def test_what_the_python_code_caches_the_compiled_wait_answers(tmp_path: Path) -> None:
    """A whole exec answerer, in this process, holding a real container's execs: the first
    exec of /bin/busybox is asked about (Python: a miss) and its verdict cached by the Python
    code; the container's later execs of it are answered by the compiled wait from that
    entry, with no second question."""
    settings = CollectorSettings(node="test", state_dir=tmp_path, kernel_cache=False,
                                 hold_realtime=False)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    asks: list[Ask] = []

    def collector() -> None:  # the collector's side: every question is allowed
        while True:
            try:
                data = ours.recv(1 << 20)
            except OSError:
                return
            if not data:
                return
            message = decode_to_collector(data)
            if isinstance(message, Ask):
                asks.append(message)
                ours.send(encode(VerdictMessage(message.event_id, True, "s1", False)))

    with run_container(WORKDIR, "fast", namespace="fa", command=APP_LOOP) as box:
        answerer = ExecAnswerer(settings, theirs)
        assert answerer._fast is not None
        threads = [threading.Thread(target=answerer.run), threading.Thread(target=collector)]
        for thread in threads:
            thread.start()
        try:
            ours.send(encode(Hold(True, "s1").message(box.id)))
            deadline = time.monotonic() + 10
            while box.id not in answerer._watched:  # its mount marked: execs held from now
                assert time.monotonic() < deadline
                time.sleep(0.01)
            # Three execs of /bin/busybox at least, one key. (BusyBox's own shell runs the
            # `sh -c` of the app loop, and applets by name, with or without an exec of its own:
            # the explicit path always execs.)
            line = "/bin/busybox true; /bin/busybox true; /bin/busybox true; echo ok"
            assert box.app(line) == (0, "ok\n")
            assert [(a.workload, a.path, a.injected, a.origin.value) for a in asks] == [
                (box.id, "/bin/busybox", False, "image")]
            # the Python code answered the first one, by its verdict, and nothing else
            assert answerer.metrics.snapshot()["answered"] == {"verdict allow": 1}
            assert answerer._fast.counts()["allowed"] >= 2
            # each answered by the compiled wait was placed by the lineage, and counted so
            snapshot = answerer.metrics.snapshot()
            answerer._add_fast_counts(snapshot)
            assert snapshot["placed"]["lineage"] >= 2 and snapshot["compiled"] >= 2
        finally:
            ours.send(encode(Stop()))
            threads[0].join(10)
            theirs.close()  # the collector's side reads the end of it
            threads[1].join(10)
            ours.close()


def test_an_answer_leaves_nothing_behind(held: Held) -> None:
    """The answerer runs for days: no reference may leak per answer (a key, a path, a pid)."""
    path = held.program("often")
    held.cache[held.key(path)] = True
    for _ in range(20):
        assert run(path) == 0
    gc.collect()
    blocks = sys.getallocatedblocks()
    for _ in range(300):
        assert run(path) == 0
    gc.collect()
    assert held.fast.counts()["allowed"] == 320 and held.handed_back == []
    # (a leak of one object per answer would be 300 blocks at least)
    assert sys.getallocatedblocks() - blocks < 100
    creators, placed = held.lineage.tables()
    assert len(creators) < 20 and len(placed) < 20  # each child's exit forgot it
