"""The collector's side of the exec answerer (`exec_answerer.py`): starts the process,
sends it what it must know, publishes its questions, shows its metrics, and starts it again if it
dies.

A dead answerer's fanotify group is closed with it, so the kernel lets everything it held go
ahead (whatever the fail mode: the kernel allows what nobody answers). It is started again after
a pause that doubles with each quick death (1 s up to a minute) and told every held workload anew.
"""

from __future__ import annotations

import logging
import resource
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import msgspec
from prometheus_client.core import (
    REGISTRY,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from collectors.enforcement.answerer_protocol import (
    Ask,
    Drift,
    Metrics,
    ProtocolError,
    Stop,
    ToAnswerer,
    decode_to_collector,
    encode,
)
from collectors.enforcement.exec_answerer import CACHED_BUCKETS, VERDICT_BUCKETS
from collectors.settings import CollectorSettings

__all__ = ["ANSWERER_METRICS", "AnswererLink"]

log = logging.getLogger("procwarden.collector.answerer_link")

_RESTART_MIN_S, _RESTART_MAX_S = 1.0, 60.0


class AnswererMetrics(Collector):
    """The answerer's counters, as it last sent them, on top of what earlier answerers (before
    a restart) counted: a counter never goes back."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._before: dict[str, Any] = {}
        self._now: dict[str, Any] = {}

    def update(self, snapshot: dict[str, Any]) -> None:
        with self._lock:
            self._now = snapshot

    def answerer_gone(self) -> None:
        with self._lock:
            self._before = _added(self._before, self._now)
            self._before["held"] = 0
            self._now = {}

    def over_budget(self) -> dict[str, int]:
        """Per workload, its first-seen execs answered beyond its held budget (since the
        collector started)."""
        with self._lock:
            return dict(_added(self._before, self._now).get("over_budget", {}))

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            total = _added(self._before, self._now)
            held = self._now.get("held", 0)
        yield CounterMetricFamily(
            "procwarden_collector_held_over_budget",
            "First-seen execs answered by COLLECTOR_OVER_BUDGET_MODE: their workload had "
            "COLLECTOR_MAX_HELD_PER_WORKLOAD execs held already",
            value=sum(total.get("over_budget", {}).values()))
        yield CounterMetricFamily(
            "procwarden_collector_permission_read_errors",
            "Held execs and opens the kernel could not hand to the exec answerer (out of "
            "descriptors, say): the kernel denied each itself", value=total.get("read_errors", 0))
        yield CounterMetricFamily(
            "procwarden_collector_permission_overflows",
            "Reads of the exec answerer's fanotify groups that found the kernel's queue had "
            "overflowed (the dropped permission events were allowed by the kernel)",
            value=total.get("overflows", 0))
        answered = CounterMetricFamily(
            "procwarden_collector_pre_exec", "Held execs answered, by how and what",
            labels=["source", "answer"])
        for label, n in sorted(total.get("answered", {}).items()):
            answered.add_metric(label.split(" ", 1), n)
        yield answered
        yield CounterMetricFamily(
            "procwarden_collector_pre_exec_compiled",
            "Held execs answered from the cache by the exec answerer's compiled wait (counted "
            "in procwarden_collector_pre_exec{source=\"cache\"} too)",
            value=total.get("compiled", 0))
        placed = CounterMetricFamily(
            "procwarden_collector_held_placed",
            "Held execs by how their container and family were known: from the lineage the "
            "process connector told (no read), or read from /proc", labels=["by"])
        for by, n in sorted(total.get("placed", {}).items()):
            placed.add_metric([by], n)
        yield placed
        yield CounterMetricFamily(
            "procwarden_collector_kernel_remembered",
            "Files whose later execs the kernel allows unheld, until a policy change",
            value=total.get("remembered", 0))
        yield CounterMetricFamily(
            "procwarden_collector_kernel_forgotten",
            "Policy changes after which every file the kernel remembered is held again",
            value=total.get("forgotten", 0))
        opens = CounterMetricFamily(
            "procwarden_collector_guarded_opens",
            "Opens held in guarded containers, by what was answered", labels=["answer"])
        for answer, n in sorted(total.get("opens", {}).items()):
            opens.add_metric([answer], n)
        yield opens
        yield GaugeMetricFamily("procwarden_collector_held_execs",
                                "Execs held now, waiting for a verdict", value=held)
        yield _histogram("procwarden_collector_verdict_wait_seconds",
                         "From holding an exec to its verdict", VERDICT_BUCKETS,
                         total.get("verdict_wait"))
        yield _histogram("procwarden_collector_cached_answer_seconds",
                         "From taking up a held exec to answering it from the cache (the "
                         "answerer's own share of the added latency; when its compiled wait "
                         "answers, from the wake-up that read it)", CACHED_BUCKETS,
                         total.get("cached_answer"))


def _added(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in a.keys() | b.keys():
        x, y = a.get(name), b.get(name)
        if x is None or y is None:
            out[name] = y if x is None else x
        elif isinstance(x, dict):
            out[name] = {k: x.get(k, 0) + y.get(k, 0) for k in x.keys() | y.keys()}
        elif isinstance(x, list):
            out[name] = [p + q for p, q in zip(x, y, strict=True)]
        else:
            out[name] = x + y
    return out


def _histogram(name: str, doc: str, buckets: tuple[float, ...], counts: list[float] | None
               ) -> HistogramMetricFamily:
    counts = counts or [0] * (len(buckets) + 2)
    cumulative, running = [], 0.0
    for bound, n in zip((*(str(b) for b in buckets), "+Inf"), counts[:-1], strict=True):
        running += n
        cumulative.append((bound, running))
    return HistogramMetricFamily(name, doc, buckets=cumulative, sum_value=counts[-1])


ANSWERER_METRICS = AnswererMetrics()
REGISTRY.register(ANSWERER_METRICS)


class AnswererLink:
    """`on_start` is called after each start, before anything else is read from the new
    answerer (tell it the held workloads); `on_message` with each question it sends, and each
    write it denied; `on_gone` when an answerer exited (until the next start, nothing is
    held); `cannot_go_on` when no answerer can be started again."""

    def __init__(self, settings: CollectorSettings, on_start: Callable[[], None],
                 on_message: Callable[[Ask | Drift], None], *,
                 on_gone: Callable[[], None] = lambda: None,
                 cannot_go_on: Callable[[str], None] = lambda why: None) -> None:
        self.settings = settings
        self.on_start = on_start
        self.on_message = on_message
        self.on_gone = on_gone
        self.cannot_go_on = cannot_go_on
        self.process: subprocess.Popen[bytes] | None = None
        self._socket: socket.socket | None = None
        self._stopping = threading.Event()
        self._restart = threading.Lock()  # a restart and a stop do not cross
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._spawn()
        self._thread = threading.Thread(target=self._run, name="exec-answerer", daemon=True)
        self._thread.start()

    def send(self, message: ToAnswerer) -> None:
        """From any thread. Lost while no answerer runs: the next one is told the state anew."""
        link = self._socket
        if link is None:
            return
        try:
            link.send(encode(message))
        except OSError as exc:
            log.debug("the exec answerer did not take %s: %s", type(message).__name__, exc)

    def stop(self) -> None:
        with self._restart:  # no answerer is started after this one is told to stop
            self._stopping.set()
        self.send(Stop())
        process = self.process
        if process is not None:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                log.error("the exec answerer did not stop: killing it")
                process.kill()
                process.wait()
        if self._thread is not None:
            self._thread.join(10)
        if self._socket is not None:
            self._socket.close()

    def _spawn(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with theirs:
            # Isolated (-I: neither the working directory, PYTHON* variables nor the user's
            # site is on its path) and run from /: the answerer is root, and the collector may
            # be started in a directory others can write, with a `collectors/` planted in it.
            # The installed package is still found: site-packages stays on the path.
            self.process = subprocess.Popen(
                [sys.executable, "-I", "-m", "collectors.enforcement.exec_answerer",
                 str(theirs.fileno()), self.settings.model_dump_json()],
                pass_fds=(theirs.fileno(),), cwd="/")
        # Each held exec holds a descriptor of the answerer's. Raised from here rather than
        # in the child (preexec_fn is unsafe with threads): before on_start tells it the first
        # held workload, so before it can hold anything.
        try:
            soft, hard = resource.prlimit(self.process.pid, resource.RLIMIT_NOFILE)
            files = self.settings.answerer_max_files
            if hard != resource.RLIM_INFINITY:
                files = min(files, hard)
            if soft != resource.RLIM_INFINITY and soft < files:  # never lowered
                resource.prlimit(self.process.pid, resource.RLIMIT_NOFILE, (files, hard))
        except (OSError, ValueError) as exc:  # gone already (its exit is read), or not allowed
            log.warning("the exec answerer's descriptors are not raised: %s", exc)
        old, self._socket = self._socket, ours
        if old is not None:
            old.close()
        log.info("exec answerer started (pid %d)", self.process.pid)
        self.on_start()

    def _run(self) -> None:
        pause = _RESTART_MIN_S
        while True:
            started = time.monotonic()
            self._read()
            assert self.process is not None
            code = self.process.wait()
            ANSWERER_METRICS.answerer_gone()
            if self._stopping.is_set():
                return
            self.on_gone()
            if time.monotonic() - started > _RESTART_MAX_S:
                pause = _RESTART_MIN_S
            log.error("the exec answerer exited (%s): execs go ahead unheld until it is "
                      "started again in %.0f s", code, pause)
            if self._stopping.wait(pause):
                return
            pause = min(pause * 2, _RESTART_MAX_S)
            try:
                with self._restart:
                    if self._stopping.is_set():
                        return
                    self._spawn()
            except OSError as exc:
                log.error("cannot start the exec answerer: %s", exc)
                self.cannot_go_on(f"the exec answerer cannot be started again ({exc})")
                return

    def _read(self) -> None:
        """What the answerer sends, until it is gone."""
        link = self._socket
        assert link is not None
        while True:
            try:
                data = link.recv(1 << 20)
            except OSError:
                return
            if not data:
                return
            try:
                message = decode_to_collector(data)
            except ProtocolError as exc:  # the same code sent it: a bug, not an attack
                log.error("refused from the exec answerer: %s", exc)
                continue
            try:
                if isinstance(message, Metrics):
                    ANSWERER_METRICS.update(msgspec.structs.asdict(message.counts))
                else:
                    self.on_message(message)
            except Exception:
                log.exception("a message from the exec answerer failed")
