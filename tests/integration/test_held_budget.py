"""Held-exec budgets per workload, on a whole exec answerer in this process (its fanotify
group is real, so this needs root; no container, no Kafka): what `on_permission` answers at
once and what it holds, for a workload flooding it and for its neighbour."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from collectors.enforcement.cache_key import CacheKey
from collectors.enforcement.exec_answerer import ExecAnswerer, Hold
from collectors.kernel.fanotify import Permission
from collectors.settings import CollectorSettings
from schemas import FailMode, Origin

FLOOD, NEIGHBOUR = "c-flood", "c-neighbour"


class Answered(list[tuple[int, bool, str]]):
    pass


@pytest.fixture
def answerer(tmp_path: Path) -> Iterator[tuple[ExecAnswerer, Answered]]:
    settings = CollectorSettings(node="test", state_dir=tmp_path, fast_answers=False,
                                 hold_realtime=False, max_held=8, max_held_per_workload=3,
                                 fail_mode=FailMode.OPEN)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    a = ExecAnswerer(settings, theirs)
    answered = Answered()
    a._answer = lambda event, allow, source, remember=False: answered.append(  # type: ignore
        (event.fd, allow, source))
    for workload in (FLOOD, NEIGHBOUR):
        a._holds[workload] = Hold(True, "s1", fail_mode=FailMode.OPEN)
    # which workload and file each fake exec (its fd number) is: no /proc read
    a._key_of = lambda event: _key(event.fd)  # type: ignore[method-assign]
    try:
        yield a, answered
    finally:
        if a.group is not None:
            a.group.close()
        if a.writes is not None:
            a.writes.close()
        ours.close()
        theirs.close()


def _key(fd: int) -> CacheKey:
    workload = FLOOD if fd < 1000 else NEIGHBOUR
    return CacheKey(workload, "s1", f"/tmp/f{fd % 100}", False, Origin.NEW, False)


def test_a_workload_over_its_budget_is_denied_and_its_neighbour_still_held(
        answerer: tuple[ExecAnswerer, Answered]) -> None:
    a, answered = answerer
    for fd in range(10):  # ten first-seen execs of the flood: three held, seven denied
        a.on_permission(Permission(fd, 100 + fd))
    assert [(fd, allow, source) for fd, allow, source in answered] == [
        (fd, False, "over-budget") for fd in range(3, 10)]
    assert a.metrics.snapshot()["over_budget"] == {FLOOD: 7}
    answered.clear()
    # a repeat of a held exec counts too (it would otherwise grow one held key without bound)
    a.on_permission(Permission(100, 200))  # /tmp/f0 again
    assert answered == [(100, False, "over-budget")]
    answered.clear()
    a.on_permission(Permission(1000, 300))  # the neighbour's first-seen exec: held
    assert answered == [] and len(a._pending) == 4
    # verdicts free the flood's budget
    event_id = next(e for e, p in a._pending.items() if p.key[2] == "/tmp/f0")
    a.released(event_id, False, "s1", False)
    assert answered == [(0, False, "verdict")]
    answered.clear()
    a.on_permission(Permission(50, 400))  # /tmp/f50: within the budget again
    assert answered == [] and a._held_by[FLOOD] == 3


def test_over_budget_mode_open_allows(answerer: tuple[ExecAnswerer, Answered]) -> None:
    a, answered = answerer
    a.settings = a.settings.model_copy(update={"over_budget_mode": FailMode.OPEN})
    for fd in range(4):
        a.on_permission(Permission(fd, 100 + fd))
    assert answered == [(3, True, "over-budget")]


def test_the_budget_must_stay_below_the_node_ceiling() -> None:
    with pytest.raises(ValueError, match="below max_held"):
        CollectorSettings(node="t", max_held=64, max_held_per_workload=64)
