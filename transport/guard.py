"""The per-message guard: no message can stop a consumer.

Every consumer (the event decider, the Faust agents, the policy mirror, the collector's verdict
reader, the ClickHouse sink, the SIEM forwarder) runs the handling of each message inside
`MessageGuard`. Whatever that handling raises (the codec's `DecodeError`, a `RecursionError`
from a hostile nesting, a bug) becomes one dead letter, and the loop takes the next message.

A dead letter is bounded whatever the message was: the value is kept up to
`DlqLimits.value_bytes`, with its full length and sha256 so the original can be found again on
its topic, and the error text is cut to `DlqLimits.error_chars` (an error may quote the input).
The largest DLQ record is therefore a few times `value_bytes` (JSON escaping), far below a
producer's 1 MB limit: the DLQ cannot be used to amplify one message into a crash.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from prometheus_client import Counter

from schemas import DecodeError, DlqEntry

__all__ = ["DEAD_LETTERS", "DlqLimits", "MessageGuard", "Refused", "bounded_text",
           "dead_letter_entry", "describe"]

log = logging.getLogger("procwarden.transport")

T = TypeVar("T")

DEAD_LETTERS = Counter("procwarden_dead_letters_total",
                       "Messages a stage refused or failed to handle (each one dead-lettered)",
                       ["stage", "topic", "reason"])


class Refused(Exception):
    """Raised by a handler for a message it will not act on, with the reason for the DLQ."""


_ERROR_CHARS = 1024


@dataclass(frozen=True, slots=True)
class DlqLimits:
    value_bytes: int = 16 * 1024  # of the refused message's value kept in the dead letter
    key_bytes: int = 512
    error_chars: int = _ERROR_CHARS


def bounded_text(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, saying how long it was when cut."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… (cut, {len(text)} characters)"


def describe(exc: BaseException, limit: int = _ERROR_CHARS) -> str:
    """An exception in a few words, bounded: the codec's errors as they read, others by type."""
    if isinstance(exc, DecodeError | Refused):
        text = str(exc)
    else:
        try:
            text = f"{type(exc).__name__}: {exc}"
        except Exception:  # an exception whose str() fails is still a dead letter
            text = type(exc).__name__
    return bounded_text(text, limit)


def dead_letter_entry(*, stage: str, topic: str, partition: int, offset: int,
                      key: bytes | None, value: bytes | None, error: str, ts: float,
                      limits: DlqLimits = DlqLimits()) -> DlqEntry:
    """The bounded DLQ record of one refused message."""
    raw = value or b""
    raw_key = key or b""
    kept, kept_key = raw[:limits.value_bytes], raw_key[:limits.key_bytes]
    cut_error = bounded_text(error, limits.error_chars)
    return DlqEntry(topic=topic, partition=partition, offset=offset, error=cut_error,
                    key=kept_key.decode(errors="replace"), value=kept.decode(errors="replace"),
                    ts=ts, value_length=len(raw), value_sha256=hashlib.sha256(raw).hexdigest(),
                    truncated=(len(kept) < len(raw) or len(kept_key) < len(raw_key)
                               or cut_error is not error),
                    stage=stage)


class MessageGuard:
    """Runs each message's handling; anything it raises is dead-lettered and counted.

    `dead_letter` receives the bounded entry (to publish it on the DLQ topic, or, where a stage
    may not write there, to count and log it). If `dead_letter` itself fails, that is logged and
    counted too: the guard never raises for a message.
    """

    def __init__(self, stage: str, dead_letter: Callable[[DlqEntry], object],
                 *, limits: DlqLimits = DlqLimits(),
                 clock: Callable[[], float] = time.time) -> None:
        self.stage = stage
        self.dead_letter = dead_letter
        self.limits = limits
        self.clock = clock
        self.refused = 0

    def run(self, handle: Callable[[], T], *, topic: str, partition: int, offset: int,
            key: bytes | None, value: bytes | None) -> T | None:
        """`handle()`'s result, or None once the message was dead-lettered."""
        try:
            return handle()
        except Exception as exc:
            self.refuse(exc, topic=topic, partition=partition, offset=offset, key=key,
                        value=value)
            return None

    async def run_async(self, handle: Callable[[], Awaitable[T]], *, topic: str,
                        partition: int, offset: int, key: bytes | None,
                        value: bytes | None) -> T | None:
        try:
            return await handle()
        except Exception as exc:
            entry = self.refuse(exc, topic=topic, partition=partition, offset=offset, key=key,
                                value=value, publish=False)
            await self._publish_async(entry)
            return None

    def refuse(self, exc: BaseException, *, topic: str, partition: int, offset: int,
               key: bytes | None, value: bytes | None, publish: bool = True) -> DlqEntry:
        """Dead-letter one message for `exc` (also for callers with a loop of their own)."""
        self.refused += 1
        reason = "invalid" if isinstance(exc, DecodeError | Refused) else "failed"
        DEAD_LETTERS.labels(self.stage, topic, reason).inc()
        error = describe(exc, self.limits.error_chars)
        if reason == "invalid":
            log.warning("%s: to the DLQ: %s[%d]@%d: %s", self.stage, topic, partition, offset,
                        error[:200])
        else:  # a failure of the stage's own code: keep its traceback in the log
            log.error("%s: handling %s[%d]@%d failed, to the DLQ: %s", self.stage, topic,
                      partition, offset, error[:200], exc_info=exc)
        entry = dead_letter_entry(stage=self.stage, topic=topic, partition=partition,
                                  offset=offset, key=key, value=value,
                                  error=("invalid message: " if reason == "invalid" else
                                         "handling failed: ") + error,
                                  ts=self.clock(), limits=self.limits)
        if publish:
            try:
                self.dead_letter(entry)
            except Exception:
                self._lost(entry)
        return entry

    async def _publish_async(self, entry: DlqEntry) -> None:
        try:
            result = self.dead_letter(entry)
            if isinstance(result, Awaitable):
                await result
        except Exception:
            self._lost(entry)

    def _lost(self, entry: DlqEntry) -> None:
        DEAD_LETTERS.labels(self.stage, entry.topic, "dlq_failed").inc()
        log.exception("%s: the dead letter of %s[%d]@%d could not be published", self.stage,
                      entry.topic, entry.partition, entry.offset)
