"""Kafka topics: names, what keys them, partition counts and retention.

The partition counts are for one development node; `deploy/` shows the arithmetic for a fleet and
how to override them (`TopicSpec.partitions` is a default, not a limit).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ALL_TOPICS", "COLLECTOR_REPORTS", "DLQ", "EXEC", "FILE", "POLICY", "POLICY_UPDATES",
           "PROCESS_STATE", "PROFILE_CHANGES", "SECURITY_EVENTS", "TopicSpec", "VERDICTS",
           "WORKLOADS", "verdict_partition"]


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    key: str  # what the message key is
    partitions: int
    compacted: bool = False
    retention_ms: int = 7 * 24 * 3600 * 1000


WORKLOADS = TopicSpec("procwarden.workloads", "workload id", 6, compacted=True)
EXEC = TopicSpec("procwarden.exec", "workload id", 12)
FILE = TopicSpec("procwarden.file", "workload id", 6)
POLICY = TopicSpec("procwarden.policy", "group name", 1, compacted=True)
POLICY_UPDATES = TopicSpec("procwarden.policy-updates", "group name", 6)
VERDICTS = TopicSpec("procwarden.verdicts", "node name", 12, retention_ms=24 * 3600 * 1000)
SECURITY_EVENTS = TopicSpec("procwarden.security-events", "group name", 6,
                            retention_ms=30 * 24 * 3600 * 1000)
DLQ = TopicSpec("procwarden.dlq", "source topic", 1, retention_ms=30 * 24 * 3600 * 1000)
# What each accepted edit or learned rule changed, with who/what/why, for the sinks.
PROFILE_CHANGES = TopicSpec("procwarden.profile-changes", "group name", 6,
                            retention_ms=30 * 24 * 3600 * 1000)
# Each collector's running totals: events seen, reported, lost by reason, spool size.
COLLECTOR_REPORTS = TopicSpec("procwarden.collector-reports", "node name", 1)
# The stream app's per-workload process state, restored by every worker at start.
PROCESS_STATE = TopicSpec("procwarden.process-state", "workload id", 6, compacted=True)

ALL_TOPICS = (WORKLOADS, EXEC, FILE, POLICY, POLICY_UPDATES, VERDICTS, SECURITY_EVENTS, DLQ,
              PROFILE_CHANGES, COLLECTOR_REPORTS, PROCESS_STATE)


def verdict_partition(node: str, partitions: int) -> int:
    """The verdicts partition a node reads: the same murmur2 hash Kafka's default partitioner uses
    for the key, so producers that key by node and collectors that pick their partition agree."""
    return (_murmur2(node.encode()) & 0x7FFFFFFF) % partitions


def _murmur2(data: bytes) -> int:
    # Kafka's murmur2 (seed 0x9747b28c), as in the Java client's Utils.murmur2.
    length = len(data)
    m = 0x5BD1E995
    h = (0x9747B28C ^ length) & 0xFFFFFFFF
    for i in range(0, length - length % 4, 4):
        k = int.from_bytes(data[i:i + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> 24
        k = (k * m) & 0xFFFFFFFF
        h = (h * m) & 0xFFFFFFFF
        h ^= k
    rest = length % 4
    tail = length - rest
    if rest == 3:
        h ^= data[tail + 2] << 16
    if rest >= 2:
        h ^= data[tail + 1] << 8
    if rest >= 1:
        h ^= data[tail]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h
