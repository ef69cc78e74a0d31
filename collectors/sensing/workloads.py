"""Which workload a process belongs to: its container (from the cgroup path and the OCI
runtime's state) or the node itself (`nodes`).

Finding a container (`WorkloadResolver.container`, the exec answerer's path while every exec
of the node waits) opens no file inside the container: only the runtime's state.json and the
bundle's config.json (host paths) and /proc/<pid>/mountinfo. A container's own files (its
passwd) are read, with `collectors.sensing.container_files`, only when a user name is asked for.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from collectors.kernel.procfs import DEFAULT_LIMITS, ArgvLimits, bound_argv
from collectors.sensing.container_files import DEFAULT_MAX_BYTES, read_container_file
from schemas import Workload, WorkloadKind

__all__ = ["ContainerInfo", "WorkloadResolver", "container_id_from_cgroup", "host_workload_id"]

# Runtime state folders: runc's own, and the runc roots containerd and CRI-O use.
RUNTIME_ROOTS = ("/run/runc", "/run/containerd/runc/k8s.io", "/run/containerd/runc/default",
                 "/run/crun")
_ID_PREFIXES = ("cri-containerd-", "crio-", "docker-", "libpod-")
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def host_workload_id(node: str) -> str:
    return f"host:{node}"


def container_id_from_cgroup(cgroup: str) -> str | None:
    """The last component of the process's cgroup path, without runtime decorations."""
    for line in cgroup.splitlines():
        path = line.split(":", 2)[-1]
        leaf = path.rstrip("/").rsplit("/", 1)[-1]
        if not leaf:
            continue
        leaf = leaf.removesuffix(".scope")
        for prefix in _ID_PREFIXES:
            leaf = leaf.removeprefix(prefix)
        if _SAFE_ID.fullmatch(leaf):
            return leaf
    return None


@dataclass(frozen=True)
class ContainerInfo:
    id: str
    init_pid: int
    annotations: dict[str, str]
    upperdir: Path | None
    lowerdirs: tuple[Path, ...]

    def in_image(self, path: str) -> bool:
        """Whether the container-relative `path` came with the image (is in a lower layer)."""
        return any(os.path.lexists(f"{d}{path}") for d in self.lowerdirs)


def _overlay_dirs(init_pid: int) -> tuple[Path | None, tuple[Path, ...]]:
    try:
        mountinfo = Path(f"/proc/{init_pid}/mountinfo").read_text()
    except OSError:
        return None, ()
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) > 4 and fields[4] == "/" and " - overlay " in line:
            options = line.rsplit(" ", 1)[-1].split(",")
            upper = next((o[9:] for o in options if o.startswith("upperdir=")), "")
            lower = next((o[9:] for o in options if o.startswith("lowerdir=")), "")
            return (Path(upper) if upper else None,
                    tuple(Path(p) for p in lower.split(":") if p))
    return None, ()


def _passwd(pid: int, max_bytes: int, where: str) -> dict[int, str]:
    """uid -> user name from /etc/passwd of `pid`'s root; empty when absent or refused."""
    users: dict[int, str] = {}
    data = read_container_file(pid, "etc/passwd", max_bytes=max_bytes, where=where)
    if data is None:
        return users
    for line in data.decode(errors="replace").splitlines():
        parts = line.split(":")
        if len(parts) > 2 and parts[2].isdigit():
            users.setdefault(int(parts[2]), parts[0])
    return users


