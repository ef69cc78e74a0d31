"""§4.2 matching, §4.3 process names, §4.4 parent rules, and the index against a linear scan."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.engine import compile_rules, match_rule, process_name
from streams.engine.matching import can_match_path, parent_rule_admits
from tests.builders import rule

# (rule name, rule path, pname, exe, expected)
MATCH_CASES = {
    "star-star matches anything": ("*", "*", "x", "/a/b", True),
    "star-slash-star matches anything": ("*", "/*", "x", "/a/b", True),
    "exe without slash never matches": ("bash", "", "bash", "bash", False),
    "name with empty path by pname": ("bash", "", "bash", "/opt/x/sh", True),
    "name with empty path by basename": ("bash", "", "sh", "/bin/bash", True),
    "name with star path": ("bash", "*", "sh", "/usr/bin/bash", True),
    "name with /* path": ("bash", "/*", "bash", "/x/y", True),
    "name mismatch with star path": ("bash", "*", "sh", "/bin/sh", False),
    "recursive covers direct child": ("*", "/usr/bin/*", "x", "/usr/bin/x", True),
    "recursive covers deep child": ("*", "/usr/bin/*", "x", "/usr/bin/a/b/x", True),
    "recursive is not a string prefix": ("*", "/usr/bin/*", "x", "/usr/bin2/x", False),
    "recursive does not cover the dir itself": ("*", "/usr/bin/*", "bin", "/usr/bin", False),
    "basename beats pname (case 3)": ("bash", "/usr/bin/*", "ps", "/usr/bin/local/bash", True),
    "recursive named rule needs pname": ("ls", "/bin/*", "cat", "/bin/cat", False),
    "recursive named rule by pname": ("ls", "/bin/*", "ls", "/bin/busybox", True),
    "recursive named rule outside dir": ("ls", "/bin/*", "ls", "/sbin/busybox", False),
    "star exact path": ("*", "/opt/app/server", "anything", "/opt/app/server", True),
    "star exact path other file": ("*", "/opt/app/server", "server", "/opt/app/server2", False),
    "middle wildcard one level": ("nginx", "/usr/*/nginx", "nginx", "/usr/local/nginx", True),
    "middle wildcard deeper": ("nginx", "/usr/*/nginx", "nginx",
                               "/usr/local/openresty/bin/nginx", True),
    "middle wildcard needs a middle": ("nginx", "/usr/*/nginx", "nginx", "/usr/nginx", False),
    "middle wildcard component prefix": ("nginx", "/usr/*/nginx", "nginx", "/usrx/a/nginx", False),
    "middle wildcard needs pname": ("nginx", "/usr/*/nginx", "x", "/usr/local/nginx", False),
    "exact path and name": ("ping", "/bin/ping", "ping", "/bin/ping", True),
    "exact path other exe": ("ping", "/bin/ping", "ping", "/usr/bin/ping", False),
    "exact path needs pname, not basename": ("bash", "/bin/bash", "sh", "/bin/bash", False),
    "exact path busybox applet": ("ping", "/bin/busybox", "ping", "/bin/busybox", True),
    "parent-rule shaped name never wildcard": ("sh/*", "*", "sh", "/bin/sh", False),
}


@pytest.mark.parametrize("case", MATCH_CASES.values(), ids=MATCH_CASES.keys())
def test_match_rule(case: tuple[str, str, str, str, bool]) -> None:
    rname, rpath, pname, exe, expected = case
    assert match_rule(rname, rpath, pname, exe) is expected


PNAME_CASES = {
    "comm": ("bash", "bash", ("bash",), "bash"),
    "empty comm falls back to basename": ("", "ls", ("ls",), "ls"),
    "busybox applet by argv0": ("ping", "busybox", ("/bin/ping", "-c1"), "ping"),
    "busybox with renamed comm": ("evil", "busybox", ("ping",), "ping"),
    "busybox X is judged as X": ("busybox", "busybox", ("busybox", "ping", "x"), "ping"),
    "busybox --list stays busybox": ("busybox", "busybox", ("busybox", "--list"), "busybox"),
    "plain busybox": ("busybox", "busybox", ("busybox",), "busybox"),
    "busybox without argv uses comm": ("sh", "busybox", (), "sh"),
}


@pytest.mark.parametrize("case", PNAME_CASES.values(), ids=PNAME_CASES.keys())
def test_process_name(case: tuple[str, str, tuple[str, ...], str]) -> None:
    comm, exe_bin, argv, expected = case
    assert process_name(comm, exe_bin, argv) == expected


PARENT_CASES = {
    "parent named P, any path": (("sh/*", ""), "ls", "sh", "/bin/sh", True),
    "own name is P": (("sh/*", "*"), "sh", "bash", "/bin/bash", True),
    "other parent": (("sh/*", "*"), "ls", "bash", "/bin/bash", False),
    "exact parent path": (("sh/*", "/bin/sh"), "ls", "sh", "/bin/sh", True),
    "exact parent path differs": (("sh/*", "/bin/sh"), "ls", "sh", "/tmp/sh", False),
    "recursive parent path": (("sh/*", "/bin/*"), "ls", "sh", "/bin/x/sh", True),
    "recursive parent path outside": (("sh/*", "/bin/*"), "ls", "sh", "/binx/sh", False),
}


@pytest.mark.parametrize("case", PARENT_CASES.values(), ids=PARENT_CASES.keys())
def test_parent_rule(case: tuple[tuple[str, str], str, str, str, bool]) -> None:
    (rname, rpath), pname, parent, parent_exe, expected = case
    assert parent_rule_admits(rule(rname, rpath), pname, parent, parent_exe) is expected


def test_deny_parent_rule_never_admits() -> None:
    assert not parent_rule_admits(rule("sh/*", "*", "deny"), "ls", "sh", "/bin/sh")


def test_can_match_path_covers_every_process_name() -> None:
    assert can_match_path(rule("bash", ""), "/tmp/evil")  # a symlink named bash could run it
    assert can_match_path(rule("*", "/tmp/*"), "/tmp/a/evil")
    assert not can_match_path(rule("*", "/usr/*"), "/tmp/evil")
    assert not can_match_path(rule("ls", "/bin/ls"), "/tmp/ls")
    assert can_match_path(rule("ls", "/bin/ls"), "/bin/ls")
    assert not can_match_path(rule("sh/*", "*"), "/bin/sh")


# Index equivalence: the compiled lookup must equal a linear first-match scan.
_names = st.sampled_from(["*", "sh", "bash", "ls", "ping", "busybox", "nginx", "sh/*"])
_paths = st.sampled_from(["", "*", "/*", "/bin/*", "/usr/*", "/usr/bin/*", "/bin/sh",
                          "/bin/busybox", "/usr/local/bin/nginx", "/usr/*/nginx", "/opt/x"])
_exes = st.sampled_from(["/bin/sh", "/bin/busybox", "/usr/bin/bash", "/usr/local/bin/nginx",
                         "/usr/local/nginx", "/opt/x", "/tmp/ls", "/bin/ls", "/usr/bin2/ls",
                         "/x"])
_pnames = st.sampled_from(["sh", "bash", "ls", "ping", "busybox", "nginx", "x"])


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(_names, _paths, st.booleans()), max_size=25), _pnames, _exes,
       st.booleans())
def test_index_equals_linear_scan(specs: list[tuple[str, str, bool]], pname: str, exe: str,
                                  skip_probe: bool) -> None:
    rules = [rule(n, p, probe_cmds=("x",) if probe else (), uuid=f"r{i}")
             for i, (n, p, probe) in enumerate(specs)]
    compiled = compile_rules(rules, 0)
    expected = next((i for i, r in enumerate(rules)
                     if not r.name.endswith("/*") and not (skip_probe and r.probe_cmds)
                     and match_rule(r.name, r.path, pname, exe)), -1)
    assert compiled.first_match(pname, exe, skip_probe=skip_probe) == expected
