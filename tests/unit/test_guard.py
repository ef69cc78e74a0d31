"""The per-message guard: whatever a handler raises becomes one bounded dead letter."""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from schemas import DecodeError, DlqEntry, Envelope, decode_envelope, encode
from transport import DlqLimits, MessageGuard, Refused, dead_letter_entry, describe

WHERE = {"topic": "procwarden.exec", "partition": 3, "offset": 41, "key": b"wl-1"}


def test_a_handler_that_raises_is_dead_lettered_and_the_guard_returns() -> None:
    letters: list[DlqEntry] = []
    guard = MessageGuard("test", letters.append, clock=lambda: 7.0)

    def boom() -> None:
        raise RecursionError("maximum recursion depth exceeded")

    assert guard.run(boom, value=b"[[[[", **WHERE) is None
    assert guard.run(lambda: 5, value=b"{}", **WHERE) == 5
    (entry,) = letters
    assert (entry.topic, entry.partition, entry.offset, entry.key) == ("procwarden.exec", 3, 41,
                                                                      "wl-1")
    assert entry.error == "handling failed: RecursionError: maximum recursion depth exceeded"
    assert entry.value == "[[[[" and entry.value_length == 4 and not entry.truncated
    assert entry.value_sha256 == hashlib.sha256(b"[[[[").hexdigest()
    assert entry.stage == "test" and entry.ts == 7.0 and guard.refused == 1


def test_codec_errors_and_refusals_are_invalid_messages() -> None:
    letters: list[DlqEntry] = []
    guard = MessageGuard("test", letters.append)

    def refuse() -> None:
        raise Refused("not a verdict for this node")

    guard.run(lambda: decode_envelope(b"{"), value=b"{", **WHERE)
    guard.run(refuse, value=b"{}", **WHERE)
    assert letters[0].error.startswith("invalid message: not valid JSON")
    assert letters[1].error == "invalid message: not a verdict for this node"


def test_a_huge_message_makes_a_small_dead_letter() -> None:
    # 400 KB of control characters: each one is six bytes once JSON-escaped, and the error
    # quotes the input; the DLQ record must still be far below a producer's 1 MB.
    value = b"\x01" * 400_000
    entry = dead_letter_entry(stage="s", topic="t", partition=0, offset=0, key=b"k" * 10_000,
                              value=value, error="bad: " + value.decode() * 3, ts=0.0)
    wire = encode(Envelope.wrap(entry, event_id="dlq:t:0:0", node="s", ts=0.0))
    assert len(wire) < 120_000
    assert entry.truncated and entry.value_length == 400_000
    assert len(entry.value.encode()) == DlqLimits().value_bytes
    assert entry.value_sha256 == hashlib.sha256(value).hexdigest()
    assert decode_envelope(wire).payload == entry


def test_a_dead_letter_that_cannot_be_published_is_counted_not_raised() -> None:
    def broken(_: DlqEntry) -> None:
        raise BufferError("queue full")

    guard = MessageGuard("test", broken)
    assert guard.run(lambda: decode_envelope(b"x"), value=b"x", **WHERE) is None
    assert guard.refused == 1


def test_the_async_guard_awaits_its_dead_letter() -> None:
    letters: list[DlqEntry] = []

    async def publish(entry: DlqEntry) -> None:
        await asyncio.sleep(0)
        letters.append(entry)

    async def handle() -> int:
        raise ValueError("no")

    guard = MessageGuard("test", publish)
    assert asyncio.run(guard.run_async(handle, value=b"v", **WHERE)) is None
    assert [e.error for e in letters] == ["handling failed: ValueError: no"]


class _Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str")


@pytest.mark.parametrize(("exc", "expected"), [
    (DecodeError("payload.argv[2]", "expected a string"), "payload.argv[2]: expected a string"),
    (KeyError("x"), "KeyError: 'x'"),
    (_Unprintable(), "_Unprintable"),
], ids=["codec", "other", "unprintable"])
def test_describe(exc: BaseException, expected: str) -> None:
    assert describe(exc) == expected
    assert len(describe(ValueError("y" * 10_000), 50)) < 100
