"""`procwarden up | down | status`: the long-lived roles on this node, as detached processes.

Each role is `procwarden <role>` started in its own session with its pid in `var/roles/` and its
log beside it, so any later command (or session) finds, checks and stops it. They talk to the
Kafka and ClickHouse the `PROCWARDEN_KAFKA_*` / `PROCWARDEN_CLICKHOUSE_*` variables name (the
local stack by default, where each role gets its own Kafka identity: `streams`, `sink-clickhouse`,
`siem`, and `node-<name>` for the collector, its password passed as a file).
A local rsyslog receiver stands in for a SIEM unless `SIEM_SYSLOG_URL`
points at a real one.
"""

from __future__ import annotations

import os
import secrets
import shutil
import ssl
import sys
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from procwarden.stack.layout import ProgressFn
from procwarden.stack.processes import ManagedProcess, StackError, port_in_use, tail
from streams.settings import StreamSettings
from streams.web.api_tokens import write_private
from transport.health import HEALTH_FILE_ENV, read_health

__all__ = ["Role", "Roles"]

ROOT = Path(__file__).resolve().parents[1]
SYSLOG_PORT = 5514
# The role -> its Kafka principal on the local stack (the collector's is node-<its node>).
_PRINCIPALS = {"streams": "streams", "sink-clickhouse": "sink-clickhouse", "siem": "siem"}


@dataclass(frozen=True)
class Role:
    name: str
    argv: tuple[str, ...]
    ready_line: str  # what its log says once it works
    what: str


