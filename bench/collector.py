"""Benchmark: what the collector costs a node, and how fast a held exec is answered from cache.

One run, same machine, same loop (`posix_spawn` + `waitpid` of /usr/bin/true):
1. collector off: the exec rate;
2. collector on (it publishes every exec): the exec rate, the collector's CPU, and events lost,
   counted from the exec topic, unpaced and paced at 1,000 execs/s; phases 1 and 2 run in
   rounds (--rounds, default 3; the collector started afresh for each, and warmed up by a
   third as many unmeasured execs) and the rate's figure is the median of the rounds' on/off
   ratios;
3. the floor of holding an exec (a bare real-time answering process: one in C that reads
   nothing, bench/native_answerer.c, the machine's own floor; one in Python, with and without
   the reads of a cache key; no collector running; then, while the collector senses every exec,
   the C one, and the Python one bare and after what a cached answer reads: the file's path and
   origin);
4. held execs: a runc container in Protect, its execs held by fanotify and answered from the
   collector's cache; a helper joins the container's cgroups and times each exec of the
   container's /bin/busybox, before (not held) and after the switch to Protect (held, cached),
   first zero-drift (its write guard holds every open too, the exec's own included), then basic
   (the exec hold alone: what the target is about); and, before Protect, held by the bare C
   answerer on the container's root mount (that exec's own floor), with the stream worker
   running and then paused (SIGSTOP: before Protect and after, as on a fleet node, whose
   stream app runs elsewhere; on this single-node stack it shares the 2 cores and doubles an
   exec's tail). Each
   exec alternates with one of a copy on the container's /dev, a mount nothing holds: the added
   latency is how much more the held busybox takes than its unheld copy, less their difference
   before Protect (at each quantile). On 2 busy cores one exec's p99 drifts by milliseconds from
   one phase to the next; interleaving cancels that. Each exec is timed twice: the exec alone,
   from the kernel's own trace (bench/exec_trace.py: from the execve call to the new program's
   start, the window in which a hold happens), which the target is judged on, and from spawn to
   exit as the caller saw it, whose p99 adds the program's run and exit and swings by hundreds
   of us from one run to the next. Both programs are allowed by rules (as for a tool run through
   `kubectl exec`), so each held exec is answered from the cache and then allowed. These phases
   run with the kernel's cache off (COLLECTOR_KERNEL_CACHE=false), so the collector's own cache
   answers; then a collector started afresh with it on times the helper's execs and those of a
   static timer (bench/exec_timer.c) the container's own shell runs, both let go by the kernel
   once it remembers /bin/busybox.
Targets (issue 5): rate on >= 80% of off; zero lost at 1,000 execs/s; p99 added latency of a
cached answer < 200 us. Needs root and the local stack (`procwarden stack up`; the bench runs
its roles as the stack's admin identity).

`--signing both` runs only the cached held-exec phase ("held, collector's cache, basic"), in
rounds of signing on and off (the order alternating; issue 22's target: within 5%). ON: the
real `procwarden collector` and `procwarden streams` (the collector signs what it publishes and
checks every verdict; the worker checks every event and signs every verdict). OFF: the same
code started by launchers of this bench, with no production switch: the collector's publisher
given no signer and COLLECTOR_ACCEPT_UNSIGNED_VERDICTS=true, the worker `run_worker(settings,
kafka, None)` with STREAMS_ACCEPT_UNSIGNED=true. Both restart at each switch, on the same
topics, consumer group and collector state (which workloads are held survives a restart).

    python bench/collector.py [--execs N] [--held-execs H] [--rounds R] [--signing on|both]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Literal, NamedTuple

from exec_trace import ExecTrace
from prometheus_client.parser import text_string_to_metric_families
from stream import UNSIGNED_WORKER

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from collectors.kernel.fanotify import PermissionGroup  # noqa: E402
from collectors.kernel.procfs import read_cgroup, read_stat  # noqa: E402
from procwarden.stack import Stack  # noqa: E402
from procwarden.stack.topics import delete_prefixed_topics  # noqa: E402
from procwarden.testbed.containers import APP_LOOP, Container, run_container  # noqa: E402
from schemas import (  # noqa: E402
    ExecEvent,
    GroupPolicy,
    HoldSettings,
    ProfilePatch,
    RuleChange,
    ServiceConfig,
)
from schemas.connections import KafkaConnection  # noqa: E402
from schemas.topics import EXEC, POLICY, POLICY_UPDATES, VERDICTS  # noqa: E402
from tests.integration.streamkit import Pipeline, running_collector, wait_for_line  # noqa: E402

NODE = "bench-node"
# who makes the timed execs, and how they are answered (the rows of the held phases)
INJECTED = "runtime-injected caller (the helper)"
ALONE = "the helper, the stream worker paused (as on a fleet node: the stream app elsewhere)"
OWN = "the container's own process"
CACHED = "held, collector's cache, basic"
REMEMBERED = "held, the kernel remembers, basic"
NATIVE = "held, bare C answer (the floor of the row below)"
TRUE = "/usr/bin/true"

# Runs in the helper: times N spawns of each of two programs, interleaved (so drift cancels),
# and prints each one's durations (ns) as JSON.
_TIMER = """
import json, os, sys, time
paths, n, applet = sys.argv[1].split(","), int(sys.argv[2]), sys.argv[3]
for procs in sys.argv[4:]:  # join the container's cgroups now, not before exec'ing python
    if os.path.exists(procs):
        with open(procs, "w") as fh:
            fh.write(str(os.getpid()))
