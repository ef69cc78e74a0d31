"""The exec answerer as the collector starts it (issue 21), on the real kernel, without the stack:
its descriptor limit is raised to COLLECTOR_ANSWERER_MAX_FILES (each held exec holds one; out of
them, the kernel denies the node's held execs itself), up to the hard limit and never lowered."""

from __future__ import annotations

import subprocess
import sys

from tests.integration.streamkit import ROOT

# The collector's side, with the limit it inherits set first: the answerer's own limits then.
_HARNESS = """
import resource, sys, time
from collectors.enforcement.answerer_link import AnswererLink
from collectors.enforcement.answerer_protocol import Stop
from collectors.settings import CollectorSettings
inherited, target, hard = (int(arg) for arg in sys.argv[1:4])
resource.setrlimit(resource.RLIMIT_NOFILE, (inherited, hard))  # root may raise its hard limit
link = AnswererLink(CollectorSettings(node="limits", fast_answers=False,
                                      answerer_max_files=target), lambda: None, lambda m: None)
link._spawn()
assert link.process is not None
soft_now, hard_now = resource.prlimit(link.process.pid, resource.RLIMIT_NOFILE)
time.sleep(0.5)  # it runs (it did not exit on the limit)
link.send(Stop())
print(soft_now, hard_now, link.process.wait(10))
"""


HARD = 8192  # the collector's hard limit in these tests (set by the harness: it runs as root)


def _answerer_limits(inherited: int, target: int) -> tuple[int, int]:
    out = subprocess.run([sys.executable, "-I", "-c", _HARNESS, str(inherited), str(target),
                          str(HARD)],
                         check=True, timeout=30, cwd=ROOT, capture_output=True, text=True)
    soft, hard, code = (int(x) for x in out.stdout.split())
    assert code == 0, out.stderr
    return soft, hard


def test_the_answerers_descriptor_limit_is_raised_to_the_setting() -> None:
    soft, hard = _answerer_limits(inherited=512, target=4096)
    assert soft == 4096
    assert hard == HARD


def test_the_answerers_descriptor_limit_is_raised_no_higher_than_the_hard_limit() -> None:
    soft, _ = _answerer_limits(inherited=512, target=1 << 30)
    assert soft == HARD


def test_a_higher_inherited_limit_is_never_lowered() -> None:
    soft, _ = _answerer_limits(inherited=2048, target=256)
    assert soft == 2048
