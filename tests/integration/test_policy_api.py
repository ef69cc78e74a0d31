"""The policy API and the `procwarden policy` CLI against a real stream worker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from schemas import Decision, Verdict, to_plain
from schemas.connections import KafkaConnection
from schemas.records import replace
from schemas.topics import EXEC, PROFILE_CHANGES, WORKLOADS
from tests.integration.streamkit import ROOT, Pipeline
from tests.integration.test_streams import WEB, WORKLOAD, decision_for, exec_event

TOKEN = "test-token"


@pytest.fixture(scope="module")
def api(kafka: KafkaConnection, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    p = Pipeline(kafka, tmp_path_factory.mktemp("api"))
    p.start_worker()
    p.send(WORKLOADS.name, WORKLOAD.id, WORKLOAD)
    decision_for(p, p.send(EXEC.name, WORKLOAD.id, exec_event("/bin/ls", 1)).event_id)
    # The learn verdict comes first; the group's writer adds the rule a moment later (CI once
    # read the group in between, without it).
    deadline = time.monotonic() + 30
    while not _learned(p, "ls") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _learned(p, "ls"), "the learned rule did not reach the API in 30 s"
    yield p
    p.stop_workers()


def _learned(p: Pipeline, name: str) -> bool:
    status, body = http(p, "GET", f"/v1/process_profile/{WEB}")
    return status == 200 and any(e["name"] == name
                                 for e in body["process_profile"]["process_list"])


def http(p: Pipeline, method: str, path: str, body: Any = None, *, token: str | None = TOKEN,
         raw: bytes | None = None) -> tuple[int, Any]:
    status, answer, _ = http_with_headers(p, method, path, body, token=token, raw=raw)
    return status, answer


def http_with_headers(p: Pipeline, method: str, path: str, body: Any = None, *,
                      token: str | None = TOKEN, raw: bytes | None = None,
                      headers: dict[str, str] | None = None) -> tuple[int, Any, Any]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    sent = {**({"Authorization": f"Bearer {token}"} if token else {}), **(headers or {})}
    request = urllib.request.Request(f"http://127.0.0.1:{p.web_port}{path}", data=data,
                                     method=method, headers=sent)
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, json.loads(resp.read()), resp.headers
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), exc.headers


def cli(p: Pipeline, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PROCWARDEN_API_URL": f"http://127.0.0.1:{p.web_port}",
           "PROCWARDEN_API_TOKEN": TOKEN}
    return subprocess.run([sys.executable, "-m", "procwarden.cli", "policy", *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=60, check=False)


def test_auth(api: Pipeline) -> None:
    assert http(api, "GET", "/v1/process_profile", token=None)[0] == 401
    status, body = http(api, "PATCH", "/v1/service/config", {"config": {
        "services": ["web.demo"], "profile_mode": "Monitor"}}, token="wrong")
    assert (status, body["error"]) == (401, "unauthorized")


def test_profiles_and_rule_lookup(api: Pipeline) -> None:
    status, body = http(api, "GET", "/v1/process_profile")
    assert status == 200
    groups = [p["group"] for p in body["process_profiles"]]
    assert "nodes" in groups and WEB in groups
    status, body = http(api, "GET", f"/v1/process_profile/{WEB}")
    (ls,) = [e for e in body["process_profile"]["process_list"] if e["name"] == "ls"]
    assert (ls["cfg_type"], ls["users"], ls["user"]) == ("learned", ["root"], "root")
    status, rules = http(api, "GET", f"/v1/process_rules/{ls['uuid']}")
    assert status == 200 and rules["process_rules"][0]["group"] == WEB
    status, body = http(api, "GET", f"/v1/workload/{WORKLOAD.id}/process_profile")
    assert status == 200 and body["process_profile"]["group"] == WEB
    assert http(api, "GET", "/v1/process_profile/nope")[0] == 404
    assert http(api, "GET", f"/v1/host/{WORKLOAD.id}/process_profile")[0] == 404


def test_a_group_readable_at_first_sight_can_be_edited_at_once(api: Pipeline) -> None:
    """The worker creates a new workload's group in its own copy at once (readable at once);
    its writer publishes it a moment later. An edit made in between waits for that instead of
    answering 404 (CI saw the 404)."""
    fresh = replace(WORKLOAD, id="c-shop-1", name="shop", namespace="retail",
                                service="shop")
    api.send(WORKLOADS.name, fresh.id, fresh)
    first = replace(exec_event("/bin/ls", 7), workload_id=fresh.id)
    decision_for(api, api.send(EXEC.name, fresh.id, first).event_id)
    status, body = http(api, "PATCH", "/v1/process_profile/nv.shop.retail", {
        "process_profile_config": {"process_change_list": [
            {"name": "cat", "path": "/bin/cat", "action": "allow"}]}})
    assert status == 200, body
    assert any(e["name"] == "cat" for e in body["process_profile"]["process_list"])


def test_edits_validate_and_apply_to_the_next_event(api: Pipeline) -> None:
    bad = http(api, "PATCH", f"/v1/process_profile/{WEB}", {"process_profile_config": {
        "process_change_list": [{"name": "cat", "path": "bin/cat", "action": "deny"}]}})
    assert bad[0] == 400 and "process_change_list[0].path" in bad[1]["message"]
    unknown = http(api, "PATCH", "/v1/process_profile/nv.ghost.x", {"process_profile_config": {
        "baseline": "basic"}})
    assert unknown[0] == 404
    wrong_enum = http(api, "PATCH", "/v1/service/config", {"config": {
        "services": ["web.demo"], "profile_mode": "Lockdown"}})
    assert wrong_enum[0] == 400 and "Lockdown" in wrong_enum[1]["message"]
    status, body = http(api, "PATCH", f"/v1/process_profile/{WEB}", {"process_profile_config": {
        "process_change_list": [{"name": "cat", "path": "/bin/cat", "action": "deny"}]}})
    assert status == 200
    assert any(e["name"] == "cat" and e["action"] == "deny"
               for e in body["process_profile"]["process_list"])
    d = decision_for(api, api.send(EXEC.name, WORKLOAD.id, exec_event("/bin/cat", 2)).event_id)
    assert (d.verdict, d.reason) == (Verdict.ALERT, "violation:RD")  # Discover: deny alerts


def test_if_match_refuses_a_write_over_an_unseen_change(api: Pipeline) -> None:
    path = f"/v1/process_profile/{WEB}"
    status, body, headers = http_with_headers(api, "GET", path)
    seen = headers["ETag"]
    assert status == 200 and seen == f'"{body["process_profile"]["version"]}"'
    change = {"process_profile_config": {"process_change_list": [
        {"name": "vi", "path": "/bin/vi", "action": "allow"}]}}
    status, body, headers = http_with_headers(api, "PATCH", path, change,
                                              headers={"If-Match": seen})
    assert status == 200 and headers["ETag"] != seen  # applied: a new version
    # Someone else's edit since: the same If-Match is now refused, and nothing changes.
    other = {"process_profile_config": {"process_delete_list": [
        {"name": "vi", "path": "/bin/vi"}]}}
    status, body, _ = http_with_headers(api, "PATCH", path, other, headers={"If-Match": seen})
    assert (status, body["error"], body["field"]) == (412, "precondition failed", "If-Match")
    _, now = http(api, "GET", path)
    assert any(e["name"] == "vi" for e in now["process_profile"]["process_list"])
    assert http_with_headers(api, "PATCH", path, other, headers={"If-Match": "*"})[0] == 200
    assert http_with_headers(api, "DELETE", "/v1/group/nv.ghost.x",
                             headers={"If-Match": '"1"'})[0] == 404


def test_dry_run_decides_without_learning(api: Pipeline) -> None:
    from schemas import Envelope

    env = Envelope.wrap(exec_event("/usr/bin/never-seen", 9), event_id="dry-1", node="node-1",
                        ts=1.0)
    status, body = http(api, "POST", "/v1/dry-run", {"event": to_plain(env)})
    assert status == 200 and body["decision"]["verdict"] == "learn"
    _, profile = http(api, "GET", f"/v1/process_profile/{WEB}")
    assert all(e["path"] != "/usr/bin/never-seen" for e in profile["process_profile"]["process_list"])
    assert http(api, "POST", "/v1/dry-run", {"event": {"kind": "exec"}})[0] == 400


def test_custom_groups(api: Pipeline) -> None:
    config = {"config": {"name": "tools", "criteria": [
        {"key": "namespace", "op": "=", "value": "demo"}]}}
    status, body = http(api, "POST", "/v1/group", config)
    assert status == 200 and body["group"]["kind"] == "custom"
    assert http(api, "POST", "/v1/group", config)[0] == 409
    assert http(api, "POST", "/v1/group", {"config": {"name": "nv.bad", "criteria": []}})[0] == 400
    status, body = http(api, "GET", "/v1/group")
    tools = next(g for g in body["groups"] if g["name"] == "tools")
    assert tools["members"] == 1
    assert http(api, "DELETE", "/v1/group/tools")[0] == 200
    assert http(api, "GET", "/v1/group/tools")[0] == 404


def test_crd_import_and_crd_managed_mode(api: Pipeline) -> None:
    crd = (ROOT / "examples" / "policies" / "custom-lockdown.yaml").read_bytes()
    status, body = http(api, "POST", "/v1/policy/import", raw=crd)
    assert status == 200 and body["groups"] == ["demo-lockdown"]
    managed = b"""apiVersion: neuvector.com/v1