argv = [applet]
out = {path: [] for path in paths}
for i in range(n):
    for path in paths if i % 2 else paths[::-1]:
        t = time.perf_counter_ns()
        pid = os.posix_spawn(path, argv, {})
        os.waitpid(pid, 0)
        out[path].append(time.perf_counter_ns() - t)
print(json.dumps([out[path] for path in paths]))
"""


def spawn_loop(n: int, rate: float | None = None) -> tuple[float, list[int]]:
    """Run /usr/bin/true n times; the achieved rate and the pids."""
    pids = []
    started = time.perf_counter()
    for i in range(n):
        if rate is not None:
            delay = started + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        pid = os.posix_spawn(TRUE, [TRUE], {})
        os.waitpid(pid, 0)
        pids.append(pid)
    return n / (time.perf_counter() - started), pids


def cpu_seconds(pid: int) -> float:
    """The CPU time of the process `pid` and of its running children (the collector's exec
    answerer)."""
    total = 0
    children = [int(c) for task in Path(f"/proc/{pid}/task").iterdir()
                for c in (task / "children").read_text().split()]
    for each in (pid, *children):
        fields = Path(f"/proc/{each}/stat").read_text().rpartition(")")[2].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def collector_pid(log: Path) -> int:
    out = subprocess.run(["pgrep", "-f", f"procwarden.cli collector --node {NODE}"],
                         capture_output=True, text=True, check=False).stdout.split()
    assert out, log.read_text()[-2000:]
    return int(out[0])


REPORTED_WAIT_S = 60.0  # at most, for the collector to publish what it sensed
REPORTED_SETTLE_S = 5.0  # none more of these execs on the topic for this long: the rest are lost


def reported(pipe: Pipeline, pids: set[int], since: float) -> int:
    """How many of these execs (made after `since`) are on the exec topic. Pids wrap at 32768
    here: an earlier phase's exec with a reused pid must not count.

    The collector publishes asynchronously and says nothing of what is on the topic (its
    published counter counts what it handed to its producer; it has delivery reports for
    errors only), so the topic is read up to its end, again, until every one of these execs
    is there or none more came for a while. Each read stops at the end offsets as they stood
    when it started: the host's other execs, which the collector publishes too, never let the
    topic go quiet."""
    seen: set[int] = set()
    deadline = time.monotonic() + REPORTED_WAIT_S
    last_new = time.monotonic()
    while True:
        found = {e.payload.pid for e in pipe.read_to_end(EXEC.name, timeout=REPORTED_WAIT_S)
                 if isinstance(e.payload, ExecEvent) and e.payload.path == TRUE
                 and e.ts >= since} & pids
        if found - seen:
            seen |= found
            last_new = time.monotonic()
        now = time.monotonic()
        if seen == pids or now - last_new > REPORTED_SETTLE_S or now > deadline:
            return len(seen)
        time.sleep(0.5)


def percentile(values: list[int], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000  # us


METRICS_PORT = 9479  # the collector's /metrics, for its own share of a cached answer
ANSWERED = "procwarden_collector_pre_exec"  # held execs the collector answered


def cached_answers() -> dict[float, float]:
    """The collector's cached-answer histogram: cumulative count per bucket bound (seconds)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=5).read()
    return {float(sample.labels["le"]): sample.value
            for family in text_string_to_metric_families(text.decode())
            if family.name == "procwarden_collector_cached_answer_seconds"
            for sample in family.samples if sample.name.endswith("_bucket")}


