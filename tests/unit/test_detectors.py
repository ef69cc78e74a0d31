"""§9 built-in detectors, §7 steps 1 and 3 exemptions, D14 system containers, `nodes`."""

from __future__ import annotations

import pytest

from schemas import (
    Baseline,
    CopyDirection,
    DockerCpEvent,
    ExitEvent,
    IncidentAction,
    Level,
    Mode,
    Origin,
    StdioEvent,
    UidChangeEvent,
    Verdict,
)
from schemas.masking import mask_cmdline
from tests.builders import WEB, World, container, group, host, learned_rule, rule

D, M, P = Mode.DISCOVER, Mode.MONITOR, Mode.PROTECT


# ---- suspicious programs (§9.1) ----

SUSPICIOUS = {
    "nmap": ("nmap", "port scanner", False),
    "nc": ("nc", "netcat process", False),
    "ncat": ("ncat", "netcat process", False),
    "netcat": ("netcat", "netcat process", False),
    "sshd": ("sshd", "ssh from remote", True),
    "ssh": ("ssh", "ssh to remote", False),
    "scp": ("scp", "secure copy", False),
    "telnet": ("telnet", "telnet to remote", False),
    "in.telnetd": ("in.telnetd", "telnet from remote", True),
    "iodine": ("iodine", "dns tunneling", False),
    "iodined": ("iodined", "dns tunneling", True),
    "dnscat": ("dnscat", "dns tunneling", False),
    "dns2tcpc": ("dns2tcpc", "dns tunneling", False),
    "dns2tcpd": ("dns2tcpd", "dns tunneling", True),
    "socat": ("socat", "relay process", False),
}


@pytest.mark.parametrize("case", SUSPICIOUS.values(), ids=SUSPICIOUS.keys())
def test_suspicious_in_discover_alerts_and_is_never_learned(case: tuple[str, str, bool]) -> None:
    name, reported, incoming = case
    world = World(groups=[group(mode=D, baseline=Baseline.BASIC)])
    d = world.exec(f"/usr/bin/{name}")
    assert (d.verdict, d.reason) == (Verdict.ALERT, f"suspicious:{name}")
    assert d.incident is not None
    assert d.incident.name == "Container.Suspicious.Process"
    assert d.incident.message == f"Risky application: {reported}"
    assert d.incident.rule_id.endswith("001")
    assert d.incident.conn_ingress is incoming
    assert d.learn is None and not world.policy().rules


@pytest.mark.parametrize("mode", [M, P], ids=["Monitor", "Protect"])
def test_suspicious_is_a_profile_violation_outside_discover(mode: Mode) -> None:
    world = World(groups=[group(mode=mode, rules=(rule("*", "/usr/*"),))])
    d = world.exec("/usr/bin/nmap")
    assert d.reason == "violation:RS"
    assert d.verdict is (Verdict.BLOCK if mode is P else Verdict.ALERT)
    assert d.incident is not None and d.incident.name == "Process.Profile.Violation"
    assert d.incident.rule_id == rule("*", "/usr/*").uuid  # uuid of m (allowed, not explicit)


def test_explicitly_allowed_suspicious_program_runs() -> None:
    world = World(groups=[group(mode=P, rules=(rule("nc", "/usr/bin/nc"),))])
    assert world.exec("/usr/bin/nc").verdict is Verdict.ALLOW


def test_allow_all_counts_as_explicit() -> None:
    world = World(groups=[group(mode=P, rules=(rule("*", "*"),))])
    assert world.exec("/usr/bin/nmap").verdict is Verdict.ALLOW


def test_discover_unlisted_but_explicitly_named_is_r0() -> None:
    # A deny rule named like the risk makes it "explicitly allowed"-named; unlisted path -> R0.
    world = World(groups=[group(mode=D, rules=(rule("nc", "/opt/nc", "deny"),))])
    d = world.exec("/usr/bin/nc")
    assert (d.verdict, d.reason) == (Verdict.ALERT, "violation:R0")


