"""The collector's enforcement against a hostile workload (issue 21): real Kafka, a real stream
worker, real runc containers and the real `procwarden collector`; each container really runs
the attack, and the node must keep enforcing.

- a poisoned verdict (1,000-level nesting, or one whose handling fails) is dead-lettered, and
  the verdict reader goes on to enforce the next block verdict;
- readiness tells the truth (the answerer gone: not ready until it is back), and a thread that
  cannot go on makes the collector exit non-zero;
- held-exec budgets are per workload: a container that keeps hundreds of first-seen execs
  pending is denied its own over-budget execs, and another container's held exec is still
  judged (not fail-opened);
- a FIFO planted at a Protect container's /etc/passwd does not stall the exec answerer;
- the exec answerer runs isolated: a `collectors/` package planted in the collector's working
  directory is never imported;
- a read error of a permission group (the kernel could not give the listener a descriptor)
  answers that exec and is counted, rather than raising.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from collectors.enforcement.exec_answerer import CACHED_BUCKETS
from collectors.enforcement.fast_answer import fast_answer
from collectors.enforcement.lineage import Lineage
from collectors.kernel.fanotify import PermissionGroup
from procwarden.testbed.containers import APP_LOOP, Container, run_container
from schemas import (
    CollectorReport,
    Decision,
    Envelope,
    EventKind,
    ProfilePatch,
    RuleChange,
    ServiceConfig,
    Verdict,
    encode,
)
from schemas.connections import KafkaConnection
from schemas.topics import COLLECTOR_REPORTS, POLICY_UPDATES, VERDICTS, verdict_partition
from tests.integration.streamkit import ROOT, WORKDIR, Pipeline, free_port, wait_for_line
from transport.health import read_health

NODE = "node-hostile"
GROUP = "nv.guard.hos"  # the flooding container and its neighbour: both Protect, zero-drift
ALLOWED = ("sh", "cat", "echo", "sleep", "seq", "wait", "true", "rm", "mkfifo", "ln")
HOLD_TIMEOUT_MS = 10_000  # long: a held exec waits for its verdict, not for the fail mode


@dataclass
class Node:
    pipe: Pipeline
    flood: Container  # the attacker
    neighbour: Container  # another Protect container of the node
    collector: subprocess.Popen[bytes]
    log: Path
    health: Path
    metrics_port: int
    tmp: Path

    def verdict(self, test: Callable[[Decision], bool], timeout: float = 30.0) -> Decision:
        env, _ = self.pipe.wait_for(
            VERDICTS.name, lambda e: isinstance(e.payload, Decision) and test(e.payload),
            timeout=timeout, partitions=[verdict_partition(NODE, VERDICTS.partitions)])
        assert isinstance(env.payload, Decision)
        return env.payload

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every sample of the collector's /metrics, by (name, labels)."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as r:
            text = r.read().decode()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    def sample(self, name: str, **labels: str) -> float:
        return self.metrics().get((name, tuple(sorted(labels.items()))), 0.0)

    def report(self, test: Callable[[CollectorReport], bool]) -> CollectorReport:
        env, _ = self.pipe.wait_for(
            COLLECTOR_REPORTS.name, lambda e: isinstance(e.payload, CollectorReport)
            and e.payload.node == NODE and test(e.payload), timeout=30)
        assert isinstance(env.payload, CollectorReport)
        return env.payload


def _start_collector(pipe: Pipeline, tmp: Path, port: int, health: Path
                     ) -> tuple[subprocess.Popen[bytes], Path]:
    environ = {**os.environ, "PROCWARDEN_KAFKA_TOPIC_PREFIX": pipe.prefix,
               "COLLECTOR_STATE_DIR": str(tmp / "collector-state"),
               "COLLECTOR_METRICS_PORT": str(port),
               "COLLECTOR_HOLD_TIMEOUT_MS": str(HOLD_TIMEOUT_MS),
               "COLLECTOR_REPORT_INTERVAL_S": "1",
               "PROCWARDEN_HEALTH_FILE": str(health)}
    log = tmp / "collector.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "procwarden.cli", "collector",
                                 "--node", NODE], cwd=ROOT, env=environ, stdout=out,
                                stderr=subprocess.STDOUT)
    wait_for_line(log, "reading verdicts from", proc)
    return proc, log


@pytest.fixture(scope="module")
def node(kafka: KafkaConnection, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    tmp = tmp_path_factory.mktemp("hostile")
    pipe = Pipeline(kafka, tmp)
    pipe.start_worker()
    port = free_port()
    health = tmp / "collector.health.json"
    try:
        with run_container(WORKDIR, "guard", namespace="hos", command=APP_LOOP) as flood, \
                run_container(WORKDIR, "guard", namespace="hos", command=APP_LOOP) as neighbour:
            collector, log = _start_collector(pipe, tmp, port, health)
            n = Node(pipe, flood, neighbour, collector, log, health, port, tmp)
            try:
                for box in (flood, neighbour):  # seen, announced, its group made
                    assert box.app("sleep 1; echo ready") == (0, "ready\n")
                for box in (flood, neighbour):  # each known to the worker before Protect
                    n.verdict(lambda d, box=box: d.workload_id == box.id and d.group == GROUP)
                pipe.send(POLICY_UPDATES.name, GROUP, ProfilePatch(GROUP, process_change_list=tuple(
                    RuleChange(name, "/bin/busybox", "allow") for name in ALLOWED)))
                pipe.send(POLICY_UPDATES.name, GROUP, ServiceConfig(
                    services=("guard.hos",), profile_mode="Protect",
                    baseline_profile="zero-drift"))
                for box in (flood, neighbour):
                    wait_for_line(log, f"holding execs of {box.id}")
                yield n
            finally:
                if collector.poll() is None:
                    collector.send_signal(signal.SIGTERM)
                    collector.wait(30)
    finally:
        pipe.stop_workers()


def _drop(box: Container, name: str, text: str = "#!/bin/sh\necho ran\n") -> str:
    """A program put into the container from outside (not a write held before it happens)."""
    path = box.rootfs / "tmp" / name
    path.write_text(text)
    path.chmod(0o755)
    return f"/tmp/{name}"


def _denied(out: str) -> bool:
    return "not permitted" in out.lower() or "permission denied" in out.lower()


def test_a_poisoned_verdict_is_dead_lettered_and_the_next_one_enforced(node: Node) -> None:
    n = node
    topic = n.pipe.topic(VERDICTS.name)
    partition = verdict_partition(NODE, VERDICTS.partitions)
    nested = b'{"schema_version":1,"kind":"verdict","payload":' + b"[" * 1000 + b"]" * 1000 + b"}"
    # Well formed, but a pid no process can have (before, its kill raised out of the reader).
    crash = Envelope.wrap(Decision(event_id="e-crash", event_kind=EventKind.EXEC,
                                   workload_id="nobody", node=NODE, verdict=Verdict.BLOCK,
                                   reason="violation:R0", pid=2**40), event_id="v-crash", node=NODE,
                          ts=time.time(), cluster="test")
    for value in (nested, encode(crash)):
        n.pipe.producer.produce(topic, key=NODE.encode(), value=value, partition=partition)
    assert n.pipe.producer.flush(30) == 0
    # The next block verdict is still read and enforced: a dropped program is denied before
    # it runs (on the code before the fix the verdict reader was dead, so this exec waited
    # for the fail mode, open, and ran).
    rc, out = n.neighbour.app(f"{_drop(n.neighbour, 'after-poison')}; echo rc=$?")
    assert _denied(out) and "ran" not in out, (rc, out)
    check = n.verdict(lambda d: d.event_kind is EventKind.EXEC_CHECK
                      and d.path == "/tmp/after-poison")
    assert check.verdict is Verdict.BLOCK
    assert n.sample("procwarden_dead_letters_total", stage="collector", topic=topic,
                    reason="invalid") >= 2
    text = n.log.read_text()
    assert "collector: to the DLQ" in text and "which no process can have" in text
    assert n.report(lambda r: r.dead_letters >= 2).dead_letters >= 2
    assert n.collector.poll() is None


def _ready(n: Node) -> float:
    return n.sample("procwarden_ready", role="collector")


def test_readiness_says_when_execs_are_not_held(node: Node) -> None:
    """Ready while it reads verdicts and its exec answerer runs; the answerer killed (the
    kernel lets its held execs go), not ready until another one holds again."""
    n = node
    assert _ready(n) == 1
    assert read_health(n.health)[0] == "ready"
    answerer = _answerer(n)
    mark = n.log.stat().st_size
    os.kill(answerer, signal.SIGKILL)
    seen_down = False
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not seen_down:
        seen_down = _ready(n) == 0
        time.sleep(0.05)
    assert seen_down, "still ready with no exec answerer"
    wait_for_line(n.log, f"holding execs of {n.neighbour.id}", after=mark)
    deadline = time.monotonic() + 10
    while _ready(n) != 1:
        assert time.monotonic() < deadline, "not ready again once the answerer was back"
        time.sleep(0.05)


def _answerer(n: Node) -> int:
    children = subprocess.run(["pgrep", "-P", str(n.collector.pid), "-f",
                               "collectors.enforcement.exec_answerer"],
                              capture_output=True, text=True, check=False).stdout.split()
    assert len(children) == 1, children
    return int(children[0])


def test_one_workload_exhausting_its_held_budget_affects_only_itself(node: Node) -> None:
    """The flooding container keeps 300 first-seen execs pending while the stream worker is
    paused: its own execs beyond its budget are denied at once (its fail mode is open), and
    the neighbour's first-seen exec meanwhile is held for its verdict and denied by it. On the
    code before the fix the node's 256 held execs were all the flood's, and the neighbour's
    exec was let through by the fail mode."""
    n = node
    count = 300
    for i in range(count):
        _drop(n.flood, f"f{i}")
    bad = _drop(n.neighbour, "neighbour-bad")
    over_before = n.sample("procwarden_collector_held_over_budget_total")
    worker = n.pipe.workers[0]
    results: dict[str, tuple[int, str]] = {}

    def run(name: str, box: Container, line: str) -> None:
        results[name] = box.app(line, timeout=60)

    worker.send_signal(signal.SIGSTOP)
    threads = []
    try:
        flood = threading.Thread(target=run, args=("flood", n.flood, (
            f"i=0; while [ $i -lt {count} ]; do /tmp/f$i & i=$((i+1)); done; wait; echo done")))
        flood.start()
        threads.append(flood)
        # until the flood's held execs stop growing (64 at least: its budget, or more)
        deadline = time.monotonic() + 30
        held, still_since = 0.0, time.monotonic()
        while held < 64 or time.monotonic() - still_since < 1.5:
            assert time.monotonic() < deadline, f"the flood held {held} execs"
            now_held = n.sample("procwarden_collector_held_execs")
            if now_held != held:
                held, still_since = now_held, time.monotonic()
            time.sleep(0.1)
        neighbour = threading.Thread(target=run, args=("neighbour", n.neighbour,
                                                       f"{bad}; echo rc=$?"))
        neighbour.start()
        threads.append(neighbour)
        deadline = time.monotonic() + 10
        while n.sample("procwarden_collector_held_execs") <= held:  # the neighbour's is held
            assert "neighbour" not in results, results  # answered without its verdict
            assert time.monotonic() < deadline, "the neighbour's exec was not held"
            time.sleep(0.05)
    finally:
        worker.send_signal(signal.SIGCONT)
        for thread in threads:
            thread.join(90)
    rc, out = results["neighbour"]
    assert _denied(out) and "ran" not in out, (rc, out)
    check = n.verdict(lambda d: d.event_kind is EventKind.EXEC_CHECK and d.path == bad)
    assert check.verdict is Verdict.BLOCK
    rc, out = results["flood"]
    assert out.endswith("done\n"), out[-2000:]
    # Over its budget, denied at once; within it, held until the verdicts (denied too).
    # (counted in the whole text: the background shells' lines interleave)
    said = out.lower()
    denials = said.count("not permitted") + said.count("permission denied")
    assert out.count("ran") == 0 and denials == count, out[-2000:]
    over = n.sample("procwarden_collector_held_over_budget_total") - over_before
    assert over >= count - 64, over
    assert "held-exec budget" in n.log.read_text()
    report = n.report(lambda r: r.held_over_budget.get(n.flood.id, 0) >= over)
    assert n.neighbour.id not in report.held_over_budget
    # The node still holds: a new program in either container is judged and denied.
    for box, name in ((n.flood, "after-flood"), (n.neighbour, "after-flood-2")):
        rc, out = box.app(f"{_drop(box, name)}; echo rc=$?")
        assert _denied(out) and "ran" not in out, (box.name, rc, out)


def test_a_fifo_passwd_does_not_stall_the_answerer(node: Node) -> None:
    """A container of another group plants a FIFO at /etc/passwd (and /etc/group), then its
    group goes to Protect: the exec answerer holds it without reading its files, and the
    neighbour's held execs are answered meanwhile. (On the code before the fix, the answerer
    opened the FIFO to learn the container's users and waited on it for good, and every held
    exec of the node with it.)"""
    n = node
    group = "nv.fifo.hos"
    with run_container(WORKDIR, "fifo", namespace="hos", command=APP_LOOP) as box:
        assert box.app("sleep 1; echo ready") == (0, "ready\n")
        n.verdict(lambda d: d.workload_id == box.id and d.group == group)
        assert box.app("rm /etc/passwd /etc/group && mkfifo /etc/passwd /etc/group; echo ok"
                       ) == (0, "ok\n")
        mark = n.log.stat().st_size
        n.pipe.send(POLICY_UPDATES.name, group, ProfilePatch(group, process_change_list=tuple(
            RuleChange(name, "/bin/busybox", "allow") for name in ALLOWED)))
        n.pipe.send(POLICY_UPDATES.name, group, ServiceConfig(
            services=("fifo.hos",), profile_mode="Protect", baseline_profile="zero-drift"))
        wait_for_line(n.log, f"holding execs of {box.id}", after=mark)
        started = time.monotonic()
        rc, out = n.neighbour.app(f"{_drop(n.neighbour, 'during-fifo')}; echo rc=$?",
                                  timeout=20)
        assert _denied(out), (rc, out)
        assert time.monotonic() - started < HOLD_TIMEOUT_MS / 1000  # by its verdict
        rc, out = box.app(f"{_drop(box, 'fifo-bad')}; echo rc=$?", timeout=20)
        assert _denied(out) and "ran" not in out, (rc, out)
        assert _ready(n) == 1


def test_a_thread_that_cannot_go_on_stops_the_collector(node: Node) -> None:
    """Last in this module: it ends the collector. Out of descriptors, the collector cannot
    start another exec answerer after this one is killed: rather than run on as "running"
    while nothing is held, it exits non-zero."""
    n = node
    pid = n.collector.pid
    in_use = len(os.listdir(f"/proc/{pid}/fd"))
    subprocess.run(["prlimit", f"--pid={pid}", f"--nofile={in_use}:{in_use}"], check=True)
    os.kill(_answerer(n), signal.SIGKILL)
    try:
        rc = n.collector.wait(30)
    except subprocess.TimeoutExpired:
        pytest.fail("the collector ran on with no exec answerer:\n"
                    + n.log.read_text(errors="replace")[-3000:])
    assert rc != 0
    assert "cannot go on" in n.log.read_text(errors="replace")


# -- without the stack -----------------------------------------------------------------------

def test_a_package_planted_in_the_working_directory_is_not_run(tmp_path: Path) -> None:
    """The collector started in a directory others can write: its exec answerer (root) must
    not import a `collectors` package from there."""
    marker = tmp_path / "planted-ran"
    planted = tmp_path / "collectors"
    planted.mkdir()
    (planted / "__init__.py").write_text("")
    (planted / "exec_answerer.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n")
    harness = (
        "import os, sys, time\n"
        "from collectors.enforcement.answerer_link import AnswererLink\n"
        "from collectors.enforcement.answerer_protocol import Stop\n"
        "from collectors.settings import CollectorSettings\n"
        "os.chdir(sys.argv[1])\n"
        "link = AnswererLink(CollectorSettings(node='planted', fast_answers=False), "
        "lambda: None, lambda m: None)\n"
        "link._spawn()\n"
        "time.sleep(1.5)\n"
        "link.send(Stop())\n"
        "sys.exit(link.process.wait(10))\n")
    # -I: the harness itself imports the real package, whatever its working directory; and
    # the real answerer ran (it exits 0 when told to stop), not merely nothing
    subprocess.run([sys.executable, "-I", "-c", harness, str(tmp_path)], check=True,
                   timeout=30, cwd=ROOT)
    assert not marker.exists(), "the planted package ran"


@contextlib.contextmanager
def _no_descriptor_left() -> Iterator[None]:
    """Meanwhile this process can open no descriptor: its limit is its highest one, and every
    free number below is taken."""
    old = resource.getrlimit(resource.RLIMIT_NOFILE)
    highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 1, old[1]))
    fillers = []
    try:
        with contextlib.suppress(OSError):
            while True:
                fillers.append(os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC))
        yield
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, old)


@pytest.fixture
def held_mount(tmp_path: Path) -> Iterator[tuple[PermissionGroup, Path]]:
    mount = tmp_path / "held"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(mount)], check=True)
    group = PermissionGroup()
    try:
        group.watch(str(mount))
        program = mount / "prog"
        shutil.copy("/usr/bin/true", program)
        yield group, program
    finally:
        group.close()
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _exec_later(group: PermissionGroup, program: Path, delay: float) -> int:
    """A child that execs `program` after `delay` seconds (forked now, while this process may
    still open descriptors); its pid. Its exit status: the program's, or 13 if denied."""
    pid = os.fork()
    if pid == 0:  # never back into pytest, whatever happens
        code = 99
        try:
            # its copy of the group would keep the group open while its own exec waits on it
            os.close(group.fd)
            time.sleep(delay)
            os.execv(program, [program.name])
        except PermissionError:
            code = 13
        finally:
            os._exit(code)
    return pid


