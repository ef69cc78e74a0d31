"""Plumbing every stage shares the same way, beside `schemas`: the per-message guard and its
bounded dead letters. It imports `schemas` and nothing of `collectors`, `streams` or `sinks`."""

from transport.guard import (
    DEAD_LETTERS,
    DlqLimits,
    MessageGuard,
    Refused,
    bounded_text,
    dead_letter_entry,
    describe,
)

__all__ = ["DEAD_LETTERS", "DlqLimits", "MessageGuard", "Refused", "bounded_text",
           "dead_letter_entry", "describe"]