def test_risk_is_inherited_by_children_and_forgotten_on_exit() -> None:
    world = World(groups=[group(mode=M, rules=(rule("sh", ""),))])
    assert world.exec("/bin/nc", pid=50).reason == "violation:RS"
    child = world.exec("/bin/sh", pid=51, ppid=50, parent_name="nc")
    assert (child.verdict, child.reason) == (Verdict.ALERT, "violation:RS")
    renamed = world.exec("/bin/sh", pid=53, ppid=50, parent_name="renamed")
    assert renamed.reason == "violation:RS"  # remembered per pid, not by the parent's name
    world.decide(ExitEvent(workload_id="c1", pid=50))
    assert world.exec("/bin/sh", pid=52, ppid=50, parent_name="bash").verdict is Verdict.ALLOW


def test_explicit_allow_of_the_risk_covers_its_children() -> None:
    world = World(groups=[group(mode=P, rules=(rule("nc", ""), rule("sh", "")))])
    assert world.exec("/bin/nc", pid=50).verdict is Verdict.ALLOW
    assert world.exec("/bin/sh", pid=51, ppid=50).verdict is Verdict.ALLOW


def test_unknown_parent_passes_risk_by_name() -> None:
    world = World(groups=[group(mode=P, rules=(rule("sh", ""),))])
    d = world.exec("/bin/sh", ppid=999, parent_name="socat")
    assert d.reason == "violation:RS"


def test_host_sshd_is_not_suspicious_and_passes_nothing_on() -> None:
    world = World(groups=[group("nodes", mode=P, rules=(rule("sshd", "", group="nodes"),
                                                       rule("bash", "", group="nodes")))],
                  workloads=[host()])
    assert world.exec("/usr/sbin/sshd", workload="host-1", pid=10).verdict is Verdict.ALLOW
    d = world.exec("/bin/bash", workload="host-1", pid=11, ppid=10, parent_name="sshd")
    assert d.verdict is Verdict.ALLOW


def test_container_sshd_is_suspicious() -> None:
    world = World(groups=[group(mode=D)])
    assert world.exec("/usr/sbin/sshd").reason == "suspicious:sshd"


# ---- nc health checks (§7.1 step 3) ----

HEALTHCHECKS = {
    "nc -w1 localhost port": (("nc", "-w1", "localhost", "80"), Origin.IMAGE, True),
    "ncat -w 1 127.0.0.1": (("ncat", "-w", "1", "127.0.0.1", "80"), Origin.IMAGE, True),
    "listening is no health check": (("nc", "-l", "-w1", "localhost"), Origin.IMAGE, False),
    "remote host is no health check": (("nc", "-w1", "10.0.0.1", "80"), Origin.IMAGE, False),
    "no -w is no health check": (("nc", "localhost", "80"), Origin.IMAGE, False),
    "new nc binary is no health check": (("nc", "-w1", "localhost"), Origin.NEW, False),
}


@pytest.mark.parametrize("case", HEALTHCHECKS.values(), ids=HEALTHCHECKS.keys())
def test_nc_healthcheck(case: tuple[tuple[str, ...], Origin, bool]) -> None:
    argv, origin, exempt = case
    world = World(groups=[group(mode=P, baseline=Baseline.BASIC)])
    d = world.exec(f"/usr/bin/{argv[0]}", argv=argv, origin=origin)
    if exempt:
        assert (d.verdict, d.reason, d.incident) == (Verdict.ALLOW, "exception:nc-healthcheck",
                                                     None)
    else:
        assert d.verdict is Verdict.BLOCK


def test_nc_healthcheck_not_on_hosts() -> None:
    world = World(groups=[group("nodes", mode=P)], workloads=[host()])
    d = world.exec("/usr/bin/nc", argv=("nc", "-w1", "localhost"), workload="host-1")
    assert d.verdict is Verdict.BLOCK


# ---- runtime processes and empty exe (§7.1 step 1) ----

RUNTIME = {
    "containerd-shim": ("/usr/bin/containerd-shim", ("containerd-shim",), True),
    "containerd-shim-runc-v2": ("/usr/bin/containerd-shim-runc-v2", ("x",), True),
    "conmon": ("/usr/bin/conmon", ("conmon",), True),
    "crio": ("/usr/bin/crio", ("crio",), True),
    "runc init": ("/usr/sbin/runc", ("runc", "init"), True),
    "runc run is not ignored": ("/usr/sbin/runc", ("runc", "run"), False),
}


