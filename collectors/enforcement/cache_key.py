"""The exec answerer's cache key, and the tables its compiled wait (`fast_answer.c`) reads to
build the same key: defined once, here.

The C code is handed these layouts as it is created (`fast_answer.py`): the key's field names in
their order, the fields of a held workload's entry and of a placement. It builds each key in the
order given, finds each entry's fields by name, and refuses a name it does not know. What names
cannot say (what each field means: `injected` is "not of the root process's family", an origin
answered there is always the image's) is `KEY_LAYOUT_VERSION`: the C module is built with the
version it implements, and a build of another version is not used. Change the meaning of a field
here, or what the C code puts in it, and bump both (tests/unit/test_fast_answer_keys.py builds
keys both ways).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from collectors.enforcement.lineage import Placement
from schemas import Origin

__all__ = ["HOLD_FIELDS", "KEY_FIELDS", "KEY_LAYOUT_VERSION", "PLACEMENT_FIELDS", "CacheKey",
           "FastHold", "cache_key", "fast_hold"]

KEY_LAYOUT_VERSION = 1


class CacheKey(NamedTuple):
    """Everything pre_exec_decide reads from the collector, plus the policies it was answered
    under. (The C code builds plain tuples: equal to these, and of the same hash.)"""

    workload: str
    stamp: str  # the policies of the workload's hold
    path: str  # as readlink of the held descriptor says (undecodable bytes: surrogateescape)
    injected: bool  # not of the container's root process's family
    origin: Origin
    netcat: bool  # the path is one of the container's netcats


class FastHold(NamedTuple):
    """A workload held before exec, as the compiled wait needs it to build a key."""

    stamp: str
    upper: bytes | None  # its overlay's upper layer (None: no upper layer: all the image's)
    netcats: frozenset[str]


KEY_FIELDS: tuple[str, ...] = CacheKey._fields
HOLD_FIELDS: tuple[str, ...] = FastHold._fields
PLACEMENT_FIELDS: tuple[str, ...] = Placement._fields


def cache_key(workload: str, stamp: str, path: str, family: bool, origin: Origin,
              netcats: frozenset[str]) -> CacheKey:
    """The key of an exec of `path` in `workload` by a process of the root process's family or
    not, the file's origin as read."""
    return CacheKey(workload, stamp, path, not family, origin, path in netcats)


def fast_hold(stamp: str, upperdir: Path | None, netcats: frozenset[str]) -> FastHold:
    """A held workload's entry, its upper layer as `sensing.exe_origin` joins it to a path."""
    return FastHold(stamp, str(upperdir).encode() if upperdir is not None else None, netcats)
