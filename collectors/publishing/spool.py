"""A disk spool for the collector's messages while Kafka is unreachable.

Records are appended, in order, to segment files under the state folder and replayed in that
order once Kafka is back; the files survive a collector restart. The spool is bounded: past
`max_bytes` new records are refused (the caller counts them as lost, never silently).

Record: `<u16 topic length><u16 key length><u32 value length>` then the three byte strings.
Segments are `spool-<sequence>.log`; a lower sequence is older. They hold what processes ran,
command lines included: the folder is 0700 and every segment 0600, whatever the umask (and
those an earlier version left readable are made so at start: `state_files`).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from collectors.publishing.state_files import open_appending, private_folder, write_private

__all__ = ["Spool", "SpoolRecord"]

_HEADER = struct.Struct("<HHI")
SpoolRecord = tuple[str, bytes, bytes]  # topic, key, value


class Spool:
    def __init__(self, folder: Path, max_bytes: int = 256 * 2**20,
                 segment_bytes: int = 16 * 2**20) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        private_folder(folder)
        self._out: BinaryIO | None = None
        self._out_path: Path | None = None
        self.size = sum(p.stat().st_size for p in self.segments())

    def segments(self) -> list[Path]:
        return sorted(self.folder.glob("spool-*.log"), key=_sequence)

    def __bool__(self) -> bool:
        return self.size > 0

    def append(self, topic: str, key: bytes, value: bytes) -> bool:
        """Spool one record; False when the spool is full."""
        record = _record(topic, key, value)
        if self.size + len(record) > self.max_bytes:
            return False
        out = self._writer(len(record))
        out.write(record)
        out.flush()
        self.size += len(record)
        return True

    def prepend(self, records: list[SpoolRecord]) -> None:
        """Records older than everything spooled (in flight when Kafka went away): a segment
        ahead of the others. Never refused: they were accepted already."""
        if not records:
            return
        first = min((_sequence(p) for p in self.segments()), default=1)
        path = self.folder / f"spool-{first - 1:012d}.log"
        data = b"".join(_record(*r) for r in records)
        write_private(path, data)
        self.size += len(data)

    def _writer(self, incoming: int) -> BinaryIO:
        if self._out is not None and self._out_path is not None \
                and self._out_path.stat().st_size + incoming > self.segment_bytes:
            self._close_writer()
        if self._out is None:
            last = max((_sequence(p) for p in self.segments()), default=0)
            self._out_path = self.folder / f"spool-{last + 1:012d}.log"
            self._out = open_appending(self._out_path)  # kept open across appends
        return self._out

    def _close_writer(self) -> None:
        if self._out is not None:
            self._out.flush()
            os.fsync(self._out.fileno())
            self._out.close()
        self._out = None
        self._out_path = None

    def drain(self) -> Iterator[tuple[Path, list[SpoolRecord]]]:
        """Each segment's records, oldest first; the caller `done`s a segment once sent."""
        self._close_writer()
        for path in self.segments():
            yield path, list(_records(path.read_bytes()))

    def done(self, path: Path) -> None:
        size = path.stat().st_size
        path.unlink()
        self.size = max(0, self.size - size)

    def close(self) -> None:
        self._close_writer()


def _record(topic: str, key: bytes, value: bytes) -> bytes:
    t = topic.encode()
    return _HEADER.pack(len(t), len(key), len(value)) + t + key + value


def _records(data: bytes) -> Iterator[SpoolRecord]:
    offset = 0
    while offset + _HEADER.size <= len(data):
        tl, kl, vl = _HEADER.unpack_from(data, offset)
        offset += _HEADER.size
        end = offset + tl + kl + vl
        if end > len(data):
            return  # a record cut short by a crash mid-write: the rest never was accepted
        # (a damaged name reads as an unknown topic: refused at replay, dropped and counted)
        topic = data[offset:offset + tl].decode(errors="replace")
        key = data[offset + tl:offset + tl + kl]
        value = data[offset + tl + kl:end]
        offset = end
        yield topic, key, value


def _sequence(path: Path) -> int:
    return int(path.stem.split("-", 1)[1])