@pytest.mark.parametrize("case", RUNTIME.values(), ids=RUNTIME.keys())
def test_runtime_processes_are_ignored_outside_the_container(
        case: tuple[str, tuple[str, ...], bool]) -> None:
    path, argv, ignored = case
    world = World(groups=[group(mode=P)])
    d = world.exec(path, argv=argv, exe_on_host=True)
    assert (d.verdict is Verdict.NONE) is ignored
    inside = world.exec(path, argv=argv, exe_on_host=False)
    assert inside.verdict is Verdict.BLOCK  # the same name inside the container is judged


def test_empty_exe_is_ignored() -> None:
    world = World(groups=[group(mode=P)])
    assert world.exec("", name="x").verdict is Verdict.NONE
    assert world.exec("/", name="x").verdict is Verdict.NONE


# ---- system containers (D14) and nodes ----

def test_system_container_in_protect_is_judged_as_monitor() -> None:
    world = World(groups=[group(mode=P, baseline=Baseline.ZERO_DRIFT)],
                  workloads=[container(system=True)])
    d = world.exec("/bin/ls")
    assert (d.verdict, d.reason) == (Verdict.ALERT, "violation:R7")
    assert d.mode is P and not d.would_block
    assert d.incident is not None and d.incident.action is IncidentAction.VIOLATE
    nmap = world.exec("/usr/bin/nmap")
    assert nmap.verdict is Verdict.ALERT


def test_nodes_group_is_basic_and_attributes_host_incidents() -> None:
    world = World(groups=[group("nodes", mode=P, rules=(rule("ls", "", group="nodes"),))],
                  workloads=[host()])
    assert world.exec("/bin/ls", workload="host-1", family=False,
                      origin=Origin.NEW).verdict is Verdict.ALLOW
    d = world.exec("/bin/cat", workload="host-1")
    assert d.verdict is Verdict.BLOCK and d.baseline is Baseline.BASIC
    assert d.incident is not None
    assert (d.incident.name, d.incident.group) == ("Host.Process.Violation", "nodes")


def test_hosts_learn_into_nodes() -> None:
    world = World(groups=[group("nodes", mode=D)], workloads=[host()])
    assert world.exec("/usr/bin/top", workload="host-1").verdict is Verdict.LEARN
    assert [r.name for r in world.policy("nodes").rules] == ["top"]


# ---- alert_disabled (D18) ----

def test_alert_disabled_suppresses_incidents_but_not_blocking() -> None:
    world = World(groups=[group(mode=P, alert_disabled=True)])
    d = world.exec("/bin/ls")
    assert d.verdict is Verdict.BLOCK and d.suppressed and d.incident is not None
    allowed = World(groups=[group(mode=P, alert_disabled=True, rules=(rule("ls", ""),))])
    assert not allowed.exec("/bin/ls").suppressed


# ---- reverse shell (§9.2) ----

def _stdio(pid: int = 70, fd0: str = "socket:[4242]", fd1: str = "socket:[4242]",
           peer: str = "127.0.0.1:4444", name: str = "sh") -> StdioEvent:
    return StdioEvent(workload_id="c1", pid=pid, name=name, path="/bin/sh", fd0=fd0, fd1=fd1,
                      peer=peer, start_time=5)


@pytest.mark.parametrize("mode", [D, M, P], ids=["Discover", "Monitor", "Protect"])
def test_reverse_shell_confirmed_on_second_sighting(mode: Mode) -> None:
    world = World(groups=[group(mode=mode, rules=(rule("*", "*"),))])
    first = world.decide(_stdio())
    assert (first.verdict, first.reason) == (Verdict.NONE, "none:tunnel-sighted")
    second = world.decide(_stdio())
    assert second.verdict is (Verdict.BLOCK if mode is P else Verdict.ALERT)
    assert second.incident is not None
    assert (second.incident.name, second.incident.message) == (
        "Container.Tunnel.Detected", "Tunnel detected: reverse shell")
    assert second.incident.rule_id.endswith("002") and second.incident.level is Level.CRITICAL
    assert world.decide(_stdio()).verdict is Verdict.NONE  # reported once


