"""Real OCI containers for tests and demos: a BusyBox image on overlayfs, run with `runc`.

Each container gets Kubernetes-style annotations (namespace, pod, container name) and procwarden's
own (`procwarden.io/labels`, `procwarden.io/probes`, `procwarden.io/owner`,
`procwarden.io/system`) so the collector can tell which workload and group a process belongs to.
It shares the host's network namespace, so loopback connects containers and host alike.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ANNOTATIONS", "APP_LOOP", "BusyBoxImage", "Container", "ContainerError",
           "run_container"]

# A root process that stands for the container's application: it runs each command line written
# to its control FIFO as its own child, so what it runs is family (unlike `runc exec`), the way a
# web server's CGI or an exploited app would run things.
APP_LOOP = ("/bin/sh", "-c",
            'n=0; while true; do if read -r line < /run/ctl; then n=$((n+1)); '
            'sh -c "$line" > /run/out.$n 2>&1; echo $? > /run/rc.$n; fi; done')

ANNOTATIONS = {
    "namespace": "io.kubernetes.pod.namespace",
    "pod": "io.kubernetes.pod.name",
    "container": "io.kubernetes.container.name",
    "labels": "procwarden.io/labels",
    "probes": "procwarden.io/probes",
    "owner": "procwarden.io/owner",
    "system": "procwarden.io/system",
}

_PASSWD = """root:x:0:0:root:/root:/bin/sh
www-data:x:33:33:www-data:/var/www:/bin/sh
app:x:1000:1000:app:/home/app:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
"""
_GROUP = """root:x:0:
www-data:x:33:
app:x:1000:
nogroup:x:65534:
"""


class ContainerError(RuntimeError):
    pass


def _run(argv: Sequence[str], **kw: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(argv), capture_output=True, text=True, check=False, **kw)  # type: ignore[call-overload]
    if result.returncode != 0:
        raise ContainerError(f"`{' '.join(argv)}` failed ({result.returncode}): "
                             f"{result.stderr.strip() or result.stdout.strip()}")
    return result  # type: ignore[no-any-return]


@dataclass(frozen=True)
class BusyBoxImage:
    """A read-only image folder: Debian's static BusyBox with its applets as symlinks."""

    rootfs: Path

    @classmethod
    def build(cls, folder: Path) -> BusyBoxImage:
        rootfs = folder / "rootfs"
        if (rootfs / "bin" / "busybox").exists() and (rootfs / "run" / "ctl").exists():
            return cls(rootfs)
        shutil.rmtree(rootfs, ignore_errors=True)  # an image from an older testbed
        busybox = shutil.which("busybox") or "/bin/busybox"
        if not Path(busybox).exists():
            raise ContainerError("busybox is missing: apt-get install busybox-static")
        tmp = folder / "rootfs.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        for sub in ("bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "root",
                    "tmp", "var/www", "home/app", "run"):
            (tmp / sub).mkdir(parents=True, exist_ok=True)
        (tmp / "tmp").chmod(0o1777)
        shutil.copy2(busybox, tmp / "bin" / "busybox")
        applets = _run([busybox, "--list-full"]).stdout.split()
        for applet in applets:
            link = tmp / applet
            if applet != "bin/busybox" and not link.exists():
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to("/bin/busybox")
        (tmp / "etc" / "passwd").write_text(_PASSWD)
        (tmp / "etc" / "group").write_text(_GROUP)
        (tmp / "etc" / "login.defs").write_text("UID_MIN 1000\n")
        (tmp / "etc" / "hostname").write_text("busybox\n")
        (tmp / "var" / "www" / "index.html").write_text("<h1>procwarden demo</h1>\n")
        os.mkfifo(tmp / "run" / "ctl", 0o600)  # APP_LOOP's control channel
        tmp.rename(rootfs)
        return cls(rootfs)


@dataclass
class Container:
    id: str
    name: str
    bundle: Path
    rootfs: Path  # the merged overlay the container sees as /
    upperdir: Path  # what changed since the container started
    lowerdir: Path  # the image
    init_pid: int
    annotations: dict[str, str] = field(default_factory=dict)

    def exec(self, *argv: str, check: bool = True, timeout: float = 30.0,
             user: str | None = None, env: Mapping[str, str] | None = None,
             ) -> subprocess.CompletedProcess[str]:
        """Run a command in the container from outside, as `kubectl exec` does."""
        cmd = ["runc", "exec"]
        if user is not None:
            cmd += ["--user", user]
        for key, value in (env or {}).items():
            cmd += ["--env", f"{key}={value}"]
        result = subprocess.run([*cmd, self.id, *argv], capture_output=True, text=True,
                                timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise ContainerError(f"exec {' '.join(argv)} in {self.name} failed "
                                 f"({result.returncode}): {result.stderr.strip()}")
        return result

    _app_runs: int = 0

    def app(self, line: str, timeout: float = 30.0) -> tuple[int, str]:
        """Have the container's own root process (APP_LOOP) run a shell line; its exit status
        and output."""
        self._app_runs += 1
        n = self._app_runs
        deadline = time.monotonic() + timeout
        fd = None
        while fd is None:  # the loop opens the FIFO again between commands
            try:
                fd = os.open(self.rootfs / "run" / "ctl", os.O_WRONLY | os.O_NONBLOCK)
            except OSError:
                if time.monotonic() > deadline:
                    raise ContainerError(f"{self.name}: the app loop is not reading") from None
                time.sleep(0.02)
        try:
            os.write(fd, line.encode() + b"\n")
        finally:
            os.close(fd)
        rc_file = self.rootfs / "run" / f"rc.{n}"
        while not (rc_file.exists() and rc_file.read_text().strip()):
            if time.monotonic() > deadline:
                raise ContainerError(f"{self.name}: `{line}` did not finish in {timeout} s")
            time.sleep(0.02)
        output = (self.rootfs / "run" / f"out.{n}").read_text(errors="replace")
        return int(rc_file.read_text()), output

    def spawn(self, *argv: str, user: str | None = None) -> subprocess.Popen[bytes]:
        """Start a long-running command in the container without waiting for it."""
        cmd = ["runc", "exec"] + (["--user", user] if user else [])
        return subprocess.Popen([*cmd, self.id, *argv], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def state(self) -> dict[str, object]:
        result: dict[str, object] = json.loads(_run(["runc", "state", self.id]).stdout)
        return result

    def stop(self) -> None:
        """Kill the container, delete it and unmount its root: nothing is left behind."""
        with contextlib.suppress(ContainerError):
            _run(["runc", "kill", self.id, "KILL"])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if self.state().get("status") == "stopped":
                    break
            except ContainerError:
                break
            time.sleep(0.05)
        _remove(self.id, self.bundle)

    def __enter__(self) -> Container:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _config(args: Sequence[str], hostname: str, annotations: dict[str, str]) -> dict[str, object]:
    caps = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
            "CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
            "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE"]
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": list(args),
            "env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root"],
            "cwd": "/",
            "capabilities": {k: caps for k in ("bounding", "effective", "permitted")},
            "noNewPrivileges": False,
        },
        "root": {"path": "rootfs", "readonly": False},
        "hostname": hostname,
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
        ],
        "annotations": annotations,
        "linux": {
            "namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount")],
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys",
                              "/proc/sysrq-trigger"],
        },
    }


