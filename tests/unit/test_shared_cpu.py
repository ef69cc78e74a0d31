"""Which CPU the held-exec answering thread shares with the sensing thread."""

from __future__ import annotations

import pytest

from collectors.settings import CollectorSettings
from collectors.shared_cpu import choose_cpu


def test_auto_takes_the_highest_allowed_cpu() -> None:
    assert choose_cpu("auto", {0, 1, 5}) == 5
    assert choose_cpu("auto", {2}) == 2


def test_off_and_an_empty_set_leave_scheduling_alone() -> None:
    assert choose_cpu("off", {0, 1}) is None
    assert choose_cpu("auto", set()) is None


def test_a_named_cpu_must_be_one_the_collector_may_use() -> None:
    assert choose_cpu(1, {0, 1}) == 1
    assert choose_cpu(0, {0, 1}) == 0
    with pytest.raises(ValueError, match=r"CPU 3 is not one this collector may run on "
                                         r"\(allowed: \[0, 1\]\)"):
        choose_cpu(3, {0, 1})


@pytest.mark.parametrize(("raw", "parsed"), [("auto", "auto"), ("off", "off"), ("0", 0)])
def test_the_setting_reads_auto_off_or_a_cpu(monkeypatch: pytest.MonkeyPatch, raw: str,
                                             parsed: object) -> None:
    monkeypatch.setenv("COLLECTOR_HOLD_CPU", raw)
    assert CollectorSettings().hold_cpu == parsed


def test_anything_else_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLLECTOR_HOLD_CPU", "fastest")
    with pytest.raises(ValueError, match="hold_cpu"):
        CollectorSettings()


def test_a_cpu_the_collector_may_not_use_is_refused_at_start(monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    monkeypatch.setenv("COLLECTOR_HOLD_CPU", "4096")
    with pytest.raises(ValueError, match="CPU 4096 is not one this collector may run on"):
        CollectorSettings()
