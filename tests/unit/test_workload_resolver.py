"""Which container a cgroup belongs to, as runc creates it: the resolver must never keep calling
a container the host once runc has written its state (a CI run lost a container's first execs
to the host workload that way: its init ran in its cgroup before state.json existed)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from collectors.kernel.procfs import ArgvLimits, bound_argv
from collectors.sensing.workloads import ContainerInfo, WorkloadResolver

CID = "pw-shop-0123456789"


def _write_state(root: Path, cid: str) -> None:
    folder = root / cid
    folder.mkdir(exist_ok=True)
    (folder / "state.json").write_text(json.dumps({
        "init_process_pid": 0, "config": {"labels": ["io.kubernetes.pod.namespace=shop"]}}))


def _resolver(root: Path) -> WorkloadResolver:
    return WorkloadResolver(node="node-1", runtime_roots=(str(root),))


def test_a_container_whose_state_is_being_written_is_found_once_it_is(tmp_path: Path) -> None:
    resolver = _resolver(tmp_path)
    (tmp_path / CID).mkdir()  # runc made the folder; its init already runs in the cgroup
    assert resolver.container(CID) is None
    _write_state(tmp_path, CID)
    info = resolver.container(CID)
    assert info is not None and info.annotations == {"io.kubernetes.pod.namespace": "shop"}


def test_a_host_cgroup_is_remembered_until_a_container_folder_appears(tmp_path: Path) -> None:
    resolver = _resolver(tmp_path)
    assert resolver.container(CID) is None
    # Remembered: the same root, unchanged, is not searched again (a state file slipped in
    # without touching the root's time is not seen, which proves the lookup was skipped).
    stamp = os.stat(tmp_path).st_mtime_ns
    _write_state(tmp_path, CID)
    os.utime(tmp_path, ns=(stamp, stamp))
    assert resolver.container(CID) is None
    # A folder coming or going changes the root: the leaf is looked up again at once.
    (tmp_path / "another").mkdir()
    assert resolver.container(CID) is not None


def test_a_runtime_root_created_later_is_searched_within_a_second(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "run-runc"
    resolver = _resolver(root)
    assert resolver.container(CID) is None
    root.mkdir()
    _write_state(root, CID)
    # which roots exist is looked up once a second (a host exec must stay cheap)
    later = time.monotonic() + 1.5
    monkeypatch.setattr(time, "monotonic", lambda: later)
    assert resolver.container(CID) is not None


PROBES = [["mysql", "-uprobe", "-pS3cretPw", "-e", "select 1"],
          ["sh", "-c", "curl -fsS -u admin:hunter2 http://127.0.0.1/health"],
          ["redis-cli", "-a", "r3dis-pass", "ping"]]


def _with_probes(probes: object) -> ContainerInfo:
    return ContainerInfo("c-probes", 0, {"procwarden.io/probes": json.dumps(probes),
                                         "io.kubernetes.pod.name": "db-0"}, None, ())


def test_probe_commands_are_announced_masked_as_argv_is() -> None:
    workload = WorkloadResolver(node="node-1", runtime_roots=()).workload(_with_probes(PROBES))
    announced = json.dumps(workload.probe_cmds)
    for secret in ("S3cretPw", "hunter2", "r3dis-pass"):
        assert secret not in announced
    # exactly what an exec event of the same probe carries, so the worker still matches it
    assert workload.probe_cmds == tuple(bound_argv("\0".join(p).encode(), False)[0]
                                        for p in PROBES)


def test_probe_commands_are_kept_whole_with_full_cmdline_and_capped_as_argv_is() -> None:
    unmasked = WorkloadResolver(node="node-1", runtime_roots=(),
                                argv_limits=ArgvLimits(mask=False))
    assert unmasked.workload(_with_probes(PROBES)).probe_cmds == tuple(map(tuple, PROBES))
    capped = WorkloadResolver(node="node-1", runtime_roots=(), argv_limits=ArgvLimits(max_args=3))
    long_probe = ["check", *[f"a{i}" for i in range(100)]]
    assert capped.workload(_with_probes([long_probe])).probe_cmds == (("check", "a0", "a1"),)
