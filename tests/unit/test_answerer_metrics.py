"""The exec answerer's counters as the collector's /metrics shows them: its snapshots, carried
on across a restart of the answerer, histograms in Prometheus's cumulative form."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from collectors.enforcement.answerer_link import AnswererMetrics
from collectors.enforcement.exec_answerer import CACHED_BUCKETS, VERDICT_BUCKETS, _Metrics


def _registry() -> tuple[AnswererMetrics, CollectorRegistry]:
    metrics = AnswererMetrics()
    registry = CollectorRegistry()
    registry.register(metrics)
    return metrics, registry


def _answerer(cache_allows: int, cached: list[float], held: int = 0) -> _Metrics:
    m = _Metrics()
    m.answered["cache", True] = cache_allows
    m.answered["timeout", False] = 1
    m.placed["lineage"] = cache_allows
    m.opens["deny"] = 2
    m.remembered, m.forgotten, m.held = 3, 1, held
    for seconds in cached:
        m.cached_answer.observe(seconds)
    m.verdict_wait.observe(0.003)
    return m


def test_a_snapshot_is_shown_with_its_labels_and_buckets() -> None:
    metrics, registry = _registry()
    metrics.update(_answerer(5, [0.00004, 0.00015, 0.0003, 9.0], held=2).snapshot())
    value = registry.get_sample_value
    assert value("procwarden_collector_pre_exec_total", {"source": "cache", "answer": "allow"}
                 ) == 5
    assert value("procwarden_collector_pre_exec_total", {"source": "timeout", "answer": "deny"}
                 ) == 1
    assert value("procwarden_collector_held_placed_total", {"by": "lineage"}) == 5
    assert value("procwarden_collector_guarded_opens_total", {"answer": "deny"}) == 2
    assert value("procwarden_collector_kernel_remembered_total") == 3
    assert value("procwarden_collector_kernel_forgotten_total") == 1
    assert value("procwarden_collector_held_execs") == 2
    name = "procwarden_collector_cached_answer_seconds"
    assert len(CACHED_BUCKETS) == 8
    assert value(f"{name}_bucket", {"le": "2e-05"}) == 0
    assert value(f"{name}_bucket", {"le": "5e-05"}) == 1
    assert value(f"{name}_bucket", {"le": "0.0002"}) == 2
    assert value(f"{name}_bucket", {"le": "0.0005"}) == 3
    assert value(f"{name}_bucket", {"le": "0.005"}) == 3
    assert value(f"{name}_bucket", {"le": "+Inf"}) == 4  # 9 s: above every bucket
    assert value(f"{name}_count") == 4
    assert abs(value(f"{name}_sum") - 9.00049) < 1e-9  # type: ignore[operator]
    assert len(VERDICT_BUCKETS) == 13
    assert value("procwarden_collector_verdict_wait_seconds_bucket", {"le": "0.0025"}) == 0
    assert value("procwarden_collector_verdict_wait_seconds_bucket", {"le": "0.005"}) == 1


def test_a_bucket_takes_a_value_equal_to_its_bound() -> None:
    metrics, registry = _registry()
    metrics.update(_answerer(1, [0.0001]).snapshot())
    name = "procwarden_collector_cached_answer_seconds_bucket"
    assert registry.get_sample_value(name, {"le": "5e-05"}) == 0
    assert registry.get_sample_value(name, {"le": "0.0001"}) == 1


def test_counters_carry_on_across_a_restarted_answerer() -> None:
    metrics, registry = _registry()
    metrics.update(_answerer(5, [0.0001], held=4).snapshot())
    metrics.answerer_gone()
    value = registry.get_sample_value
    assert value("procwarden_collector_pre_exec_total", {"source": "cache", "answer": "allow"}
                 ) == 5
    assert value("procwarden_collector_held_execs") == 0  # nothing is held by a dead one
    metrics.update(_answerer(2, [0.0001, 0.0001], held=1).snapshot())
    assert value("procwarden_collector_pre_exec_total", {"source": "cache", "answer": "allow"}
                 ) == 7
    assert value("procwarden_collector_cached_answer_seconds_count") == 3
    assert value("procwarden_collector_kernel_remembered_total") == 6
    assert value("procwarden_collector_held_execs") == 1


def test_nothing_sent_yet_shows_zeros() -> None:
    _, registry = _registry()
    assert registry.get_sample_value("procwarden_collector_held_execs") == 0
    assert registry.get_sample_value("procwarden_collector_cached_answer_seconds_count") == 0
    assert registry.get_sample_value("procwarden_collector_kernel_remembered_total") == 0
