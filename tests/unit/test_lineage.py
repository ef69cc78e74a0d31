"""Placing a held exec by its lineage (collectors/enforcement/lineage.py): what a placed process makes is
placed with it, a host creator never places anything, and an exit or a lost message forgets."""

from __future__ import annotations

from collectors.enforcement.lineage import Lineage, Placement
from collectors.kernel.connector import EXEC, EXIT, FORK, ProcEvent

SHOP = Placement("pw-shop", family=True)
INJECTED = Placement("pw-shop", family=False)


def fork(parent: int, child: int) -> ProcEvent:
    return ProcEvent(FORK, child, child, parent)


def exit_(pid: int) -> ProcEvent:
    return ProcEvent(EXIT, pid, pid)


def test_a_placed_process_places_what_it_forks_and_their_children() -> None:
    lineage = Lineage()
    lineage.place(100, SHOP)
    lineage.feed([fork(100, 101), ProcEvent(EXEC, 101, 101), fork(101, 102)])
    assert lineage.placement(101) == SHOP
    assert lineage.placement(102) == SHOP  # through 101, placed on the way
    lineage.place(200, INJECTED)
    lineage.feed([fork(200, 201)])
    assert lineage.placement(201) == INJECTED  # not family stays not family


def test_an_unplaced_creator_places_nothing() -> None:
    # `runc exec`: the runtime (a host process, never placed) forks the child and moves it
    # into the container: the child must be read from /proc.
    lineage = Lineage()
    lineage.feed([fork(50, 51)])
    assert lineage.placement(51) is None
    assert lineage.placement(50) is None


def test_an_exit_forgets_the_pid_so_a_reused_one_is_read_again() -> None:
    lineage = Lineage()
    lineage.place(100, SHOP)
    lineage.feed([fork(100, 101), exit_(101), exit_(100), fork(7, 100)])
    assert lineage.placement(101) is None
    assert lineage.placement(100) is None  # a new process under an old pid, made on the host


def test_threads_do_not_change_lineage() -> None:
    lineage = Lineage()
    lineage.place(100, SHOP)
    lineage.feed([ProcEvent(FORK, 105, 100, 100), ProcEvent(EXIT, 105, 100)])
    assert lineage.placement(100) == SHOP


def test_lost_messages_forget_everything() -> None:
    lineage = Lineage()
    lineage.place(100, SHOP)
    lineage.feed([fork(100, 101)])
    lineage.forget()
    assert lineage.placement(100) is None
    assert lineage.placement(101) is None


def test_memory_is_bounded() -> None:
    lineage = Lineage(limit=10)
    for pid in range(1, 100):
        lineage.place(pid, SHOP)
        lineage.feed([fork(pid, 1000 + pid)])
    assert len(lineage) <= 11
    assert lineage.placement(99) == SHOP and lineage.placement(1) is None