@dataclass
class WorkloadResolver:
    node: str
    runtime_roots: tuple[str, ...] = RUNTIME_ROOTS
    platform_namespaces: frozenset[str] = frozenset({"kube-system"})
    # The largest workload file (passwd) read; a bigger one is refused whole.
    max_file_bytes: int = DEFAULT_MAX_BYTES
    # A pod's probe commands are announced as an exec of them would be published: masked
    # (they carry the passwords probes log in with) and capped, so the worker still matches
    # the probe's exec events against them.
    argv_limits: ArgvLimits = DEFAULT_LIMITS
    _probes: dict[str, tuple[tuple[str, ...], ...]] = field(default_factory=dict)
    _containers: dict[str, ContainerInfo | None] = field(default_factory=dict)
    # (container id, init pid) -> its users, read when a name is first asked for (never by
    # `container`)
    _users: dict[tuple[str, int], dict[int, str]] = field(default_factory=dict)
    _host_users: dict[int, str] = field(default_factory=dict)
    _devs: dict[int, str] = field(default_factory=dict)  # root filesystem device -> container
    _scanned_at: float = -1e9
    # cgroup leaf -> the runtime roots' modification times when no root held a folder for it
    _not_containers: dict[str, tuple[int, ...]] = field(default_factory=dict)
    _roots_here: tuple[str, ...] = ()
    _roots_listed_at: float = -1e9

    def container(self, cid: str) -> ContainerInfo | None:
        """The container `cid`, from its runtime's state; opens no file inside it (the exec
        answerer calls this while the node's execs are held)."""
        if cid in self._containers:
            return self._containers[cid]
        # A host cgroup is looked up again only once a runtime root changed (a container's
        # folder came or went). A folder without its state yet is a container being created:
        # not remembered, so its next exec finds it (its init runs in its cgroup before runc
        # writes state.json, and the user's program right after).
        roots = self._roots_stamp()
        if self._not_containers.get(cid) == roots:
            return None
        info = None
        being_created = False
        for root in self.runtime_roots:
            state_file = Path(root) / cid / "state.json"
            try:
                state = json.loads(state_file.read_text())
            except (OSError, ValueError):
                being_created = being_created or os.path.isdir(state_file.parent)
                continue
            labels = state.get("config", {}).get("labels") or []
            annotations = dict(label.split("=", 1) for label in labels if "=" in label)
            bundle = annotations.pop("bundle", "")
            if bundle:
                try:
                    config = json.loads((Path(bundle) / "config.json").read_text())
                    annotations = {**annotations, **(config.get("annotations") or {})}
                except (OSError, ValueError):
                    pass
            init_pid = int(state.get("init_process_pid", 0))
            upper, lowers = _overlay_dirs(init_pid)
            info = ContainerInfo(cid, init_pid, annotations, upper, lowers)
            break
        if info is not None:
            self._containers[cid] = info
            self._not_containers.pop(cid, None)
        elif not being_created:
            if len(self._not_containers) > 10_000:
                self._not_containers.clear()
            self._not_containers[cid] = roots
        return info

    def _roots_stamp(self) -> tuple[int, ...]:
        """The modification times of the runtime roots that exist (which exist is looked up
        at most once a second, and a root coming or going changes the stamp too); a
        container's folder coming or going changes its root's."""
        now = time.monotonic()
        if now - self._roots_listed_at >= 1.0:
            self._roots_listed_at = now
            self._roots_here = tuple(r for r in self.runtime_roots if os.path.isdir(r))
        stamp = [len(self._roots_here)]
        for root in self._roots_here:
            try:
                stamp.append(os.stat(root).st_mtime_ns)
            except OSError:
                stamp.append(-1)
        return tuple(stamp)

    def forget(self, cid: str) -> None:
        self._containers.pop(cid, None)
        self._users = {key: users for key, users in self._users.items() if key[0] != cid}
        self._devs = {dev: c for dev, c in self._devs.items() if c != cid}

    def container_by_dev(self, dev: int) -> ContainerInfo | None:
        """The container whose root filesystem is the device `dev` (an overlay has its own)."""
        cid = self._devs.get(dev)
        if cid is None and time.monotonic() - self._scanned_at > 1.0:
            self._scanned_at = time.monotonic()  # host files are common: rescan at most 1/s
            for root in self.runtime_roots:
                try:
                    cids = os.listdir(root)
                except OSError:
                    continue
                for candidate in cids:
                    info = self.container(candidate)
                    if info is None or not info.init_pid:
                        continue
                    try:
                        self._devs[os.stat(f"/proc/{info.init_pid}/root").st_dev] = candidate
                    except OSError:
                        continue
            cid = self._devs.get(dev)
        return self.container(cid) if cid else None

    def container_of(self, cgroup: str) -> ContainerInfo | None:
        cid = container_id_from_cgroup(cgroup)
        return self.container(cid) if cid else None

    def workload(self, info: ContainerInfo | None) -> Workload:
        if info is None:
            return Workload(id=host_workload_id(self.node), kind=WorkloadKind.HOST,
                            node=self.node, name=self.node)
        a = info.annotations
        namespace = a.get("io.kubernetes.pod.namespace", "")
        pod = a.get("io.kubernetes.pod.name", "")
        name = a.get("io.kubernetes.container.name", info.id)
        try:
            labels = {str(k): str(v) for k, v in json.loads(a.get("procwarden.io/labels", "{}")
                                                               ).items()}
            probes = self._probe_cmds(a.get("procwarden.io/probes", "[]"))
        except (ValueError, TypeError, AttributeError):
            labels, probes = {}, ()
        return Workload(
            id=info.id, kind=WorkloadKind.CONTAINER, node=self.node, name=name,
            image=a.get("io.kubernetes.container.image", a.get("procwarden.io/image", "")),
            namespace=namespace, service=a.get("procwarden.io/owner", "") or _owner(pod),
            pod=pod, labels=labels, probe_cmds=probes,
            system=a.get("procwarden.io/system") == "true"
            or namespace in self.platform_namespaces,
            root_pid=info.init_pid)

    def _probe_cmds(self, annotation: str) -> tuple[tuple[str, ...], ...]:
        """The probes of an annotation (a JSON list of argv lists), as `bound_argv` bounds and
        masks a command line read from /proc; parsed once per annotation (each exec of the
        workload builds its announcement)."""
        known = self._probes.get(annotation)
        if known is None:
            known = tuple(
                bound_argv("\0".join(str(x) for x in probe).encode(errors="replace"), False,
                           self.argv_limits)[0]
                for probe in json.loads(annotation))
            if len(self._probes) >= 4096:
                self._probes.clear()
            self._probes[annotation] = known
        return known

    def user_name(self, info: ContainerInfo | None, uid: int) -> str:
        """`uid`'s name in the workload's passwd (read once, safely: `container_files`), or
        the number when it has none."""
        if info is not None:
            key = (info.id, info.init_pid)
            users = self._users.get(key)
            if users is None:
                if len(self._users) >= 4096:
                    self._users.clear()
                users = self._users[key] = _passwd(info.init_pid, self.max_file_bytes, info.id)
            return users.get(uid, str(uid))
        if not self._host_users:
            self._host_users = _passwd(1, self.max_file_bytes, self.node) or {0: "root"}
        return self._host_users.get(uid, str(uid))


_REPLICASET_POD = re.compile(r"^(?P<owner>.+)-[a-z0-9]{6,10}-[a-z0-9]{5}$")
_SET_POD = re.compile(r"^(?P<owner>.+)-(?:[0-9]+|[a-z0-9]{5})$")


def _owner(pod: str) -> str:
    """The top-level owner a pod name suggests (Deployment for `name-<rs hash>-<id>`,
    StatefulSet/DaemonSet for `name-<n>`/`name-<id>`); the pod name itself otherwise."""
    for pattern in (_REPLICASET_POD, _SET_POD):
        match = pattern.match(pod)
        if match:
            return match.group("owner")
    return pod

