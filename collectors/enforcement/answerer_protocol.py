"""What the collector and its exec answerer (`exec_answerer.py`, through `answerer_link.py`) say
to each other: one JSON object per datagram of their socket pair, its `kind` naming a message
below and every other member a field of it.

    collector -> answerer   hold, verdict, forget, stop
    answerer -> collector   ask, drift, metrics

A message of a kind the receiver does not take, a field missing, unknown or of the wrong type, an
enum value not in its enum: each is a `ProtocolError`, never guessed at. Both ends are the same
installed code, so a refusal is a bug (or a stale process), said in the receiver's log.

msgspec encodes and checks these as it does the records (schemas/): about as cheap as the
positional lists they replace (the answerer sends a message for each first-seen exec it holds,
and reads one for each verdict; a cached answer sends none).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from collectors.enforcement.cache_key import CacheKey
from schemas import FailMode, FileEvent, Origin

__all__ = ["Ask", "Counts", "Drift", "Forget", "Hold", "HoldMessage", "Metrics",
           "ProtocolError", "Stop", "ToAnswerer", "ToCollector", "VerdictMessage",
           "decode_to_answerer", "decode_to_collector", "encode"]


class ProtocolError(ValueError):
    """A datagram that is not a message its receiver takes."""


@dataclass(frozen=True)
class Hold:
    """How a workload is held, as its latest `HoldSettings` record says: kept by the collector
    (and across its restarts, in its holds.json), told to the answerer."""

    pre_exec: bool  # its execs are held before they run
    stamp: str  # the policies its cached answers were given under
    writes: bool = False  # drift writes denied before they happen (zero-drift, held)
    fail_mode: FailMode | None = None  # the group's; None: the collector's setting

    def fields(self) -> list[Any]:
        """As plain JSON, for the collector's holds.json."""
        return [self.pre_exec, self.stamp, self.writes,
                self.fail_mode.value if self.fail_mode else None]

    @staticmethod
    def of_fields(fields: list[Any]) -> Hold:
        """The reverse of `fields`; also of a holds.json saved before writes and fail modes
        were held (two fields), or with "" for no fail mode."""
        pre_exec, stamp, *rest = fields
        writes = bool(rest and rest[0])
        fail_mode = FailMode(rest[1]) if len(rest) > 1 and rest[1] else None
        return Hold(bool(pre_exec), str(stamp), writes, fail_mode)

    def message(self, workload_id: str) -> HoldMessage:
        return HoldMessage(workload_id, self.pre_exec, self.stamp, self.writes, self.fail_mode)


class _Message(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="kind",
               gc=False):
    pass


# -- collector -> answerer ---------------------------------------------------------------------

class HoldMessage(_Message, frozen=True, tag="hold"):
    """How `workload` is held from now on (its cached answers go when its stamp changes)."""

    workload: str
    pre_exec: bool
    stamp: str
    writes: bool
    fail_mode: FailMode | None

    @property
    def hold(self) -> Hold:
        return Hold(self.pre_exec, self.stamp, self.writes, self.fail_mode)


class VerdictMessage(_Message, frozen=True, tag="verdict"):
    """The verdict on the exec_check the answerer asked for as `event_id`."""

    event_id: str
    allow: bool
    stamp: str  # the policies it was given under
    any_caller: bool  # the kernel may remember it whoever execs the file


class Forget(_Message, frozen=True, tag="forget"):
    """`workload`'s container is gone."""

    workload: str


class Stop(_Message, frozen=True, tag="stop"):
    """Answer what is held by its fail mode, and exit."""


# -- answerer -> collector ---------------------------------------------------------------------

class Ask(_Message, frozen=True, tag="ask"):
    """Publish an exec_check under `event_id`: the exec is held until its verdict."""

    event_id: str
    pid: int
    workload: str
    path: str  # UTF-8: a byte of the file's name that is not, as U+FFFD (see `held`)
    injected: bool  # runtime-injected: not of the container's root process's family
    origin: Origin
    netcat: bool

    @staticmethod
    def held(event_id: str, pid: int, key: CacheKey) -> Ask:
        """The question for a held exec of `key`. A name that is not UTF-8 is read with its
        bytes as lone surrogates, which JSON cannot carry: the question (and so the exec_check
        and the rules it is matched against) has U+FFFD for each, as the collector reads a
        command line; the held exec stays under its exact key."""
        path = key.path
        if not path.isascii():
            path = path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        return Ask(event_id, pid, key.workload, path, key.injected, key.origin, key.netcat)


class Drift(_Message, frozen=True, tag="drift"):
    """A write the answerer's write guard denied: publish it."""

    write: FileEvent


class Counts(msgspec.Struct, frozen=True, forbid_unknown_fields=True, gc=False):
    """The answerer's cumulative counters (`exec_answerer._Metrics`, with the compiled wait's)."""

    answered: dict[str, int]  # "<source> <allow|deny>" -> execs
    placed: dict[str, int]  # lineage | proc -> execs
    opens: dict[str, int]  # allow | deny -> held opens
    remembered: int
    forgotten: int
    held: int
    over_budget: dict[str, int]  # workload -> first-seen execs answered beyond its budget
    verdict_wait: list[int | float]  # bucket counts (not cumulative), then their sum
    cached_answer: list[int | float]
    read_errors: int
    overflows: int
    compiled: int = 0  # answered by the compiled wait (in `answered` too)


class Metrics(_Message, frozen=True, tag="metrics"):
    counts: Counts


ToAnswerer = HoldMessage | VerdictMessage | Forget | Stop
ToCollector = Ask | Drift | Metrics

_ENCODER = msgspec.json.Encoder()
_TO_ANSWERER = msgspec.json.Decoder(ToAnswerer)
_TO_COLLECTOR = msgspec.json.Decoder(ToCollector)


def encode(message: ToAnswerer | ToCollector) -> bytes:
    return _ENCODER.encode(message)


def decode_to_answerer(data: bytes) -> ToAnswerer:
    try:
        return _TO_ANSWERER.decode(data)
    except msgspec.DecodeError as exc:  # (ValidationError is one)
        raise ProtocolError(f"not a message to the answerer: {exc}") from None


def decode_to_collector(data: bytes) -> ToCollector:
    try:
        return _TO_COLLECTOR.decode(data)
    except msgspec.DecodeError as exc:
        raise ProtocolError(f"not a message to the collector: {exc}") from None
