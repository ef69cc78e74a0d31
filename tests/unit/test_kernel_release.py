"""Which kernels take a process-connector listener's choice of events (`struct proc_input`,
Linux 6.6): an older one would drop the listen message and send nothing."""

from __future__ import annotations

import pytest

from collectors.kernel.connector import kernel_filters


@pytest.mark.parametrize(("release", "filters"), [
    ("6.18.44-fc-v782", True),
    ("6.6.0", True),
    ("7.0-rc1", True),
    ("6.5.13-200.fc38.x86_64", False),
    ("6.1.0-28-amd64", False),
    ("5.15.0-91-generic", False),
    ("4.19", False),
    ("6", False),  # unreadable: the safe side, every event
    ("custom", False),
])
def test_filtering_starts_with_6_6(release: str, filters: bool) -> None:
    assert kernel_filters(release) is filters