def counter_total(name: str) -> float:
    """One of the collector's counters, summed over its labels."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=5).read()
    return sum(sample.value for family in text_string_to_metric_families(text.decode())
               if family.name == name for sample in family.samples
               if sample.name.endswith("_total"))


def bucket_quantile(before: dict[float, float], after: dict[float, float], q: float) -> float:
    """The bucket bound (us) under which a share q of the answers between two scrapes fell."""
    counts = {le: after[le] - before.get(le, 0.0) for le in after}
    total = counts[float("inf")]
    return next((le * 1e6 for le in sorted(counts) if counts[le] >= q * total), float("inf"))


UNHELD_COPY = "/dev/busybox"  # in the container's /dev, a tmpfs: a mount no fanotify mark holds


class Timed(NamedTuple):
    """Durations (ns) of the container's busybox and of its unheld copy, execs interleaved."""

    spawn: tuple[list[int], list[int]]  # from posix_spawn to the child's exit, as the caller saw
    exec: tuple[list[int], list[int]]  # the exec alone, from the kernel's trace (exec_trace.py)


def traced(trace: ExecTrace, image: str, copy: str, n: int) -> tuple[list[int], list[int]]:
    durations = trace.durations()
    pair = durations.get(image, []), durations.get(copy, [])
    if len(pair[0]) != n or len(pair[1]) != n:
        raise RuntimeError(f"the trace holds {len(pair[0])} execs of {image} and {len(pair[1])} "
                           f"of {copy}, not {n} each")
    return pair


