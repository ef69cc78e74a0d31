"""The benchmarks run and report their figures (correctness of the scripts, never timings)."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from schemas import (
    Decision,
    Envelope,
    EventKind,
    ExecEvent,
    Incident,
    Verdict,
    decode_envelope,
    encode,
)

ROOT = Path(__file__).resolve().parents[2]


def test_decide_benchmark_reports_every_profile() -> None:
    result = subprocess.run([sys.executable, "bench/decide.py", "--events", "3000",
                             "--repeats", "1"], cwd=ROOT, capture_output=True, text=True,
                            timeout=300, check=True)
    out = result.stdout
    for rules in (10, 100, 1000):
        line = next(ln for ln in out.splitlines() if ln.strip().startswith(f"{rules} rules:"))
        counts = [int(n) for n in re.findall(r"'\w+': (\d+)", line)]
        assert sum(counts) == 3000
        assert "'block'" in line and "'allow'" in line
    assert "target: 100-rule decide >= 200,000/s" in out
    assert "target: 1000-rule at most 2x slower" in out


def test_signing_benchmark_reports_both_sides_beside_its_baseline() -> None:
    result = subprocess.run([sys.executable, "bench/signing.py", "--events", "2000"],
                            check=False, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "2,000 exec events" in out
    for line in ("baseline: decode + decide", "worker side:", "collector side:", "target:"):
        assert line in out, out
    assert re.search(r"worker side: .* = [\d.]+% of the baseline", out), out


# -- bench/fuzz.py: CI's short run, and proof that it catches what it is for -------------------


def _fuzz() -> Any:
    from bench import fuzz
    return fuzz


def test_fuzz_bench_runs_every_path_and_finds_no_foreign_exception() -> None:
    result = subprocess.run([sys.executable, "bench/fuzz.py", "--count", "2000", "--baseline",
                             "300", "--seed", "7", "--workers", "2"], check=False, cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "foreign exceptions: 0 (must be 0" in out
    assert "inputs tried: 2,000" in out
    tombstones = int(re.search(r"\btombstone (\d+)", out).group(1))  # type: ignore[union-attr]
    for path in _fuzz().PATHS:
        line = next(ln for ln in out.splitlines() if ln.startswith(path + " "))
        tried = int(re.search(r"tried\s+([\d,]+)", line).group(1).replace(",", ""))  # type: ignore[union-attr]
        # (the codec's bytes path leaves out tombstones: there is nothing to decode)
        assert tried == (2_000 - tombstones if path == _fuzz().CODEC else 2_000), line
        assert "| foreign 0 |" in line
        assert re.search(r"slowest [\d.]+ (us|ms|s) \| baseline valid median [\d.]+", line)
    for mutation in ("nesting", "huge_string", "unicode", "raw", "number", "flip", "truncate",
                     "bad_utf8", "duplicate_key", "random", "empty", "wrong_type", "enum"):
        assert re.search(rf"\b{mutation} [1-9]", out), mutation


def test_fuzz_bench_reports_an_exception_escaping_a_consumer(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from sinks.siem.forwarder import SiemForwarder

    wanted = SiemForwarder.wanted

    def planted(self: SiemForwarder, incident: Incident) -> bool:  # outside the SIEM's guard
        if incident.count >= 0:  # (any incident that decodes)
            raise ZeroDivisionError("planted")
        return wanted(self, incident)

    monkeypatch.setattr(SiemForwarder, "wanted", planted)
    fuzz = _fuzz()
    assert fuzz.main(["--count", "600", "--baseline", "0", "--seed", "3", "--workers", "1"]) == 1
    out = capsys.readouterr().out
    assert re.search(r"FOREIGN sink\.siem, raised, [1-9][\d,]* time\(s\): ZeroDivisionError", out)
    assert "foreign exceptions: 0 " not in out
    line = next(ln for ln in out.splitlines() if ln.startswith("sink.siem "))
    assert "| foreign 0 |" not in line
    others = [ln for ln in out.splitlines() if ln.split(" ")[0] in fuzz.PATHS
              and not ln.startswith("sink.siem ")]
    assert len(others) == len(fuzz.PATHS) - 1 and all("| foreign 0 |" in ln for ln in others)


def test_fuzz_bench_reports_a_codec_exception_other_than_decode_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from schemas.codec import decode_json

    def planted(data: bytes | str, where: str = "") -> Any:
        if data[:1] in (b"[", "["):
            raise IndexError("planted")
        return decode_json(data, where)

    monkeypatch.setattr("schemas.envelope.decode_json", planted)  # the envelope's slow path
    fuzz = _fuzz()
    hostile, _ = fuzz.run(600, 3, baseline=0, workers=1)
    assert hostile.foreign[fuzz.CODEC] > 0
    assert any(sig[0] == fuzz.CODEC and sig[2] == "IndexError" for sig in hostile.findings)
    # the consumers' guards took it as a failure of their own code, and nothing escaped them
    assert hostile.caught[fuzz.EVENT] > 0 and hostile.caught[fuzz.COLLECTOR] > 0
    assert all(hostile.foreign[p] == 0 for p in fuzz.PATHS if p != fuzz.CODEC)


def test_fuzz_bench_reports_a_failure_a_guard_caught_and_strict_fails_on_it(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from collectors.enforcement.enforcer import Enforcer

    def planted(self: Enforcer, d: Decision) -> None:
        raise RuntimeError("planted")

    monkeypatch.setattr(Enforcer, "on_verdict", planted)
    fuzz = _fuzz()
    args = ["--count", "600", "--baseline", "100", "--seed", "3", "--workers", "1"]
    assert fuzz.main(args) == 0  # caught and dead-lettered: the contract holds
    out = capsys.readouterr().out
    assert re.search(r"CAUGHT collector\.verdict_reader, caught by its guard, [1-9][\d,]* "
                     r"time\(s\): RuntimeError: planted", out)
    assert fuzz.main([*args, "--strict"]) == 1


def test_the_fuzzed_collector_records_kills_and_makes_none(tmp_path: Path) -> None:
    fuzz = _fuzz()
    victim = subprocess.Popen(["sleep", "60"])
    try:
        consumers = fuzz.Consumers(tmp_path)
        # a verdict acted on answers an exec this collector published (issue 22)
        start = 4242
        consumers.enforcer.published("e1", ExecEvent(workload_id="c-web-1", pid=victim.pid,
                                                     path="/bin/sleep", start_time=start))
        block = Decision(event_id="e1", event_kind=EventKind.EXEC, workload_id="c-web-1",
                         node=fuzz.NODE, verdict=Verdict.BLOCK, reason="violation:R0", pid=victim.pid,
                         start_time=start)
        value = encode(Envelope.wrap(block, event_id="v1", node=fuzz.NODE, ts=1.0))
        asyncio.run(consumers.paths[fuzz.COLLECTOR](fuzz.Input(value, b"k", "verdict", "valid"),
                                                    1))
        assert consumers.enforcer.kills == [victim.pid]
        assert victim.poll() is None  # still running
    finally:
        victim.kill()
        victim.wait()


def test_fuzz_inputs_are_the_same_for_the_same_seed_and_valid_ones_decode() -> None:
    fuzz = _fuzz()
    assert list(fuzz.inputs(5, 0, 300, valid=False)) == list(fuzz.inputs(5, 0, 300, valid=False))
    assert list(fuzz.inputs(5, 0, 50, valid=False)) != list(fuzz.inputs(6, 0, 50, valid=False))
    kinds = set()
    for item in fuzz.inputs(5, 0, 2000, valid=True):
        kinds.add(decode_envelope(item.value).kind)
    assert kinds == set(EventKind)  # every kind, built from the schema's own types
