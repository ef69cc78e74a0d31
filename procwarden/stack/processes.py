"""Running a server process of the local stack: pid files, ports, start, readiness, stop."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["LocalServer", "ManagedProcess", "StackError", "port_owner", "port_in_use", "tail"]


_STARTED: dict[int, subprocess.Popen[bytes]] = {}


class StackError(RuntimeError):
    """Something the operator has to fix; the message says what and how."""


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def port_owner(port: int) -> str:
    """The process listening on a TCP port, as `pid (name)`, when /proc tells."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as fh:
            for line in list(fh)[1:]:
                parts = line.split()
                if parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(parts[9])
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:[") and target[8:-1] in inodes:
                    name = Path(f"/proc/{pid}/comm").read_text().strip()
                    return f"pid {pid} ({name})"
    return "another process"


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


@dataclass
class ManagedProcess:
    """One detached server process whose pid lives in a file, so any `procwarden stack`
    invocation (or a later session's) can find, check and stop it."""

    name: str
    pid_file: Path
    log_file: Path

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return pid
        # A zombie or a reused pid is not our server.
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return None
        return None if state == "Z" else pid

    def running(self) -> bool:
        return self.pid() is not None

    def start(self, argv: Sequence[str], *, cwd: Path, env: dict[str, str] | None = None) -> int:
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        if self.log_file.exists() and self.log_file.stat().st_size > 20 * 2**20:
            self.log_file.replace(self.log_file.with_name(self.log_file.name + ".1"))
        with open(self.log_file, "ab") as log:
            proc = subprocess.Popen(list(argv), cwd=cwd, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True,
                                    env=env)
        # The server outlives this handle's owner (it runs detached); keep the handle so it is
        # neither collected while the server runs nor left unreaped when this process stops it.
        _STARTED[proc.pid] = proc
        self.pid_file.write_text(f"{proc.pid}\n")
        return proc.pid

    def wait_ready(self, probe: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running():
                raise StackError(f"{self.name} exited while starting; its log ends with:\n"
                                 f"{tail(self.log_file)}\n(full log: {self.log_file})")
            if probe():
                return
            time.sleep(0.2)
        raise StackError(f"{self.name} did not {what} within {timeout:.0f} s; its log ends "
                         f"with:\n{tail(self.log_file)}\n(full log: {self.log_file})")

    def stop(self, timeout: float = 30.0) -> bool:
        """SIGTERM (a controlled shutdown), then SIGKILL after `timeout`. True if it was up."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.running():
            time.sleep(0.1)
        if self.running():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            while self.running():
                time.sleep(0.05)
        started = _STARTED.pop(pid, None)
        if started is not None:
            started.wait()  # this process started it: reap it
        self.pid_file.unlink(missing_ok=True)
        return True


class LocalServer:
    """A server of the local stack: its state folder and its process."""

    stop_timeout = 30.0

    def __init__(self, home: Path, process: ManagedProcess) -> None:
        self.home = home
        self.process = process

    def stop(self) -> bool:
        return self.process.stop(timeout=self.stop_timeout)

    def reset(self) -> None:
        shutil.rmtree(self.home, ignore_errors=True)
