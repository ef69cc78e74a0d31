"""ClickHouse server from Debian's packages, run as root with a private data folder.

Nothing is started by systemd: the server runs detached with its own paths and ports given after
`--`, so it can sit beside any other ClickHouse on the machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import urllib.request
from pathlib import Path

from procwarden.stack.layout import ProgressFn, StackLayout
from procwarden.stack.processes import (
    LocalServer,
    ManagedProcess,
    StackError,
    port_in_use,
    port_owner,
)

__all__ = ["ClickHouseServer", "ensure_debian_packages"]

_CONFIG = Path("/etc/clickhouse-server/config.xml")


def ensure_debian_packages(packages: dict[str, str], say: ProgressFn) -> None:
    """Install the Debian packages whose command (the key) is missing."""
    missing = [pkg for cmd, pkg in packages.items() if shutil.which(cmd) is None]
    if not missing:
        return
    if os.geteuid() != 0:
        raise StackError(f"{', '.join(missing)} not installed and not root: run "
                         f"`apt-get install {' '.join(missing)}` as root, then retry")
    say(f"installing {', '.join(missing)} from Debian")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *missing]):
        result = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
        if result.returncode != 0:
            output = (result.stdout + result.stderr)[-2000:]
            raise StackError(f"`{' '.join(argv)}` failed:\n{output}")


class ClickHouseServer(LocalServer):
    stop_timeout = 20.0

    def __init__(self, layout: StackLayout, tcp_port: int, http_port: int,
                 interserver_port: int) -> None:
        home = layout.var / "clickhouse"
        super().__init__(home, ManagedProcess("ClickHouse", home / "clickhouse.pid",
                                              home / "console.log"))
        self.tcp_port = tcp_port
        self.http_port = http_port
        self.interserver_port = interserver_port

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/ping",
                                        timeout=1) as resp:
                return bool(resp.read().strip() == b"Ok.")
        except OSError:
            return False

    def version(self) -> str:
        try:
            with urllib.request.urlopen(
                    f"http://127.0.0.1:{self.http_port}/?query=SELECT%20version()",
                    timeout=2) as resp:
                return str(resp.read().decode().strip())
        except OSError:
            return "?"

    def start(self, say: ProgressFn, timeout: float = 60.0) -> bool:
        """Start and wait for /ping. False if it was already running."""
        if self.process.running():
            self.process.wait_ready(self.ready, timeout, "answer /ping")
            return False
        ensure_debian_packages({"clickhouse-server": "clickhouse-server"}, say)
        if not _CONFIG.exists():
            raise StackError(f"{_CONFIG} is missing: reinstall clickhouse-server")
        for port in (self.tcp_port, self.http_port, self.interserver_port):
            if port_in_use(port):
                raise StackError(f"port {port} is taken by {port_owner(port)}: stop it, or move "
                                 "ClickHouse with PROCWARDEN_STACK_CLICKHOUSE_TCP_PORT / "
                                 "_HTTP_PORT / _INTERSERVER_PORT")
        for sub in ("data", "tmp", "user_files", "format_schemas"):
            (self.home / sub).mkdir(parents=True, exist_ok=True)
        say(f"starting ClickHouse on 127.0.0.1:{self.tcp_port} (http {self.http_port})")
        h = self.home
        self.process.start([
            shutil.which("clickhouse-server") or "clickhouse-server",
            f"--config-file={_CONFIG}", "--",
            f"--path={h}/data/", f"--tmp_path={h}/tmp/", f"--user_files_path={h}/user_files/",
            f"--format_schema_path={h}/format_schemas/", f"--logger.log={h}/server.log",
            f"--logger.errorlog={h}/server.err.log", f"--tcp_port={self.tcp_port}",
            f"--http_port={self.http_port}", f"--interserver_http_port={self.interserver_port}",
            "--listen_host=127.0.0.1",
        ], cwd=h)
        self.process.wait_ready(self.ready, timeout, "answer /ping")
        return True
