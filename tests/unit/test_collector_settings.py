"""The collector's settings reach the parts that read what a workload controls."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from collectors.agent import Collector
from collectors.sensing.container_files import DEFAULT_MAX_BYTES
from collectors.settings import CollectorSettings
from schemas.connections import KafkaConnection
from transport.signing import Keyring


def test_the_workload_file_cap_is_a_setting_with_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    assert CollectorSettings().workload_file_max_bytes == DEFAULT_MAX_BYTES
    monkeypatch.setenv("COLLECTOR_WORKLOAD_FILE_MAX_BYTES", "4096")
    assert CollectorSettings().workload_file_max_bytes == 4096
    for bad in ("0", "100", str(64 * 2**20)):
        monkeypatch.setenv("COLLECTOR_WORKLOAD_FILE_MAX_BYTES", bad)
        with pytest.raises(ValidationError, match="workload_file_max_bytes"):
            CollectorSettings()


def test_the_collector_reads_workload_files_up_to_the_setting(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLLECTOR_WORKLOAD_FILE_MAX_BYTES", "8192")
    monkeypatch.setenv("COLLECTOR_ORIGIN_DIGEST_MAX_BYTES", "12345")
    monkeypatch.setenv("COLLECTOR_MAX_ARGS", "17")
    settings = CollectorSettings(state_dir=tmp_path, dry_run=True)
    collector = Collector(KafkaConnection(bootstrap_servers="127.0.0.1:9"), settings,
                          keys=Keyring.generate().node_keys(settings.node))
    try:
        assert collector.resolver.max_file_bytes == 8192
        # copied-up files are hashed (exe_origin) up to COLLECTOR_ORIGIN_DIGEST_MAX_BYTES
        assert collector.sensor.origin_digest_max_bytes == 12345
        # the enforcer names users (exec_check events) with the same resolver
        assert collector.enforcer is not None and collector.enforcer.resolver is collector.resolver
        assert collector.escalations.resolver is collector.resolver
        # escalation events read argv with the exec events' caps (COLLECTOR_MAX_*)
        assert collector.escalations.limits is collector.sensor.limits
        assert collector.sensor.limits.max_args == 17
        # and the workload announcements' probe commands with the same caps and masking
        assert collector.resolver.argv_limits is collector.sensor.limits
        assert collector.sensor.limits.mask  # unless COLLECTOR_FULL_CMDLINE
    finally:
        collector.publisher.close()