def time_in_container(box: Container, n: int) -> Timed:
    """From a helper in the container's cgroups, exec the container's busybox `true` n times,
    interleaved with as many execs of its copy on the container's /dev. Execs of the copy are
    never held (another mount), yet sensed and judged as the container's like the others: the
    same run's baseline."""
    procs = []
    for line in Path(f"/proc/{box.init_pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(","):
            name = controller.removeprefix("name=")
            procs.append(Path("/sys/fs/cgroup") / name / path.lstrip("/") / "cgroup.procs")

    root = f"/proc/{box.init_pid}/root"
    image, copy = f"{root}/bin/busybox", f"{root}{UNHELD_COPY}"
    with ExecTrace() as trace:
        out = subprocess.run([sys.executable, "-c", _TIMER, f"{image},{copy}", str(n), "true",
                              *map(str, procs)], capture_output=True, text=True, check=True)
    spawned = json.loads(out.stdout)
    return Timed((spawned[0], spawned[1]), traced(trace, image, copy, n))


TIMER = "/dev/exec-timer"  # bench/exec_timer.c, beside the unheld copy


def build(tmp: Path, source: str, static: bool = False) -> Path:
    """A C program of bench/, built into tmp (static for the container, which has no libc of
    ours)."""
    out = tmp / Path(source).stem.replace("_", "-")
    subprocess.run(["gcc", "-O2", *(["-static"] if static else []), "-o", str(out),
                    str(ROOT / "bench" / source)], check=True)
    return out


def time_as_the_container(box: Container, n: int) -> Timed:
    """As `time_in_container`, but the execs are made by the container's own process (the
    app loop's shell runs the timer): no runtime-injected caller."""
    with ExecTrace() as trace:
        rc, out = box.app(f"{TIMER} {n} true /bin/busybox {UNHELD_COPY}", timeout=300)
    if rc != 0:
        raise RuntimeError(f"the timer in the container failed ({rc}): {out[-500:]}")
    spawned = json.loads(out)
    return Timed((spawned[0], spawned[1]), traced(trace, "/bin/busybox", UNHELD_COPY, n))


@contextlib.contextmanager
def paused(proc: subprocess.Popen[bytes]) -> Iterator[None]:
    """The stream worker stopped (SIGSTOP) for a while: its share of these 2 cores is the
    single-node stack's, not a fleet node's, whose stream app runs elsewhere. Nothing timed
    meanwhile needs it (each held exec is answered from the cache); it catches up after."""
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(proc.pid, signal.SIGCONT)


def differences(times: tuple[list[int], list[int]]) -> tuple[float, float]:
    """(p50, p99) of the first (held) minus those of the second (unheld), in us."""
    image, copy = times
    return (percentile(image, 0.5) - percentile(copy, 0.5),
            percentile(image, 0.99) - percentile(copy, 0.99))


def added(timed: Timed) -> str:
    """A held file's added latency against its unheld twin, both ways of timing it."""
    (e50, e99), (s50, s99) = differences(timed.exec), differences(timed.spawn)
    return (f"added p50 {e50:5.0f} us, p99 {e99:5.0f} us to the exec (spawn to exit: "
            f"p50 {s50:5.0f}, p99 {s99:5.0f})")


def python_answerer(base: Path, reads: Literal["none", "path", "key"]) -> int:
    """Fork the bare Python answering process of `answer_floor`; its pid."""
    group = PermissionGroup()
    group.watch(str(base / "held"))
    answerer = os.fork()
    if answerer == 0:  # the bare answering process
        # at the real-time priority the collector's exec answerer takes while it holds execs
        # (collectors/kernel/realtime.py): at the default one, this floor's p99 doubled while
        # the collector sensed (210-409 us against 132-186)
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
        while True:
            select.select([group.fd], [], [], 1.0)
            for event in group.read():
                if reads == "key":
                    stat = read_stat(event.pid)
                    read_cgroup(event.pid)
                    read_stat(stat.ppid if stat else 1)
                if reads != "none":
                    os.access(f"{base}/upper{event.path()}", os.F_OK)
                group.answer(event, True)
    group.close()
    return answerer


@contextlib.contextmanager
def answering(base: Path, reads: Literal["none", "path", "key"], native: Path | None
              ) -> Iterator[None]:
    """The floor's answering process holds `base`/held meanwhile: the C one (`native`) or the
    Python one."""
    if native is None:
        answerer = python_answerer(base, reads)
        try:
            yield
        finally:
            os.kill(answerer, signal.SIGKILL)
            os.waitpid(answerer, 0)
        return
    assert reads == "none"
    with native_answering(native, str(base / "held")):
        yield


@contextlib.contextmanager
def native_answering(native: Path, mount: str) -> Iterator[None]:
    """bench/native_answerer.c holds every exec in the mount of `mount` meanwhile, allowing
    each at once."""
    with subprocess.Popen([str(native), mount], stdout=subprocess.PIPE) as proc:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        try:
            yield
        finally:
            proc.kill()


def answer_floor(n: int, reads: Literal["none", "path", "key"], native: Path | None = None
                 ) -> Timed:
    """What holding an exec costs before any collector work: /usr/bin/true on a tmpfs whose
    mount a fanotify group holds, answered by a bare real-time process, against a copy on an
    unheld tmpfs, interleaved so drift cancels. It answers at once (`none`), after what a
    cached answer reads when the caller's lineage is known (`path`: the file's path and the
    upper-layer check), or after the five reads of a key without lineage (`key`: the caller's
    stat and cgroup, the file's path, the parent's stat, the upper-layer check). With `native`
    (bench/native_answerer.c, reads `none`), the answering process is that C program: the
    machine's floor, without an interpreter."""
    base = Path(tempfile.mkdtemp(prefix="bench-floor-"))
    for d in ("held", "free"):
        (base / d).mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(base / d)], check=True)
        subprocess.run(["cp", TRUE, str(base / d / "true")], check=True)
    times: dict[str, list[int]] = {"held": [], "free": []}
    paths = {d: str(base / d / "true") for d in times}
    try:
        with answering(base, reads, native), ExecTrace() as trace:
            for i in range(n):
                for d in ("held", "free") if i % 2 else ("free", "held"):
                    started = time.perf_counter_ns()
                    pid = os.posix_spawn(paths[d], ["true"], {})
                    os.waitpid(pid, 0)
                    times[d].append(time.perf_counter_ns() - started)
    finally:
        for d in ("held", "free"):
            subprocess.run(["umount", "-l", str(base / d)], check=False)
    return Timed((times["held"], times["free"]), traced(trace, paths["held"], paths["free"], n))


# The collector with signing off: what `procwarden collector` runs, its publisher given no
# signer (it still holds its keys: the verdict reader's verifier needs them, and finds each
# unsigned verdict unsigned before any HMAC).
UNSIGNED_COLLECTOR = """
import sys
from collectors.agent import Collector
from collectors.settings import CollectorSettings
from procwarden.cli import _health, _role_process
from procwarden.keys import local_node_keys
from schemas.connections import KafkaConnection

settings = CollectorSettings.model_validate({"node": sys.argv[1]})
assert settings.accept_unsigned_verdicts, "needs COLLECTOR_ACCEPT_UNSIGNED_VERDICTS=true"
stopping = _role_process(settings.log_level, settings.metrics_port)
agent = Collector(KafkaConnection.from_env(), settings, health=_health("collector"),
                  keys=local_node_keys(settings.node))
agent.publisher.signer = None
print("procwarden collector: signing OFF (bench launcher)", file=sys.stderr, flush=True)
agent.run(stopping.is_set)
"""