TUNNEL_NEGATIVES = {
    "different sockets": _stdio(fd0="socket:[1]", fd1="socket:[2]"),
    "inode zero": _stdio(fd0="socket:[0]", fd1="socket:[0]"),
    "no peer": _stdio(peer=""),
    "pipes": _stdio(fd0="pipe:[7]", fd1="pipe:[7]"),
    "sshd is not inspected": _stdio(name="sshd"),
}


@pytest.mark.parametrize("event", TUNNEL_NEGATIVES.values(), ids=TUNNEL_NEGATIVES.keys())
def test_not_a_reverse_shell(event: StdioEvent) -> None:
    world = World(groups=[group(mode=P)])
    assert world.decide(event).verdict is Verdict.NONE
    assert world.decide(event).verdict is Verdict.NONE


def test_reverse_shell_on_host() -> None:
    world = World(groups=[group("nodes", mode=M)], workloads=[host()])
    event = StdioEvent(workload_id="host-1", pid=9, name="bash", path="/bin/bash",
                       fd0="socket:[9]", fd1="socket:[9]", peer="10.1.1.1:80")
    world.decide(event)
    d = world.decide(event)
    assert d.incident is not None and d.incident.name == "Host.Tunnel.Detected"


# ---- root privilege escalation (§9.3) ----

def _uid(**kw: object) -> UidChangeEvent:
    base: dict[str, object] = dict(
        workload_id="c1", pid=80, ruid=0, euid=0, name="evil", path="/tmp/evil",
        parent_name="bash", parent_path="/bin/bash", parent_ruid=1000, parent_euid=1000,
        parent_user="alice", parent_argv0="bash", grandparent_name="init",
        grandparent_path="/sbin/init", grandparent_ruid=1000)
    base.update(kw)
    return UidChangeEvent(**base)  # type: ignore[arg-type]


ESCALATIONS = {
    "user to root": ({}, True),
    "below UID_MIN": ({"parent_ruid": 999}, False),
    "custom UID_MIN": ({"parent_ruid": 600, "uid_min": 500}, True),
    "not root": ({"ruid": 5}, False),
    "same as parent": ({"parent_ruid": 0}, False),
    "did not persist": ({"persisted": False}, False),
    "sudo group": ({"parent_groups": ("users", "sudo")}, False),
    "adm group": ({"parent_groups": ("adm",)}, False),
    "sudo in ancestry": ({"sudo_in_ancestry": True}, False),
    "ssh login shell": ({"grandparent_name": "sshd", "parent_argv0": "-bash"}, False),
    "grandparent unknown": ({"grandparent_ruid": None}, False),
    "grandparent root": ({"grandparent_ruid": 0}, False),
}


@pytest.mark.parametrize("case", ESCALATIONS.values(), ids=ESCALATIONS.keys())
def test_escalation(case: tuple[dict[str, object], bool]) -> None:
    facts, expected = case
    world = World(groups=[group(mode=P)])
    d = world.decide(_uid(**facts))
    if not expected:
        assert d.verdict is Verdict.NONE
        return
    assert (d.verdict, d.reason, d.pid) == (Verdict.BLOCK, "escalation", 80)
    assert d.incident is not None
    assert d.incident.name == "Container.Privilege.Escalation"
    assert d.incident.level is Level.CRITICAL and d.incident.rule_id.endswith("003")
    assert d.incident.message == "Unauthorized root privilege escalation!"
    assert (d.incident.proc_name, d.incident.proc_real_user, d.incident.proc_parent_name) == (
        "bash", "alice", "init")


def test_escalation_alerts_in_monitor_and_system_containers() -> None:
    assert World(groups=[group(mode=M)]).decide(_uid()).verdict is Verdict.ALERT
    system = World(groups=[group(mode=P)], workloads=[container(system=True)])
    assert system.decide(_uid()).verdict is Verdict.ALERT


# ---- docker cp (§9.4) ----

