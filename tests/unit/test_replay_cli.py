"""`procwarden decide`: the offline replay, run as the real command."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "web-demo.jsonl"


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("procwarden", path=str(Path(sys.executable).parent))
    cmd = [exe] if exe else [sys.executable, "-m", "procwarden.cli"]
    return subprocess.run([*cmd, "decide", *args], input=stdin, capture_output=True, text=True,
                          check=False, cwd=ROOT, timeout=60)


def lines(out: str) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in out.splitlines() if line.strip()]


def test_example_story() -> None:
    result = run(str(EXAMPLE))
    assert result.returncode == 0, result.stderr
    out = {o["line"]: o for o in lines(result.stdout)}
    assert [out[n]["verdict"] for n in (2, 3, 4)] == ["learn"] * 3
    assert out[7]["verdict"] == "alert" and out[7]["would_block"]
    assert out[8]["reason"] == "drift:create"
    assert out[9]["reason"] == "violation:R5"
    assert out[9]["incident"]["proc_cmd"] == "/tmp/miner --token=******"
    assert out[11]["verdict"] == "allow"
    assert out[12]["reason"] == "probe"
    assert (out[13]["verdict"], out[13]["reason"]) == ("block", "violation:R6")
    assert out[15]["incident"]["name"] == "Container.Tunnel.Detected"


def test_explain_is_readable() -> None:
    result = run("--explain", str(EXAMPLE))
    assert result.returncode == 0
    assert "-> BLOCK  violation:R6" in result.stdout
    assert "learned into nv.web.demo: httpd:/bin/busybox user www-data" in result.stdout


def test_bad_lines_are_reported_and_the_run_goes_on(tmp_path: Path) -> None:
    good = EXAMPLE.read_text().splitlines()
    text = "\n".join([good[0], "{not json", '{"schema_version": 9}', good[1],
                      good[1].replace('"c0ffee01"', '"ghost"', 1).replace(
                          '"workload_id":"c0ffee01"', '"workload_id":"ghost"'),
                      '{"schema_version":1,"event_id":"x","node":"n","cluster":"c","ts":1,'
                      '"kind":"service_config","payload":{"services":["web.demo"],'
                      '"profile_mode":"Lockdown"}}'])
    result = run("-", stdin=text)
    assert result.returncode == 1
    out = {o["line"]: o for o in lines(result.stdout)}
    assert "not valid JSON" in out[2]["error"]
    assert "schema_version" in out[3]["error"]
    assert out[4]["verdict"] == "learn"
    assert "unknown workload 'ghost'" in out[5]["error"]
    assert out[6]["verdict"] == "reject" and "Lockdown" in out[6]["reason"]
    assert "4 line(s) failed" in result.stderr


def test_policy_files_native_and_crd(tmp_path: Path) -> None:
    native = tmp_path / "web.yaml"
    native.write_text(
        "groups:\n"
        "  - {name: nv.web.demo, kind: learned, mode: Protect, baseline: basic,\n"
        "     rules: [{name: httpd, path: /bin/busybox, action: allow, cfg_type: user_created,\n"
        "              uuid: u1, group: nv.web.demo}]}\n")
    crd = ROOT / "examples" / "policies" / "custom-lockdown.yaml"
    events = tmp_path / "ev.jsonl"
    head = EXAMPLE.read_text().splitlines()[:2]
    wget = head[1].replace('"name":"httpd","argv":["httpd","-f","-p","8080"]',
                           '"name":"wget","argv":["wget","http://x"]')
    events.write_text("\n".join([*head, wget]) + "\n")
    result = run("-p", str(native), "-p", str(crd), str(events))
    assert result.returncode == 0, result.stderr
    out = lines(result.stdout)
    assert out[1]["verdict"] == "allow"
    assert (out[2]["verdict"], out[2]["rule_group"]) == ("block", "demo-lockdown")


def test_bad_policy_file_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("- {name: nv.a.b, kind: learned, mode: Sometimes, baseline: basic}\n")
    result = run("-p", str(bad), str(EXAMPLE))
    assert result.returncode == 2
    assert "groups[0].mode: unknown value 'Sometimes'" in result.stderr


def test_new_group_defaults_are_settings() -> None:
    result = run("--new-group-mode", "Monitor", "--new-group-baseline", "basic", str(EXAMPLE))
    out = {o["line"]: o for o in lines(result.stdout)}
    assert (out[2]["mode"], out[2]["baseline"], out[2]["verdict"]) == ("Monitor", "basic",
                                                                      "alert")


def test_shipped_native_policy_protects_the_demo(tmp_path: Path) -> None:
    events = tmp_path / "ev.jsonl"
    head = EXAMPLE.read_text().splitlines()
    ping = head[3].replace('"name":"date","argv":["date"]', '"name":"ping","argv":["ping","x"]')
    events.write_text("\n".join([head[0], head[3], ping]) + "\n")
    result = run("-p", str(ROOT / "examples" / "policies" / "web-protect.yaml"), str(events))
    assert result.returncode == 0, result.stderr
    out = lines(result.stdout)
    assert [o["verdict"] for o in out[1:]] == ["allow", "block"]
    assert out[2]["reason"] == "violation:RD"


def test_hostile_lines_are_reported_and_the_run_goes_on(tmp_path: Path) -> None:
    # One deeply nested line aborted the whole run with a traceback (RecursionError).
    good = EXAMPLE.read_text().splitlines()
    deep = ('{"schema_version":1,"event_id":"d","node":"n","cluster":"c","ts":1,"kind":"exec",'
            '"payload":' + "[" * 1000 + "]" * 1000 + "}")
    events = tmp_path / "ev.jsonl"
    events.write_bytes("\n".join([good[0], deep, good[1]]).encode() + b"\n\xff\xfe{bad utf-8\n"
                       + b'{"x": "' + b"y" * (2 << 20) + b'"}\n' + good[3].encode() + b"\n")
    for args, stdin in (([str(events)], None), (["-"], events.read_bytes())):
        result = subprocess.run([*_command(), "decide", *args], input=stdin, capture_output=True,
                                check=False, cwd=ROOT, timeout=60)
        assert result.returncode == 1, result.stderr
        assert b"Traceback" not in result.stderr
        out = {o["line"]: o for o in lines(result.stdout.decode())}
        assert "nesting deeper than 64 levels" in out[2]["error"]
        assert out[3]["verdict"] == "learn"
        assert "not valid JSON" in out[4]["error"]
        assert "over the limit of 1048576 bytes" in out[5]["error"]
        assert out[6]["event_kind"] == "exec"
        assert b"3 line(s) failed" in result.stderr


def test_a_line_the_session_fails_on_is_reported() -> None:
    from streams.offline.replay import replay
    from streams.worker.session import DecisionSession

    class Failing(DecisionSession):
        def handle(self, env: Any) -> Any:
            if env.event_id == "boom":
                raise RecursionError("maximum recursion depth exceeded")
            return super().handle(env)

    good = EXAMPLE.read_text().splitlines()
    boom = orjson.dumps({**orjson.loads(good[1]), "event_id": "boom"}).decode()
    out = list(replay(Failing(), [good[0], boom, good[1]]))
    assert [o.ok for o in out] == [True, False, True]
    assert out[1].output == {"line": 2, "event_id": "boom",
                             "error": "handling failed: RecursionError: maximum recursion "
                                      "depth exceeded"}


def _command() -> list[str]:
    exe = shutil.which("procwarden", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "procwarden.cli"]
