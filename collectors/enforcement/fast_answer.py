"""The typed face of the exec answerer's compiled wait (`fast_answer.c`, built by setup.py as
`collectors.enforcement._fast_answer`): it waits on the answerer's descriptors, feeds the lineage
from the process connector and answers each held exec whose answer is cached, reading and updating
the answerer's own tables; everything else it hands back to the Python code.

The tables' layouts are `cache_key.py`'s: handed to the C code by name, and its build's
LAYOUT_VERSION checked against KEY_LAYOUT_VERSION before it is used.
"""

from __future__ import annotations

import importlib
import logging
from collections import OrderedDict
from typing import Any, Protocol

from collectors.enforcement.cache_key import (
    HOLD_FIELDS,
    KEY_FIELDS,
    KEY_LAYOUT_VERSION,
    PLACEMENT_FIELDS,
    CacheKey,
    FastHold,
)
from collectors.enforcement.lineage import Lineage
from schemas import Origin

__all__ = ["FastAnswerLike", "fast_answer"]

log = logging.getLogger("procwarden.collector.fast_answer")


class FastAnswerLike(Protocol):
    def wait(self, connector_fd: int, others: list[int], timeout: float
             ) -> tuple[list[int], list[tuple[int, int]], int]:
        """Until one of `others` is ready, a held exec needs Python, or `timeout` seconds
        pass: (the ready ones, (fd, pid) of each held exec to answer, the errno the
        connector failed with or 0)."""

    def counts(self) -> dict[str, Any]:
        """Cumulative: allowed, denied (each placed by the lineage), remembered, read_errors
        (events the kernel could not give a descriptor for: it denied each held exec itself;
        counted, never raised), overflows (reads that found the kernel's queue overflowed),
        ignore_errno (the first failure to set an ignore mark), cached_answer (histogram
        counts, then their sum)."""

    def key_for(self, fd: int, pid: int) -> CacheKey | None:
        """The key a held exec of `fd` by `pid` is looked up by (a plain tuple, equal to the
        CacheKey Python builds), or None when it is Python's to answer."""


def fast_answer(group_fd: int, lineage: Lineage, holds: dict[str, FastHold],
                cache: OrderedDict[CacheKey, bool], buckets: tuple[float, ...], kernel_cache: bool
                ) -> FastAnswerLike | None:
    """The compiled wait over these tables; None (said once) when it was not built, or built
    from another layout than this code's (then every held exec is answered in Python, by the
    same rules)."""
    try:
        module = importlib.import_module("collectors.enforcement._fast_answer")
    except ImportError as exc:
        log.warning("no compiled wait (%s): every held exec is answered in Python; "
                    "`pip install -e .` builds it", exc)
        return None
    built = getattr(module, "LAYOUT_VERSION", None)
    if built != KEY_LAYOUT_VERSION:
        log.error("the compiled wait was built for cache key layout %s, this code's is %d: "
                  "every held exec is answered in Python; `pip install -e .` rebuilds it",
                  built, KEY_LAYOUT_VERSION)
        return None
    creators, placed = lineage.tables()
    fast: FastAnswerLike = module.FastAnswer(
        group_fd=group_fd, creators=creators, placed=placed, holds=holds, cache=cache,
        image=Origin.IMAGE, buckets=buckets, kernel_cache=kernel_cache,
        lineage_limit=lineage.limit, key_fields=KEY_FIELDS, hold_fields=HOLD_FIELDS,
        placement_fields=PLACEMENT_FIELDS)
    return fast
