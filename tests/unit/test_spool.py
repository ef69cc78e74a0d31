"""The collector's disk spool: order, bounds, restarts, and records cut short by a crash."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from collectors.publishing.spool import Spool


def _all(spool: Spool) -> list[tuple[str, bytes, bytes]]:
    out = []
    for path, records in spool.drain():
        out += records
        spool.done(path)
    return out


def test_records_come_back_in_order_across_segments(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=200)
    sent = [("t.exec", f"w{i % 3}".encode(), f"value-{i}".encode() * 3) for i in range(40)]
    for record in sent:
        assert spool.append(*record)
    assert len(spool.segments()) > 3 and spool
    assert _all(spool) == sent
    assert not spool and spool.segments() == []


def test_bounded(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=100)
    assert spool.append("t", b"k", b"x" * 60)
    assert not spool.append("t", b"k", b"x" * 60)  # refused: the caller counts it as lost
    assert [r[2] for r in _all(spool)] == [b"x" * 60]


def test_survives_a_restart_and_prepended_records_go_first(tmp_path: Path) -> None:
    first = Spool(tmp_path)
    first.append("t", b"a", b"2")
    first.append("t", b"a", b"3")
    first.prepend([("t", b"a", b"0"), ("t", b"a", b"1")])  # in flight when Kafka went away
    first.close()
    again = Spool(tmp_path)
    assert again.size > 0
    again.append("t", b"a", b"4")
    assert [r[2] for r in _all(again)] == [b"0", b"1", b"2", b"3", b"4"]


def test_a_record_cut_short_is_dropped_not_misread(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append("t", b"k", b"whole")
    spool.close()
    (segment,) = spool.segments()
    segment.write_bytes(segment.read_bytes() + b"\x01\x00\x01\x00\xff")  # a torn header
    assert [r[2] for r in _all(Spool(tmp_path))] == [b"whole"]


def test_segments_are_private_whatever_the_umask(tmp_path: Path) -> None:
    folder = tmp_path / "spool"
    old = os.umask(0)
    try:
        spool = Spool(folder, segment_bytes=40)
        for i in range(3):
            spool.append("t", b"k", b"secret-argv" * (i + 1))
        spool.prepend([("t", b"k", b"in flight")])
        spool.close()
    finally:
        os.umask(old)
    assert len(spool.segments()) >= 3
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert {stat.S_IMODE(p.stat().st_mode) for p in spool.segments()} == {0o600}


def test_an_earlier_readable_spool_is_made_private(tmp_path: Path) -> None:
    first = Spool(tmp_path)
    first.append("t", b"k", b"v")
    first.close()
    (segment,) = first.segments()
    os.chmod(segment, 0o644)
    os.chmod(tmp_path, 0o755)
    Spool(tmp_path)
    assert stat.S_IMODE(segment.stat().st_mode) == 0o600
    assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o700


def test_a_damaged_topic_name_reads_without_raising(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append("t", b"k", b"v")
    spool.close()
    (segment,) = spool.segments()
    data = bytearray(segment.read_bytes())
    data[8] = 0xFF  # the topic name's one byte
    segment.write_bytes(bytes(data))
    assert [r[2] for r in _all(Spool(tmp_path))] == [b"v"]
