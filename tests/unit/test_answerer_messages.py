"""How a workload is held, as the collector tells the exec answerer: the same on both ends."""

from __future__ import annotations

import orjson
import pytest

from collectors.exec_answerer import Hold
from schemas import FailMode


@pytest.mark.parametrize("hold", [
    Hold(True, "s1"),
    Hold(True, "s2", writes=True, fail_mode=FailMode.CLOSED),
    Hold(False, "", fail_mode=FailMode.OPEN),
])
def test_a_hold_reads_back_as_it_was_sent(hold: Hold) -> None:
    wire = orjson.loads(orjson.dumps(hold.message("cid-1")))
    assert wire[0] == "hold"
    assert Hold.of_message(wire) == ("cid-1", hold)


def test_an_unknown_fail_mode_is_refused() -> None:
    with pytest.raises(ValueError):
        Hold.of_message(["hold", "cid-1", True, "s", False, "sometimes"])


@pytest.mark.parametrize(("saved", "hold"), [
    ([True, "s1"], Hold(True, "s1")),  # before writes and fail modes were held
    ([True, "s2", True, ""], Hold(True, "s2", writes=True)),  # "" was no fail mode
    ([False, "s3", False, "closed"], Hold(False, "s3", fail_mode=FailMode.CLOSED)),
])
def test_a_holds_file_of_an_earlier_collector_still_reads(saved: list[object], hold: Hold
                                                         ) -> None:
    assert Hold.of_fields(saved) == hold
    assert Hold.of_fields(Hold.of_fields(saved).fields()) == hold
