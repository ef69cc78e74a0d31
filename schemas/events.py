"""What the collectors observe: workloads, execs, exits, file changes and detector facts.

Field names follow `docs/behaviour.md` §13. Defaults are the common case so that scenario files stay
short; every default is listed in `docs/decide.md`.
"""

from __future__ import annotations

from schemas.enums import CopyDirection, FileOp, Origin, WorkloadKind, WorkloadState
from schemas.records import Record, field

__all__ = [
    "WORKLOAD_EVENT_TYPES",
    "WorkloadEvent",
    "DockerCpEvent",
    "CollectorReport",
    "ExecCheck",
    "ExecEvent",
    "ExitEvent",
    "FileEvent",
    "StdioEvent",
    "UidChangeEvent",
    "Workload",
]


class Workload(Record, frozen=True):
    """A container or a host, as announced by the collector of its node."""

    id: str
    kind: WorkloadKind
    node: str
    name: str = ""  # container name; for a host, the host name
    image: str = ""
    namespace: str = ""
    service: str = ""  # top-level owner (Deployment, StatefulSet, ...) or bare pod name
    pod: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    probe_cmds: tuple[tuple[str, ...], ...] = ()  # the pod's exec probes, argv lists
    system: bool = False  # platform namespace or annotation procwarden.io/system=true
    state: WorkloadState = WorkloadState.RUNNING
    root_pid: int = 0
    started_at: float = 0.0

    def __post_init__(self) -> None:
        if not self.id:
            raise ValueError("id: must not be empty")
        if not self.node:
            raise ValueError("node: must not be empty")


class ExecEvent(Record, frozen=True):
    """One exec, enriched from /proc and the container's filesystem."""

    workload_id: str
    pid: int
    path: str  # resolved executable
    name: str = ""  # kernel comm
    argv: tuple[str, ...] = ()
    ppid: int = 0
    pgid: int = 0
    sid: int = 0
    start_time: int = 0  # /proc/<pid>/stat starttime (clock ticks), for kill safety
    ruid: int = 0
    euid: int = 0
    user: str = ""  # effective user, resolved in the workload's /etc/passwd (else decimal euid)
    real_user: str = ""
    parent_name: str = ""
    parent_path: str = ""
    family: bool = True  # descends from the container's root process
    runtime_injected: bool = False  # started by the runtime into a running container
    exe_on_host: bool = False  # executable outside the container's root filesystem
    origin: Origin = Origin.IMAGE
    hash: str = ""  # sha256 of the executable, only for groups with hash_enabled
    # The process was gone before /proc was read: path from fanotify, creds and family from
    # its parent, argv and name from the path (docs/decide.md).
    partial: bool = False
    # The collector cut the command line or the path to its caps (COLLECTOR_MAX_ARGS, ...):
    # argv and path are a prefix of what ran.
    argv_truncated: bool = False


class ExecCheck(Record, frozen=True):
    """An exec held before it runs (fanotify permission event), asking for a verdict (§14).

    Only the file and the calling process are known: no argv, no final process name.
    """

    workload_id: str
    pid: int  # the caller, about to become the new program
    path: str  # the executable, as seen inside the workload
    start_time: int = 0  # the caller's
    euid: int = 0
    user: str = ""
    name: str = ""  # the caller's comm
    runtime_injected: bool = False
    exe_on_host: bool = False
    origin: Origin = Origin.IMAGE
    netcat: bool = False  # the file is what nc, ncat or netcat resolve to in the workload


class ExitEvent(Record, frozen=True):
    workload_id: str
    pid: int


class FileEvent(Record, frozen=True):
    workload_id: str
    op: FileOp
    path: str
    executable: bool = False  # after the operation
    was_executable: bool = False  # before it (attrib)
    from_image: bool = False  # the path existed in the image
    in_container_fs: bool = True  # False for volumes and host paths
    held: bool = False  # seen at a pre-write permission event, before the write could happen
    pid: int = 0
    proc_name: str = ""
    proc_path: str = ""

    @property
    def is_drift(self) -> bool:
        """Spec §6: whether this operation is drift in a zero-drift container. Here, not in the
        engine, because the collector asks it too before it lets a write happen."""
        if self.op is FileOp.CREATE:
            return self.executable
        if self.op is FileOp.MODIFY:
            return self.from_image or self.executable
        if self.op is FileOp.ATTRIB:
            return self.executable and not self.was_executable
        return False


class StdioEvent(Record, frozen=True):
    """One inspection of a new process's fd 0 and fd 1 (reverse-shell detection)."""

    workload_id: str
    pid: int
    name: str = ""
    path: str = ""
    fd0: str = ""  # "socket:[123]", "pipe:[7]", "/dev/null", ...
    fd1: str = ""
    peer: str = ""  # resolved remote address of the socket, "" if unresolvable
    start_time: int = 0
    ruid: int = 0
    euid: int = 0
    user: str = ""
    parent_name: str = ""
    parent_path: str = ""
    argv: tuple[str, ...] = ()


class UidChangeEvent(Record, frozen=True):
    """A real-uid change, with the facts needed to judge a root escalation (§9.3)."""

    workload_id: str
    pid: int
    ruid: int
    euid: int
    name: str = ""
    path: str = ""
    start_time: int = 0
    parent_name: str = ""
    parent_path: str = ""
    parent_ruid: int = 0  # namespace-relative
    parent_euid: int = 0
    parent_user: str = ""
    parent_argv0: str = ""
    parent_groups: tuple[str, ...] = ()
    grandparent_name: str = ""
    grandparent_path: str = ""
    grandparent_ruid: int | None = None  # None: grandparent unknown
    uid_min: int = 1000
    sudo_in_ancestry: bool = False
    persisted: bool = True  # still differs from the parent's 100 ms later
    argv: tuple[str, ...] = ()
    argv_truncated: bool = False  # as ExecEvent's: argv and paths cut to the collector's caps


class CollectorReport(Record, frozen=True):
    """A collector's running totals since it started, sent every few seconds: what it saw, what
    it could not report (by reason) and its disk spool. Losses are never hidden."""

    node: str
    started_at: float
    execs: int = 0  # exec events seen from the kernel
    reported: int = 0  # exec events published (or spooled)
    lost: dict[str, int] = field(default_factory=dict)  # reason -> count, since started_at
    spool_bytes: int = 0
    # Verdict-topic messages it could not handle (counted and logged: a collector may not
    # write the DLQ), and per workload the first-seen execs denied beyond that workload's
    # held-exec budget (a workload flooding the exec answerer): both since started_at.
    dead_letters: int = 0
    held_over_budget: dict[str, int] = field(default_factory=dict)


class DockerCpEvent(Record, frozen=True):
    workload_id: str
    client_argv: tuple[str, ...]
    direction: CopyDirection | None = None  # derived from argv when absent
    container_name: str = ""
    container_id: str = ""


WorkloadEvent = (ExecEvent | ExecCheck | ExitEvent | FileEvent | StdioEvent | UidChangeEvent
                 | DockerCpEvent)
WORKLOAD_EVENT_TYPES = (ExecEvent, ExecCheck, ExitEvent, FileEvent, StdioEvent, UidChangeEvent,
                        DockerCpEvent)