def start_unsigned_worker(pipe: Pipeline) -> subprocess.Popen[bytes]:
    """The pipeline's worker (same group, topics and data) with signing off; stopped by
    `pipe.stop_workers`."""
    log = pipe.tmp / f"worker-{len(pipe.workers)}.log"
    env = {**os.environ, "PROCWARDEN_KAFKA_TOPIC_PREFIX": pipe.prefix,
           "STREAMS_APP_ID": f"streams-{pipe.prefix.rstrip('.')}",
           "STREAMS_WEB_PORT": str(pipe.web_port), "STREAMS_DATA_DIR": str(pipe.tmp / "streams"),
           "STREAMS_API_TOKEN": "test-token", "STREAMS_ACCEPT_UNSIGNED": "true"}
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-c", UNSIGNED_WORKER], cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    pipe.workers.append(proc)
    wait_for_line(log, "[^Worker]: Ready", proc, timeout=60)
    return proc


def unsigned_collector(pipe: Pipeline, tmp: Path,
                       **env: str) -> contextlib._GeneratorContextManager[Path]:
    """streamkit's `running_collector` (the same state folder), with signing off."""
    return running_collector(pipe, NODE, tmp, command=(sys.executable, "-c", UNSIGNED_COLLECTOR,
                                                       NODE),
                             COLLECTOR_ACCEPT_UNSIGNED_VERDICTS="true", **env)