@pytest.mark.parametrize("reader", ["python", "compiled"])
def test_a_read_error_answers_the_exec_and_is_counted(
        held_mount: tuple[PermissionGroup, Path], reader: str) -> None:
    """Out of descriptors, the kernel cannot hand the held exec to its listener: it denies
    that exec itself and the read fails. The read counts it and returns, so the answerer's
    loop goes on (before, the error escaped the loop's step: five in a row closed the group,
    and every exec of the node went unheld)."""
    group, program = held_mount
    fast = fast_answer(group.fd, Lineage(), {}, OrderedDict(), CACHED_BUCKETS, False)
    assert fast is not None
    pids = [_exec_later(group, program, 0.2 + 0.4 * i) for i in range(3)]

    def errors() -> int:
        return int(group.read_errors if reader == "python" else fast.counts()["read_errors"])

    try:
        with _no_descriptor_left():
            deadline = time.monotonic() + 10
            while errors() < 3 and time.monotonic() < deadline:
                if reader == "python":
                    assert group.read() == []
                else:
                    _, passed, _ = fast.wait(-1, [], 0.1)
                    assert passed == []
                time.sleep(0.02)
        assert errors() == 3
        for pid in pids:  # each denied by the kernel, none left waiting
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 13
        pids.clear()
        # and the group still holds and answers
        pids.append(_exec_later(group, program, 0))
        deadline = time.monotonic() + 5
        events = []
        while not events:
            assert time.monotonic() < deadline
            events = group.read()
            time.sleep(0.01)
        group.answer(events[0], True)
        _, status = os.waitpid(pids.pop(), 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)

