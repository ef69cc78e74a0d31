"""Health that tells the truth: a role is ready only while it does its job.

Each role owns one `Health` and says, as things change, whether it is doing its job and if not
why ("the policy mirror has not caught up", "the verdict reader stopped"). That state is a
Prometheus gauge (`procwarden_ready{role}`) and, when the role was given a health file, a small
JSON document rewritten on every change and at least every `heartbeat_s`, so `procwarden status`
can tell "ready", "not ready: why" and "not responding" (a file older than a few heartbeats: the
process is alive but its heartbeat thread, or the whole interpreter, is stuck) from a pid check
that only says the process exists.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import Gauge

__all__ = ["HEALTH_FILE_ENV", "Health", "HealthReport", "exit_unless_stopped", "read_health"]

log = logging.getLogger("procwarden.transport.health")

READY = Gauge("procwarden_ready", "1 while the role does its job, else 0", ["role"])

# Where a role started by `procwarden up` writes its health (read by its composition root).
HEALTH_FILE_ENV = "PROCWARDEN_HEALTH_FILE"


@dataclass(frozen=True, slots=True)
class HealthReport:
    role: str
    ready: bool
    reason: str
    since: float  # when it last changed
    updated: float  # when it was last written (the heartbeat)
    pid: int


class Health:
    def __init__(self, role: str, path: Path | None = None, *, heartbeat_s: float = 2.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.role = role
        self.path = path
        self.heartbeat_s = heartbeat_s
        self.clock = clock
        self._lock = threading.Lock()
        self._ready = False
        self._reason = "starting"
        self._since = clock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._parts: dict[str, str] = {}  # what the role needs -> its problem ("" when fine)
        READY.labels(role).set(0)

    @property
    def is_ready(self) -> bool:
        return self._ready

    @property
    def reason(self) -> str:
        return self._reason

    def set(self, ready: bool, reason: str = "") -> None:
        """Say whether the role does its job now, and if not why."""
        with self._lock:
            changed = (ready, reason) != (self._ready, self._reason)
            if changed:
                self._ready, self._reason, self._since = ready, reason, self.clock()
        if changed:
            READY.labels(self.role).set(1 if ready else 0)
            (log.info if ready else log.warning)("%s: %s", self.role,
                                                 "ready" if ready else f"not ready: {reason}")
            self.write()

    def needs(self, *parts: str) -> None:
        """The role does its job only while each of `parts` does (each starts "starting")."""
        with self._lock:
            for part in parts:
                self._parts.setdefault(part, "starting")

    def part(self, name: str, problem: str = "") -> None:
        """One of the parts the role needs is fine (no `problem`) or not, and why: the role is
        ready while every part is fine, else not ready for the first part that is not."""
        with self._lock:
            self._parts[name] = problem
            failing = next(((n, p) for n, p in self._parts.items() if p), None)
        if failing is None:
            self.set(True)
        else:
            self.set(False, f"{failing[0]}: {failing[1]}")

    def report(self) -> HealthReport:
        with self._lock:
            return HealthReport(self.role, self._ready, self._reason, self._since, self.clock(),
                                os.getpid())

    def write(self) -> None:
        if self.path is None:
            return
        r = self.report()
        doc = {"role": r.role, "ready": r.ready, "reason": r.reason, "since": r.since,
               "updated": r.updated, "pid": r.pid}
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "w") as fh:
                json.dump(doc, fh)
            os.replace(tmp, self.path)
        except OSError as exc:  # a full disk must not stop the role; status will say stale
            log.warning("%s: writing %s failed: %s", self.role, self.path, exc)

    def start_heartbeat(self) -> None:
        if self.path is None or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._beat, name=f"health-{self.role}",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.set(False, "stopped")

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            self.write()


def exit_unless_stopped(why: str, grace_s: float = 20.0, code: int = 1) -> None:
    """A role that cannot do its job any more stops cleanly within `grace_s`, or is ended with
    `code`: a graceful stop that hangs (a framework waiting on a stream that will never finish)
    must not leave it alive and doing nothing."""
    def end() -> None:
        time.sleep(grace_s)
        log.critical("still running %.0f s after %s: exiting", grace_s, why)
        logging.shutdown()
        os._exit(code)

    threading.Thread(target=end, name="exit-unless-stopped", daemon=True).start()


def read_health(path: Path, *, now: float | None = None,
                stale_after_s: float = 10.0) -> tuple[str, HealthReport | None]:
    """What a health file says, in a few words: "ready", "not ready: …", "not responding …"."""
    try:
        doc = json.loads(path.read_text())
        report = HealthReport(str(doc["role"]), bool(doc["ready"]), str(doc["reason"]),
                              float(doc["since"]), float(doc["updated"]), int(doc["pid"]))
    except FileNotFoundError:
        return "no health reported", None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"unreadable health ({exc})", None
    age = (time.time() if now is None else now) - report.updated
    if age > stale_after_s:
        return f"not responding (no heartbeat for {age:.0f} s)", report
    if report.ready:
        return "ready", report
    return f"not ready: {report.reason}", report