DOCKER_CP = {
    "copy in by name": (("docker", "cp", "./x", "web:/tmp/x"), CopyDirection.TO_CONTAINER,
                        "/tmp/x"),
    "copy out by id prefix": (("docker", "cp", "c1:/etc/passwd", "."),
                              CopyDirection.FROM_CONTAINER, "/etc/passwd"),
    "options are skipped": (("docker", "cp", "-a", "x", "web:/y"), CopyDirection.TO_CONTAINER,
                            "/y"),
    "other container": (("docker", "cp", "x", "db:/y"), None, ""),
}


@pytest.mark.parametrize("case", DOCKER_CP.values(), ids=DOCKER_CP.keys())
def test_docker_cp(case: tuple[tuple[str, ...], CopyDirection | None, str]) -> None:
    argv, direction, inside = case
    world = World(groups=[group(mode=P)])
    d = world.decide(DockerCpEvent(workload_id="c1", client_argv=argv))
    if direction is None:
        assert d.verdict is Verdict.NONE
        return
    assert d.verdict is Verdict.ALERT  # never blocked, even in Protect
    assert d.incident is not None
    assert d.incident.name == "Container.Suspicious.Process"
    assert (d.incident.proc_name, d.incident.proc_path) == ("docker cp", inside)
    assert d.incident.rule_id.endswith("004")
    to = direction is CopyDirection.TO_CONTAINER
    assert d.incident.message == ("docker copy to container" if to
                                  else "docker copy from container")


# ---- command-line masking (§11) ----

MASKING = {
    "flag=value": (("app", "--password=hunter2"), "app --password=******"),
    "flag value": (("app", "--api-token", "abc", "--port", "80"),
                   "app --api-token ****** --port 80"),
    "env style": (("env", "AWS_SECRET_ACCESS_KEY=x", "run"), "env AWS_SECRET_ACCESS_KEY=****** run"),
    "case insensitive": (("app", "-PWD", "x"), "app -PWD ******"),
    "harmless": (("ls", "-la", "/tmp"), "ls -la /tmp"),
}


@pytest.mark.parametrize("case", MASKING.values(), ids=MASKING.keys())
def test_mask_cmdline(case: tuple[tuple[str, ...], str]) -> None:
    argv, expected = case
    assert mask_cmdline(argv) == expected


def test_incident_masks_unless_full_cmdline() -> None:
    from streams.engine import EngineSettings

    world = World(groups=[group(mode=P)])
    d = world.exec("/bin/app", argv=("app", "--token=abc"))
    assert d.incident is not None and d.incident.proc_cmd == "app --token=******"
    full = World(groups=[group(mode=P)], settings=EngineSettings(full_cmdline=True))
    d = full.exec("/bin/app", argv=("app", "--token=abc"))
    assert d.incident is not None and d.incident.proc_cmd == "app --token=abc"


def test_incident_fields_describe_workload_and_process() -> None:
    world = World(groups=[group(mode=P)], workloads=[container(image="nginx:1.25")])
    d = world.exec("/usr/bin/curl", user="www", real_user="www", ruid=33, euid=33,
                   parent_name="sh", parent_path="/bin/sh")
    i = d.incident
    assert i is not None
    assert (i.workload_id, i.workload_name, i.workload_domain, i.workload_image,
            i.workload_service) == ("c1", "web", "demo", "nginx:1.25", "web.demo")
    assert (i.proc_name, i.proc_path, i.proc_effective_user, i.proc_real_uid) == (
        "curl", "/usr/bin/curl", "www", 33)
    assert (i.proc_parent_name, i.proc_parent_path) == ("sh", "/bin/sh")
    assert (i.host_name, i.cluster_name, i.level) == ("node-1", "test", Level.WARNING)
    assert i.reported_at == "2023-11-14T22:13:20Z" and i.count == 1
    assert i.group == WEB


def test_learned_rule_users_allow_root_listed() -> None:
    world = World(groups=[group(mode=P, rules=(learned_rule("ls", "/bin/ls", users=("root",)),))])
    assert world.exec("/bin/ls").verdict is Verdict.ALLOW
