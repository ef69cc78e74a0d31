"""Process settings shared by the long-running roles (and the benchmarks that measure them)."""

from __future__ import annotations

import gc

__all__ = ["tune_gc"]


def tune_gc() -> None:
    """What was loaded at start is never collected, and young collections run less often. A
    batch of messages is many short-lived objects without cycles, and the default thresholds
    spent a fifth of the sink's time walking them (bench/sink.py)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
