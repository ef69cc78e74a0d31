"""Built-in detectors and exemptions (docs/behaviour.md §7.1 steps 1 and 3, §9): pure predicates on
facts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from schemas import CopyDirection, DockerCpEvent, StdioEvent, UidChangeEvent

__all__ = [
    "SUSPICIOUS",
    "Suspicious",
    "docker_cp_target",
    "is_escalation",
    "is_nc_healthcheck",
    "is_runtime_process",
    "is_tunnel",
]


class Suspicious(NamedTuple):
    reported: str
    incoming: bool


SUSPICIOUS: dict[str, Suspicious] = {
    "nmap": Suspicious("port scanner", False),
    "nc": Suspicious("netcat process", False),
    "ncat": Suspicious("netcat process", False),
    "netcat": Suspicious("netcat process", False),
    "sshd": Suspicious("ssh from remote", True),
    "ssh": Suspicious("ssh to remote", False),
    "scp": Suspicious("secure copy", False),
    "telnet": Suspicious("telnet to remote", False),
    "in.telnetd": Suspicious("telnet from remote", True),
    "iodine": Suspicious("dns tunneling", False),
    "iodined": Suspicious("dns tunneling", True),
    "dnscat": Suspicious("dns tunneling", False),
    "dns2tcpc": Suspicious("dns tunneling", False),
    "dns2tcpd": Suspicious("dns tunneling", True),
    "socat": Suspicious("relay process", False),
}

NETCATS = frozenset({"nc", "ncat", "netcat"})
_RUNTIME_NAMES = frozenset({"containerd-shim", "conmon", "crio", "crio-conmon"})


def is_runtime_process(exe_bin: str, argv: Sequence[str]) -> bool:
    """A container-runtime binary (the caller has checked it lies outside the container)."""
    if exe_bin in _RUNTIME_NAMES or exe_bin.startswith("containerd-shim-"):
        return True
    return exe_bin == "runc" and len(argv) > 1 and argv[1] == "init"


def is_nc_healthcheck(argv: Sequence[str]) -> bool:
    args = argv[1:]
    return (any(a in ("localhost", "127.0.0.1") for a in args)
            and any(a.startswith("-w") for a in args)
            and "-l" not in args)


def is_tunnel(ev: StdioEvent) -> bool:
    """fd 0 and fd 1 are the same socket (non-zero inode) with a resolvable peer."""
    fd = ev.fd0
    if fd != ev.fd1 or not fd.startswith("socket:[") or not fd.endswith("]"):
        return False
    inode = fd[8:-1]
    return inode.isdigit() and int(inode) != 0 and bool(ev.peer)


_PRIVILEGED_GROUPS = frozenset({"adm", "sudo", "root"})


def is_escalation(ev: UidChangeEvent) -> bool:
    """§9.3: an unauthorised change of a user's process into root."""
    return (ev.persisted
            and ev.ruid != ev.parent_ruid
            and ev.ruid == 0
            and ev.parent_ruid >= ev.uid_min
            and not _PRIVILEGED_GROUPS.intersection(ev.parent_groups)
            and not ev.sudo_in_ancestry
            and not (ev.grandparent_name == "sshd" and ev.parent_argv0 == "-bash")
            and ev.grandparent_ruid is not None
            and ev.grandparent_ruid != 0)


def docker_cp_target(ev: DockerCpEvent, name: str, cid: str) -> tuple[CopyDirection, str] | None:
    """If the `docker cp SRC DST` argv names this container (name, or id prefix), the direction
    and the path inside the container."""
    argv = list(ev.client_argv)
    try:
        start = argv.index("cp") + 1
    except ValueError:
        return None
    operands = [a for a in argv[start:] if not a.startswith("-")]
    if len(operands) < 2:
        return None
    names = {n for n in (name, ev.container_name) if n}
    ids = [i for i in (cid, ev.container_id) if i]
    for operand, direction in ((operands[1], CopyDirection.TO_CONTAINER),
                               (operands[0], CopyDirection.FROM_CONTAINER)):
        target, sep, inside = operand.partition(":")
        if not sep or not target:
            continue
        target = target.lstrip("/")
        if target in names or any(i.startswith(target) for i in ids):
            return direction, inside
    return None