def signing_rounds(pipe: Pipeline, tmp: Path, held_n: int, rounds: int) -> int:
    """The cached held-exec phase (basic, kernel cache off, the helper's execs) with signing
    on and off, in rounds; each mode's added latency against the same unheld phase."""
    collector_env = {"COLLECTOR_METRICS_PORT": str(METRICS_PORT),
                     "COLLECTOR_KERNEL_CACHE": "false"}
    print(f"collector benchmark, signing on/off: {held_n:,} held execs per phase, {rounds} "
          f"round(s)")
    results: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    with contextlib.ExitStack() as stack:
        stack.callback(pipe.stop_workers)
        pipe.start_worker()
        box = stack.enter_context(run_container(
            ROOT / "var" / "testbed", "bench", namespace="bench", command=APP_LOOP))
        root = f"/proc/{box.init_pid}/root"
        shutil.copy(f"{root}/bin/busybox", f"{root}{UNHELD_COPY}")
        with running_collector(pipe, NODE, tmp, **collector_env) as log:
            box.app("sleep 1")  # seen and announced: its group is created
            pipe.wait_for(POLICY.name, lambda e: isinstance(e.payload, GroupPolicy)
                          and e.payload.name == "nv.bench.bench", timeout=120)
            free = time_in_container(box, held_n)
            # allowed by rules (a tool run through `kubectl exec`), Protect, the exec hold alone
            pipe.send(POLICY_UPDATES.name, "nv.bench.bench", ProfilePatch(
                "nv.bench.bench", process_change_list=(
                    RuleChange("true", "/bin/busybox", "allow"),
                    RuleChange("true", UNHELD_COPY, "allow"))))
            pipe.send(POLICY_UPDATES.name, "nv.bench.bench", ServiceConfig(
                services=("bench.bench",), profile_mode="Protect", baseline_profile="basic"))
            pipe.wait_for(VERDICTS.name, lambda e: isinstance(e.payload, HoldSettings)
                          and e.payload.workload_id == box.id and e.payload.pre_exec
                          and not e.payload.pre_write, timeout=60)
            wait_for_line(log, f"holding execs of {box.id}")
        base = differences(free.exec)
        print(f"not held: exec p50 {percentile(free.exec[0], 0.5):5.0f} us, p99 "
              f"{percentile(free.exec[0], 0.99):5.0f} us (beside the copy on /dev: p50 "
              f"{base[0]:+4.0f}, p99 {base[1]:+4.0f})", flush=True)
        for r in range(rounds):
            for signed in (True, False) if r % 2 == 0 else (False, True):
                pipe.stop_workers()
                if signed:
                    pipe.start_worker()
                    running = running_collector(pipe, NODE, tmp, **collector_env)
                else:
                    start_unsigned_worker(pipe)
                    running = unsigned_collector(pipe, tmp, **collector_env)
                with running as log:
                    wait_for_line(log, f"holding execs of {box.id}")
                    time_in_container(box, 50)  # the first is a miss: warm the cache
                    answered = counter_total(ANSWERED)
                    held = time_in_container(box, held_n)
                    count = counter_total(ANSWERED) - answered
                e50, e99 = (d - b for d, b in zip(differences(held.exec), base, strict=True))
                results[signed].append((e50, e99))
                print(f"round {r + 1}, signing {'ON ' if signed else 'OFF'}: {CACHED}: exec "
                      f"p50 {percentile(held.exec[0], 0.5):5.0f} us, p99 "
                      f"{percentile(held.exec[0], 0.99):5.0f} us (added: p50 {e50:4.0f}, p99 "
                      f"{e99:4.0f}); held by the collector: {count:,.0f} of {held_n:,}",
                      flush=True)
    for q, name in ((0, "p50"), (1, "p99")):
        on = statistics.median(x[q] for x in results[True])
        off = statistics.median(x[q] for x in results[False])
        diffs = [a[q] - b[q] for a, b in zip(results[True], results[False], strict=True)]
        print(f"added {name}, median of {rounds}: signing on {on:.0f} us, off {off:.0f} us; "
              f"on - off per round: {', '.join(f'{d:+.0f}' for d in diffs)} us")
    on99 = statistics.median(x[1] for x in results[True])
    off99 = statistics.median(x[1] for x in results[False])
    on50 = statistics.median(x[0] for x in results[True])
    off50 = statistics.median(x[0] for x in results[False])
    for name, on_v, off_v in (("p50", on50, off50), ("p99", on99, off99)):
        ratio = on_v / off_v if off_v > 0 else float("inf")
        print(f"target: signing on within 5% of off, added {name} of a cached answer -> on/off "
              f"{ratio:.2f} ({on_v - off_v:+.0f} us) {'MET' if ratio <= 1.05 else 'MISSED'}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--execs", type=int, default=3000, help="execs per rate/floor phase")
    parser.add_argument("--held-execs", type=int, default=10_000,
                        help="pairs per held-exec phase (the p99 of 3,000 moved by hundreds "
                             "of us from run to run here)")
    parser.add_argument("--rounds", type=int, default=3, help="off/on rounds for the rate")
    parser.add_argument("--signing", choices=("on", "both"), default="on",
                        help="both: only the cached held-exec phase, signing on and off in "
                             "--rounds rounds")
    args = parser.parse_args()
    n, held_n = args.execs, args.held_execs
    # the roles this bench starts inherit the stack's admin identity (a super user)
    os.environ.update(Stack().kafka.environment())
    kafka = KafkaConnection.from_env()
    tmp = Path(tempfile.mkdtemp(prefix="bench-collector-"))
    pipe = Pipeline(kafka, tmp)
    if args.signing == "both":
        try:
            return signing_rounds(pipe, tmp, held_n, args.rounds)
        finally:
            delete_prefixed_topics(kafka, [pipe.prefix])
    timer = build(tmp, "exec_timer.c", static=True)
    native = build(tmp, "native_answerer.c")
    print(f"collector benchmark: {n:,} execs of {TRUE} per phase")

    spawn_loop(200)  # warm up
    # The rate is measured in rounds, off then on, each on with a collector started afresh:
    # the same loop moves by +-15% from one measurement to the next on this shared VM, so one
    # pair says little; the median ratio of the rounds is the figure.
    ratios = []
    for r in range(1, args.rounds + 1):
        off, _ = spawn_loop(n)
        with running_collector(pipe, NODE, tmp) as log:
            pid = collector_pid(log)
            # A node's collector runs for days: its first second (the producer's first
            # batches, cold caches) is not what the node pays per exec, and it moved a
            # round's rate by up to 15 points here.
            spawn_loop(n // 3)
            cpu0, t0, since = cpu_seconds(pid), time.perf_counter(), time.time()
            on, pids = spawn_loop(n)
            cpu = (cpu_seconds(pid) - cpu0) / (time.perf_counter() - t0)
            lost = n - reported(pipe, set(pids), since)
        ratios.append(on / off)
        print(f"round {r}: collector off {off:>6,.0f} execs/s, on (publishing) {on:>6,.0f} "
              f"execs/s ({on / off:.0%} of off), collector CPU {cpu:.0%} of a core, lost {lost} "
              f"of {n}")
    ratio = statistics.median(ratios)
    print(f"collector on / off, median of {len(ratios)} rounds: {ratio:.0%}")
    print(f"floor, {'native bare answer:':<38} {added(answer_floor(n, 'none', native))}")
    print(f"floor, {'bare answer:':<38} {added(answer_floor(n, 'none'))}")
    print(f"floor, {'answer after the key reads:':<38} {added(answer_floor(n, 'key'))}")

    try:
        with contextlib.ExitStack() as stack:
            collector = stack.enter_context(contextlib.ExitStack())
            # First without the kernel's cache, so that the collector's own cache answers
            # every held exec of the phases timed here.
            log = collector.enter_context(running_collector(
                pipe, NODE, tmp, COLLECTOR_METRICS_PORT=str(METRICS_PORT),
                COLLECTOR_KERNEL_CACHE="false"))
            since = time.time()
            paced, paced_pids = spawn_loop(n, rate=1000)
            paced_lost = len(paced_pids) - reported(pipe, set(paced_pids), since)
            print(f"paced at 1,000/s:             {paced:>8,.0f} execs/s, lost {paced_lost} of "
                  f"{len(paced_pids)}")
            # The same bare answerer while the collector senses every exec (as it does in the
            # held phase): what holding an exec costs on this machine before any answer's work.
            native_floor = answer_floor(n, "none", native)
            print(f"floor, native bare answer, collector sensing: {added(native_floor)}")
            print(f"floor, bare answer, collector sensing: {added(answer_floor(n, 'none'))}")
            print(f"floor, answer after the path and origin, collector sensing: "
                  f"{added(answer_floor(n, 'path'))}")

            worker = pipe.start_worker()  # only now: phases 1-2 measure the collector alone
            box = stack.enter_context(run_container(
                ROOT / "var" / "testbed", "bench", namespace="bench", command=APP_LOOP))
            root = f"/proc/{box.init_pid}/root"
            shutil.copy(f"{root}/bin/busybox", f"{root}{UNHELD_COPY}")
            shutil.copy(timer, f"{root}{TIMER}")
            box.app("sleep 1")  # seen and announced: its group is created
            pipe.wait_for(POLICY.name, lambda e: isinstance(e.payload, GroupPolicy)
                          and e.payload.name == "nv.bench.bench", timeout=120)
            free = time_in_container(box, held_n)
            with paused(worker):
                free_alone = time_in_container(box, held_n)
            free_own = time_as_the_container(box, held_n)
            # The same execs held by the bare C answerer on the container's own root mount
            # (the collector in Monitor meanwhile): what holding this very exec costs here
            # with no answer's work and no interpreter, the cached answer's own floor.
            with native_answering(native, root):
                native_held = time_in_container(box, held_n)
                with paused(worker):
                    native_alone = time_in_container(box, held_n)
            # Everything timed is allowed, as an operator would allow a tool that
            # `kubectl exec` runs (the helper is such a process: it came from the host, so it
            # is not learned, and Protect would kill what it runs right after exec).
            pipe.send(POLICY_UPDATES.name, "nv.bench.bench", ProfilePatch(
                "nv.bench.bench", process_change_list=(
                    RuleChange("true", "/bin/busybox", "allow"),
                    RuleChange("true", UNHELD_COPY, "allow"),
                    RuleChange("exec-timer", TIMER, "allow"))))
            pipe.send(POLICY_UPDATES.name, "nv.bench.bench", ServiceConfig(
                services=("bench.bench",), profile_mode="Protect"))
            pipe.wait_for(VERDICTS.name, lambda e: isinstance(e.payload, HoldSettings)
                          and e.payload.workload_id == box.id and e.payload.pre_exec)
            wait_for_line(log, f"holding execs of {box.id}")
            time_in_container(box, 50)  # the first is a miss: warm the cache
            guarded = time_in_container(box, held_n)
            # The exec hold alone: a basic baseline keeps it, without the zero-drift write
            # guard that also holds every open (the exec's own open of its file included).
            pipe.send(POLICY_UPDATES.name, "nv.bench.bench", ServiceConfig(
                services=("bench.bench",), baseline_profile="basic"))
            wait_for_line(log, f"no longer holding writes in {box.id}")
            time_in_container(box, 50)
            before = cached_answers()
            answered = counter_total(ANSWERED)
            held = time_in_container(box, held_n)
            answers = {(INJECTED, CACHED): counter_total(ANSWERED) - answered}
            answered = counter_total(ANSWERED)
            with paused(worker):
                held_alone = time_in_container(box, held_n)
            answers[ALONE, CACHED] = counter_total(ANSWERED) - answered
            after = cached_answers()
            collector.close()  # that collector stops; the container stays

            # Then with it: a collector started afresh (which workloads are held survives),
            # whose first allowed exec of /bin/busybox has the kernel allow its later ones.
            log = collector.enter_context(running_collector(
                pipe, NODE, tmp, COLLECTOR_METRICS_PORT=str(METRICS_PORT)))
            wait_for_line(log, f"holding execs of {box.id}")
            remembered0 = counter_total("procwarden_collector_kernel_remembered")
            time_in_container(box, 50)
            time_as_the_container(box, 50)
            remembered = counter_total("procwarden_collector_kernel_remembered")
            answered = counter_total(ANSWERED)
            held_own = time_as_the_container(box, held_n)
            answers[OWN, REMEMBERED] = counter_total(ANSWERED) - answered
            answered = counter_total(ANSWERED)
            held_kernel = time_in_container(box, held_n)
            answers[INJECTED, REMEMBERED] = counter_total(ANSWERED) - answered
        # The container's own busybox against its unheld copy, interleaved in each phase;
        # what holding adds is how much more it differs once held than before, at each
        # quantile: the two files' own difference is not only a fixed cost per exec, as the
        # busybox on the overlay (whose exec the collector is told of) has the longer tail
        # by 140-320 us at p99 before anything is held. Each is timed twice: the exec alone,
        # from the kernel's trace (the target's figure: a hold happens inside it), and from
        # spawn to exit as the caller saw it.
        added_by: dict[tuple[str, str], tuple[float, float, float | None]] = {}
        for caller, unheld_times, rows in (
                (INJECTED, free, ((NATIVE, native_held),
                                  (CACHED, held),
                                  ("held, collector's cache, zero-drift", guarded),
                                  (REMEMBERED, held_kernel))),
                (ALONE, free_alone, ((NATIVE, native_alone), (CACHED, held_alone))),
                (OWN, free_own, ((REMEMBERED, held_own),))):
            base_exec, base_spawn = differences(unheld_times.exec), differences(unheld_times.spawn)
            print(f"{caller}:")
            print(f"  not held:{'':<37} exec p50 {percentile(unheld_times.exec[0], 0.5):5.0f} us"
                  f", p99 {percentile(unheld_times.exec[0], 0.99):5.0f} us (beside the copy on "
                  f"/dev: p50 {base_exec[0]:+4.0f}, p99 {base_exec[1]:+4.0f}; spawn to exit: "
                  f"p50 {base_spawn[0]:+4.0f}, p99 {base_spawn[1]:+4.0f})")
            for label, times in rows:
                (e50, e99), (s50, s99) = differences(times.exec), differences(times.spawn)
                e50, e99, s50, s99 = (e50 - base_exec[0], e99 - base_exec[1],
                                      s50 - base_spawn[0], s99 - base_spawn[1])
                held_count = answers.get((caller, label))
                added_by[caller, label] = (e50, e99, held_count)
                print(f"  {label + ':':<45} exec p50 {percentile(times.exec[0], 0.5):5.0f} us, "
                      f"p99 {percentile(times.exec[0], 0.99):5.0f} us (added: p50 {e50:4.0f}, "
                      f"p99 {e99:4.0f}; spawn to exit: p50 {s50:4.0f}, p99 {s99:4.0f})"
                      + ("" if held_count is None else
                         f"; held by the collector: {held_count:,.0f} of {held_n:,}"))
        print(f"  the exec answerer's own time per cached answer (basic, from its histogram): "
              f"p50 <= {bucket_quantile(before, after, 0.5):.0f} us, "
              f"p99 <= {bucket_quantile(before, after, 0.99):.0f} us; files the kernel "
              f"remembered: {remembered - remembered0:.0f}")
    finally:
        pipe.stop_workers()
        delete_prefixed_topics(kafka, [pipe.prefix])  # left behind, they slow the broker
    print(f"target: rate on >= 80% of off -> {ratio:.0%} (median of {len(ratios)} rounds) "
          f"{'MET' if ratio >= 0.8 else 'MISSED'}")
    print(f"target: zero lost at 1,000 execs/s -> {paced_lost} "
          f"{'MET' if paced_lost == 0 else 'MISSED'}")
    # The p99 difference can come out below the p50 one (other work on 2 cores); the p50
    # difference is a floor for it, so each verdict uses the larger of the two.
    for (caller, row), (a50, a99, held_count) in added_by.items():
        label = f"{caller}: {row}"
        if "zero-drift" in row or row == NATIVE:
            continue  # the target is about the exec hold alone, answered by the collector
        worst = max(a50, a99)
        if held_count == 0:
            # No permission event at all: holding adds nothing, and what the timing shows is
            # this machine's noise.
            print(f"target: p99 added latency of a cached answer < 200 us ({label}) -> no "
                  f"exec held, 0 us (timed: {worst:.0f} us) MET")
            continue
        floor = added_by.get((caller, NATIVE))
        print(f"target: p99 added latency of a cached answer < 200 us ({label}) -> "
              f"{worst:.0f} us {'MET' if worst < 200 else 'MISSED'} (this run's floor: "
              + ("" if floor is None else
                 f"the bare C answer of the same execs {max(floor[:2]):.0f} us, ")
              + f"on a tmpfs while the collector senses "
              f"{max(differences(native_floor.exec)):.0f} us)")
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    sys.exit(main())
