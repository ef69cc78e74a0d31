"""Rule matching (docs/behaviour.md §4.2–§4.4): one rule against one process, and the process
name."""

from __future__ import annotations

from collections.abc import Sequence

from schemas import Action, Rule

__all__ = [
    "WILDCARD_PATHS",
    "can_match_path",
    "is_parent_rule",
    "match_rule",
    "parent_rule_admits",
    "process_name",
    "split_exe",
    "strictly_under",
    "under",
]

WILDCARD_PATHS = frozenset({"", "*", "/*"})


def split_exe(exe: str) -> tuple[str, str]:
    """(`dir`, `bin`): `exe` up to its last `/`, and the rest."""
    cut = exe.rfind("/")
    return exe[:cut], exe[cut + 1:]


def under(d: str, top: str) -> bool:
    return d == top or d.startswith(top + "/")


def strictly_under(d: str, top: str) -> bool:
    return d.startswith(top + "/")


def is_parent_rule(rule: Rule) -> bool:
    return rule.name.endswith("/*")


def process_name(comm: str, exe_bin: str, argv: Sequence[str]) -> str:
    """`pname` (§4.3): comm, else the exe basename; BusyBox applets by argv[0] (or argv[1])."""
    if exe_bin == "busybox":
        if argv:
            applet = argv[0].rsplit("/", 1)[-1]
            if applet == "busybox" and len(argv) > 1 and not argv[1].startswith("-"):
                applet = argv[1].rsplit("/", 1)[-1]
            if applet:
                return applet
        return comm or exe_bin
    return comm or exe_bin


def match_rule(rname: str, rpath: str, pname: str, exe: str) -> bool:
    """The matching algorithm of §4.2, case by case. Parent rules are filtered out by callers."""
    if rname == "*" and (rpath in {"*", "/*"}):  # 1
        return True
    cut = exe.rfind("/")
    if cut < 0:  # 2
        return False
    d, b = exe[:cut], exe[cut + 1:]
    recursive = rpath.endswith("/*")
    if b == rname:  # 3
        if rpath in WILDCARD_PATHS:
            return True
        if recursive:
            return under(d, rpath[:-2])
    if rname == "*":  # 4
        if recursive:
            return under(d, rpath[:-2])
        return exe == rpath
    if recursive:  # 5a
        return under(d, rpath[:-2]) and pname == rname
    middle = rpath.find("/*/")
    if middle >= 0:  # 5b
        return (strictly_under(d, rpath[:middle]) and pname == rname
                and b == rpath.rsplit("/", 1)[-1])
    if rpath not in WILDCARD_PATHS and exe != rpath:  # 6
        return False
    return pname == rname  # 7


def can_match_path(rule: Rule, exe: str) -> bool:
    """Whether `rule` matches `exe` for some process name (pre-exec, §14: the name is unknown)."""
    if is_parent_rule(rule):
        return False
    rname, rpath = rule.name, rule.path
    if rname != "*":
        # Cases 3, 5 and 7 can all be satisfied by choosing pname == rname.
        if rpath in WILDCARD_PATHS:
            return "/" in exe
        return match_rule(rname, rpath, rname, exe)
    return match_rule(rname, rpath, "", exe)


def parent_rule_admits(rule: Rule, pname: str, parent_name: str, parent_exe: str) -> bool:
    """§4.4: an allow `P/*` admits a child of `P` (or a process named `P`) when the rule path
    matches the parent's executable."""
    if rule.action is not Action.ALLOW:
        return False
    p = rule.name[:-2]
    if p not in (parent_name, pname):
        return False
    rpath = rule.path
    if rpath in WILDCARD_PATHS:
        return True
    if rpath.endswith("/*"):
        return strictly_under(parent_exe, rpath[:-2])
    return parent_exe == rpath