class Roles:
    def __init__(self, var: Path | None = None) -> None:
        self.var = (var or ROOT / "var").resolve()
        self.home = self.var / "roles"
        self.siem_log = self.home / "siem-received.log"
        # Where `streams` serves the API: its own setting, read as the command runs.
        try:
            self.api_port = StreamSettings().web_port
        except ValidationError as exc:
            first = exc.errors()[0]
            name = "STREAMS_" + "_".join(str(p) for p in first["loc"]).upper()
            raise StackError(f"{name}: {first['msg']}") from None
        external_siem = os.environ.get("SIEM_SYSLOG_URL", "")
        py = sys.executable
        roles = [
            Role("streams", (py, "-m", "procwarden.cli", "streams"), "[^Worker]: Ready",
                 f"decisions, learning, policy API on http://127.0.0.1:{self.api_port}"),
            Role("sink-clickhouse", (py, "-m", "procwarden.cli", "sink-clickhouse"),
                 "procwarden sink-clickhouse:", "events, verdicts, incidents -> ClickHouse"),
            Role("siem", (py, "-m", "procwarden.cli", "siem"), "procwarden siem",
                 f"incidents -> syslog {external_siem or f'tcp://127.0.0.1:{SYSLOG_PORT}'}"),
            Role("collector", (py, "-m", "procwarden.cli", "collector"), "reading verdicts from",
                 "this node's execs in, verdicts enforced"),
        ]
        if not external_siem:
            roles.insert(0, Role("syslog", ("rsyslogd", "-n", "-f", str(self.home /
                                                                       "rsyslog.conf"),
                                            "-i", str(self.home / "rsyslogd.pid")),
                                 "", f"a local SIEM stand-in: {self.siem_log}"))
        self.roles = roles

    def process(self, role: Role) -> ManagedProcess:
        return ManagedProcess(role.name, self.home / f"{role.name}.pid",
                              self.home / f"{role.name}.log")

    @property
    def api_token(self) -> str:
        """The policy API's bearer token: STREAMS_API_TOKEN, else one made for this node."""
        given = os.environ.get("STREAMS_API_TOKEN")
        if given:
            return given
        path = self.var / "api-token"
        if not path.exists():  # 0600 from its first byte: never readable by others
            write_private(path, (secrets.token_urlsafe(32) + "\n").encode())
        return path.read_text().strip()

    @property
    def api_tokens_file(self) -> Path:
        """The named API tokens (`procwarden token add`) the `streams` role checks."""
        given = os.environ.get("STREAMS_API_TOKENS_FILE")
        return Path(given) if given else self.var / "api-tokens.json"

    def kafka_environment(self, role: Role) -> dict[str, str]:
        """The local stack's Kafka identity for a role; nothing when PROCWARDEN_KAFKA_* name a
        cluster of their own (its credentials are the operator's to give)."""
        if role.name not in _PRINCIPALS and role.name != "collector":
            return {}
        if any(k in os.environ for k in ("PROCWARDEN_KAFKA_BOOTSTRAP_SERVERS",
                                         "PROCWARDEN_KAFKA_SECURITY_PROTOCOL")):
            return {}
        from procwarden.stack import Stack
        from procwarden.stack.credentials import node_principal

        stack = Stack()
        if not stack.kafka.secure:
            return stack.kafka.environment()
        if role.name == "collector":
            node = os.environ.get("COLLECTOR_NODE") or stack.settings.node
            if node not in stack.nodes():
                stack.add_node(node, say=lambda m: None)
            return stack.kafka.environment(node_principal(node))
        return stack.kafka.environment(_PRINCIPALS[role.name])

    def environment(self) -> dict[str, str]:
        env = {**os.environ, "STREAMS_API_TOKEN": self.api_token,
               "STREAMS_API_TOKENS_FILE": str(self.api_tokens_file),
               "STREAMS_DATA_DIR": str(self.var / "streams"),
               "COLLECTOR_STATE_DIR": str(self.var / "collector"),
               "SINKS_METRICS_PORT": os.environ.get("SINKS_METRICS_PORT", "9464")}
        env.setdefault("SIEM_SYSLOG_URL", f"tcp://127.0.0.1:{SYSLOG_PORT}")
        return env

    # -- up / down / status ---------------------------------------------------------------------

    def up(self, say: ProgressFn = print, only: Callable[[Role], bool] = lambda r: True) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        for role in self.roles:
            if not only(role):
                continue
            proc = self.process(role)
            if proc.running():
                say(f"{role.name}: already running (pid {proc.pid()})")
                continue
            if role.name == "syslog":
                self._syslog_config()
            mark = proc.log_file.stat().st_size if proc.log_file.exists() else 0
            health = self.health_file(role)
            health.unlink(missing_ok=True)  # a stopped run's file must not speak for this one
            pid = proc.start(role.argv, cwd=ROOT,
                             env={**self.environment(), **self.kafka_environment(role),
                                  HEALTH_FILE_ENV: str(health)})
            proc.wait_ready(self._probe(role, proc, mark), 90, "get ready")
            say(f"{role.name}: running (pid {pid}): {role.what}")

    def _probe(self, role: Role, proc: ManagedProcess, mark: int) -> Callable[[], bool]:
        if role.name == "syslog":
            return lambda: port_in_use(SYSLOG_PORT)
        if role.name == "streams":
            return self.api_ready

        def logged() -> bool:
            try:
                with open(proc.log_file, "rb") as fh:
                    fh.seek(mark)
                    return role.ready_line.encode() in fh.read()
            except OSError:
                return False
        return logged

    def api_ready(self) -> bool:
        cert = os.environ.get("STREAMS_WEB_TLS_CERT")
        context = None
        if cert:  # our own certificate: trusted as itself, whatever name it was made for
            context = ssl.create_default_context(cafile=cert)
            context.check_hostname = False
        request = urllib.request.Request(
            f"{'https' if cert else 'http'}://127.0.0.1:{self.api_port}/v1/process_profile",
            headers={"Authorization": f"Bearer {self.api_token}"})
        try:
            with urllib.request.urlopen(request, timeout=2, context=context) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def down(self, say: ProgressFn = print) -> None:
        # The collector first: it answers held execs, and lets them all go when it stops.
        for role in reversed(self.roles):
            say(f"{role.name}: stopped" if self.process(role).stop()
                else f"{role.name}: was not running")

    def health_file(self, role: Role) -> Path:
        return self.home / f"{role.name}.health.json"

    def status(self) -> list[str]:
        """One line a role: whether its process runs and, when it does, whether it does its job
        (its own health report: ready, not ready and why, or not responding)."""
        lines = []
        for role in self.roles:
            proc = self.process(role)
            pid = proc.pid()
            state = f"running (pid {pid})" if pid else "stopped"
            lines.append(f"{role.name:16} {state:20} {role.what}")
            if pid and role.name != "syslog":
                said, _ = read_health(self.health_file(role))
                lines.append(f"{'':16} {said}")
        return lines

    def logs(self) -> dict[str, str]:
        return {role.name: str(self.process(role).log_file) for role in self.roles}

    def log_tail(self, name: str, lines: int = 15) -> str:
        return tail(self.home / f"{name}.log", lines)

    def _syslog_config(self) -> None:
        if shutil.which("rsyslogd") is None:
            raise StackError("rsyslogd is missing: apt-get install rsyslog (./pw does)")
        if port_in_use(SYSLOG_PORT):
            raise StackError(f"port {SYSLOG_PORT} is taken: set SIEM_SYSLOG_URL to your SIEM")
        work = self.home / "rsyslog-work"
        work.mkdir(parents=True, exist_ok=True)
        (self.home / "rsyslog.conf").write_text(f"""
global(workDirectory="{work}" maxMessageSize="64k")
module(load="imtcp" MaxSessions="20")
input(type="imtcp" port="{SYSLOG_PORT}" address="127.0.0.1")
template(name="raw" type="string" string="%rawmsg%\\n")
*.* action(type="omfile" file="{self.siem_log}" template="raw")
""")