def _mount_overlay(lower: Path, upper: Path, work: Path, merged: Path) -> None:
    base = f"lowerdir={lower},upperdir={upper},workdir={work}"
    # index=on,nfs_export=on lets fanotify report file ids on the overlay (notes/infra.md).
    try:
        _run(["mount", "-t", "overlay", "overlay", "-o", f"{base},index=on,nfs_export=on",
              str(merged)])
    except ContainerError:
        _run(["mount", "-t", "overlay", "overlay", "-o", base, str(merged)])


def remove_leftovers(workdir: Path) -> list[str]:
    """Delete the stopped containers, and unmount the roots, that a killed run left in
    `workdir`'s bundles (its `stop` never ran); running ones belong to a run still going and
    are left alone. Returns the ids removed."""
    bundles = (workdir.resolve() / "bundles")
    listed = json.loads(_run(["runc", "list", "--format", "json"]).stdout or "null") or []
    running = {c["id"] for c in listed if c.get("status") != "stopped"}
    removed = []
    for bundle in sorted(bundles.iterdir()) if bundles.is_dir() else ():
        if bundle.name in running:
            continue
        _remove(bundle.name, bundle)
        removed.append(bundle.name)
    return removed


def _remove(container_id: str, bundle: Path) -> None:
    """Delete a stopped container, unmount its root and remove its bundle."""
    with contextlib.suppress(ContainerError):
        _run(["runc", "delete", "--force", container_id])
    if os.path.ismount(bundle / "rootfs"):
        _run(["umount", "-l", str(bundle / "rootfs")])
    shutil.rmtree(bundle, ignore_errors=True)


def run_container(workdir: Path, name: str = "web", *, namespace: str = "demo",
                  pod: str | None = None, owner: str | None = None,
                  labels: Mapping[str, str] | None = None,
                  probes: Sequence[Sequence[str]] = (), system: bool = False,
                  command: Sequence[str] = ("/bin/sh", "-c", "exec sleep 100000"),
                  image: BusyBoxImage | None = None) -> Container:
    """Start a BusyBox container. `workdir` holds the image cache and the bundles."""
    if shutil.which("runc") is None:
        raise ContainerError("runc is missing: apt-get install runc")
    workdir = workdir.resolve()
    image = image or BusyBoxImage.build(workdir / "images" / "busybox")
    cid = f"pw-{name}-{uuid.uuid4().hex[:10]}"
    bundle = workdir / "bundles" / cid
    upper, work, merged = bundle / "upper", bundle / "work", bundle / "rootfs"
    for d in (upper, work, merged):
        d.mkdir(parents=True)
    annotations = {
        ANNOTATIONS["namespace"]: namespace,
        ANNOTATIONS["pod"]: pod or f"{name}-{cid[-5:]}",
        ANNOTATIONS["container"]: name,
        ANNOTATIONS["labels"]: json.dumps(dict(labels or {}), sort_keys=True),
        ANNOTATIONS["probes"]: json.dumps([list(p) for p in probes]),
        ANNOTATIONS["owner"]: owner or name,
        ANNOTATIONS["system"]: "true" if system else "false",
    }
    (bundle / "config.json").write_text(json.dumps(_config(command, name, annotations),
                                                   indent=2))
    _mount_overlay(image.rootfs, upper, work, merged)
    try:
        with open(bundle / "console.log", "wb") as log:
            subprocess.run(["runc", "run", "--detach", "--bundle", str(bundle),
                            "--pid-file", str(bundle / "init.pid"), cid],
                           stdin=subprocess.DEVNULL, stdout=log, stderr=log, check=True,
                           timeout=30)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        log_text = (bundle / "console.log").read_text(errors="replace")
        with contextlib.suppress(ContainerError):
            _run(["runc", "delete", "--force", cid])
        _run(["umount", "-l", str(merged)])
        shutil.rmtree(bundle, ignore_errors=True)
        raise ContainerError(f"runc could not start {name}: {exc}\n{log_text}") from None
    init_pid = int((bundle / "init.pid").read_text().strip())
    return Container(id=cid, name=name, bundle=bundle, rootfs=merged, upperdir=upper,
                     lowerdir=image.rootfs, init_pid=init_pid, annotations=annotations)
