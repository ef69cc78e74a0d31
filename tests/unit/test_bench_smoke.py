"""The benchmarks run and report their figures (correctness of the scripts, never timings)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

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