kind: NvSecurityRule
metadata: {name: web}
spec:
  target: {selector: {name: nv.web.demo}}
  process_profile: {mode: Monitor}
  process: [{name: ping, path: "", action: deny}]
"""
    assert http(api, "POST", "/v1/policy/import", raw=managed)[0] == 200
    status, body = http(api, "PATCH", "/v1/service/config", {"config": {
        "services": ["web.demo"], "profile_mode": "Protect"}})
    assert status == 400 and "CRD" in body["message"]
    d = decision_for(api, api.send(EXEC.name, WORKLOAD.id,
                                   exec_event("/usr/bin/wget", 3)).event_id)
    assert (d.verdict, d.rule_group) == (Verdict.ALERT, "demo-lockdown")


def test_metrics(api: Pipeline) -> None:
    with urllib.request.urlopen(f"http://127.0.0.1:{api.web_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    assert 'procwarden_streams_decided_total{mode="Discover",verdict="learn"}' in text
    assert "procwarden_streams_decide_seconds_bucket" in text


def test_policy_cli(api: Pipeline, tmp_path: Path) -> None:
    got = cli(api, "get", "nodes")
    assert got.returncode == 0, got.stderr
    assert got.stdout.startswith("nodes  mode=")
    added = cli(api, "add-rule", "nodes", "sshd", "/usr/sbin/sshd")
    assert added.returncode == 0, added.stderr
    assert "allow   sshd" in added.stdout
    bad = cli(api, "add-rule", "nodes", "x", "relative/x")
    assert bad.returncode == 1 and "400" in bad.stderr and "path" in bad.stderr
    as_json = cli(api, "get", "nodes", "--json")
    assert any(e["name"] == "sshd" for e in json.loads(as_json.stdout)["process_profile"]
               ["process_list"])
    assert cli(api, "delete-rule", "nodes", "sshd", "/usr/sbin/sshd").returncode == 0
    mode = cli(api, "set-mode", "nodes", "Monitor")
    assert mode.returncode == 0 and "mode=Monitor" in mode.stdout
    closed = cli(api, "set-fail-mode", "nodes", "closed")
    assert closed.returncode == 0 and "fail_mode=closed" in closed.stdout, closed.stderr
    assert json.loads(cli(api, "get", "nodes", "--json").stdout)["process_profile"][
        "fail_mode"] == "closed"
    wrong = cli(api, "set-fail-mode", "nodes", "ajar")
    assert wrong.returncode == 1 and "fail_mode" in wrong.stderr, wrong.stderr
    assert "fail_mode=default" in cli(api, "set-fail-mode", "nodes", "default").stdout
    crd = tmp_path / "nodes.yaml"
    crd.write_text("apiVersion: neuvector.com/v1\nkind: NvClusterSecurityRule\nspec:\n"
                   "  target: {selector: {name: nodes}}\n"
                   "  process: [{name: nc, path: '*', action: deny}]\n")
    applied = cli(api, "apply", "-f", str(crd))
    assert applied.returncode == 0 and "nodes" in applied.stdout, applied.stderr
    unreachable = subprocess.run([sys.executable, "-m", "procwarden.cli", "policy", "get"],
                                 cwd=ROOT, capture_output=True, text=True, timeout=60,
                                 check=False,
                                 env={**os.environ, "PROCWARDEN_API_URL": "http://127.0.0.1:9"})
    assert unreachable.returncode == 1 and "cannot reach the policy API" in unreachable.stderr


def test_decisions_are_plain_json(api: Pipeline) -> None:
    from schemas.topics import VERDICTS

    env, msg = api.wait_for(VERDICTS.name, lambda e: isinstance(e.payload, Decision))
    raw = json.loads(msg.value())
    assert raw["kind"] == "verdict" and raw["payload"]["event_id"] == env.payload.event_id
    # no Faust framing: the only header is the signature's (transport/signing.py)
    assert [name for name, _ in msg.headers() or ()] == ["pw-auth"]


def _token(p: Pipeline, name: str, role: str) -> str:
    """`procwarden token add`, into the token file the worker reads (its data dir's)."""
    env = {**os.environ, "STREAMS_API_TOKENS_FILE": str(p.tmp / "streams" / "api-tokens.json")}
    done = subprocess.run([sys.executable, "-m", "procwarden.cli", "token", "add", name,
                           "--role", role], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60, check=True)
    return done.stdout.strip()


def test_roles_headers_and_the_listener_on_the_real_worker(api: Pipeline) -> None:
    """Issue 22: each role gets what it may, a change carries its token's name, every answer
    carries the security headers, Faust's own views are closed and the worker listens on
    127.0.0.1 only."""
    viewer, operator = _token(api, "ro-1", "viewer"), _token(api, "ops-1", "operator")
    # The host group (an earlier test gives web.demo's mode to a CRD); never Protect here.
    was = http(api, "GET", "/v1/process_profile/nodes")[1]["process_profile"]["mode"]
    mode = {"config": {"services": ["nodes"],
                       "profile_mode": "Discover" if was == "Monitor" else "Monitor"}}
    group = {"config": {"name": "by-viewer", "criteria": [
        {"key": "namespace", "op": "=", "value": "demo"}]}}
    assert http(api, "GET", "/v1/process_profile", token=viewer)[0] == 200
    assert http(api, "PATCH", "/v1/service/config", mode, token=viewer)[0] == 403
    assert http(api, "POST", "/v1/group", group, token=operator)[0] == 403
    assert http(api, "POST", "/v1/group", group, token=viewer)[0] == 403
    answer = http(api, "PATCH", "/v1/service/config", mode, token=operator)
    assert answer[0] == 200, answer
    change, _ = api.wait_for(PROFILE_CHANGES.name,
                             lambda e: getattr(e.payload, "actor", "") == "ops-1")
    assert change.payload.group == "nodes"
    status, _, headers = http_with_headers(api, "GET", "/v1/process_profile", token=viewer)
    assert status == 200 and headers["X-Frame-Options"] == "DENY"
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    assert (headers["X-Content-Type-Options"], headers["Cache-Control"]) == ("nosniff",
                                                                            "no-store")
    for path in ("/router/", "/table/", "/", "/graph/"):
        status, _, headers = http_with_headers(api, "GET", path)
        assert status == 404 and headers["Referrer-Policy"] == "no-referrer", path
    listening = subprocess.run(["ss", "-Hltn", f"sport = :{api.web_port}"], capture_output=True,
                               text=True, check=True).stdout.split()
    local = [w for w in listening if w.endswith(f":{api.web_port}")]
    assert local == [f"127.0.0.1:{api.web_port}"], listening
    assert http(api, "PATCH", "/v1/service/config",
                {"config": {"services": ["nodes"], "profile_mode": was}})[0] == 200
