"""Plumbing every stage shares the same way, beside `schemas`: the per-message guard with its
bounded dead letters, the health a role reports, the signatures of records
(`transport.signing`) and the start-up check of a role's Kafka access (`transport.preflight`).
It imports `schemas` and nothing of
`collectors`, `streams` or `sinks`."""

from transport.guard import (
    DEAD_LETTERS,
    DlqLimits,
    MessageGuard,
    Refused,
    bounded_text,
    dead_letter_entry,
    describe,
)
from transport.health import (
    HEALTH_FILE_ENV,
    Health,
    HealthReport,
    exit_unless_stopped,
    read_health,
)

__all__ = ["HEALTH_FILE_ENV", "Health", "HealthReport", "exit_unless_stopped", "read_health",
           "DEAD_LETTERS", "DlqLimits", "MessageGuard", "Refused", "bounded_text",
           "dead_letter_entry", "describe"]
